# The operators' guide's make targets. Each one only runs the `inv` task of the same name
# (`inv --list` shows them all, `inv --help TASK` their options); pass options with ARGS:
#   make dev-logs ARGS=--follow      make migrate ARGS="--env production"
#   make db-restore BACKUP_PATH=backups/db_prod_20240101_120000/database.dump
INV ?= $(if $(wildcard .venv/bin/inv),.venv/bin/inv,inv)
ARGS ?=

TARGETS := dev dev-down dev-logs dev-shell dev-bash \
	migrate makemigrations superuser test test-fast \
	lint format check \
	build-dev ps images prune \
	setup clean healthcheck monitor prod-logs staging-logs \
	db-backup db-backup-staging

.DEFAULT_GOAL := help
.PHONY: help $(TARGETS) db-restore

help:
	@$(INV) --list

$(TARGETS):
	$(INV) $@ $(ARGS)

db-restore:
	$(if $(BACKUP_PATH),,$(error usage: make db-restore BACKUP_PATH=backups/db_prod_.../database.dump))
	$(INV) db-restore $(BACKUP_PATH) $(ARGS)
