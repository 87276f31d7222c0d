#!/usr/bin/env bash
# Back up one environment's database from cron, in a container: the host needs only Docker.
#
# Usage: scripts/backup.sh production|staging
#
#   The guide's daily entry (installed by `fab install-cron`):
#     0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production
#
#   The backup container joins aiia_network, dumps the database straight from PostgreSQL
#   (postgresql:5432) as the application role, encrypts it to BACKUP_AGE_RECIPIENT, verifies
#   it, keeps the newest BACKUP_KEEP sets in backups/ and copies them offsite when S3_BUCKET
#   is set. The env file is mounted read-only, never passed as environment or arguments.
#
# Environment (all optional):
#   ENV_FILE      the environment's env file (default: .env; staging: .env.staging if present)
#   BACKUP_IMAGE  image with python3, the PostgreSQL 15 client and the toolkit's dependencies
#                 (default: aiia/backup:latest, built by `docker compose build backup`)
#   BACKUP_DIR    where the sets go (default: backups/ in the checkout)
#   LOG_DIR       where the run logs go (default: logs/ in the checkout)
#   MEDIA_VOLUME  the Docker volume of the environment's uploads, archived as media.tar.gz.age
#                 (default: the volume aiia_django_prod or aiia_django_staging has at
#                 /app/media, aiia_media_prod or aiia_media_staging in the guide's stack;
#                 `none` leaves media out of the set, on the operator's word)
#   NETWORK       the stack's network (default: aiia_network)
#   DRILL_IDENTITY the restore drill's key (default: ~/.config/aiia/drill.key, made by
#                 `fab setup` or `fab install-cron`): when its public key, DRILL_IDENTITY.pub,
#                 is there, the database dump (only it) is encrypted to it as well, so
#                 scripts/drill.sh can restore it on the server
#
# Output: progress on stderr, the new set's path on stdout; a log per run in
# logs/backup_<env>_<UTC time>.log. Exit status: 0 good (offsite trouble is a WARNING and
# is retried next run), 1 the backup failed (earlier sets untouched), 2 wrong usage/setup.
set -o errexit -o pipefail -o nounset
# sets and logs are the operator's alone (0600 files, 0700 directories)
umask 077

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BACKUP_IMAGE=${BACKUP_IMAGE:-aiia/backup:latest}
NETWORK=${NETWORK:-aiia_network}
BACKUP_DIR=${BACKUP_DIR:-$ROOT/backups}
LOG_DIR=${LOG_DIR:-$ROOT/logs}
DRILL_IDENTITY=${DRILL_IDENTITY:-${HOME:-}/.config/aiia/drill.key}

usage() { sed -n '2,/^set -o/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
die() { printf 'backup.sh: %s\n' "$*" >&2; exit 2; }

[ $# -eq 1 ] || { usage; die "expected one argument, production or staging (got $#)"; }
case "$1" in
  production) ENVIRONMENT=production; default_env_file="$ROOT/.env"; app=aiia_django_prod ;;
  staging)
    ENVIRONMENT=staging
    app=aiia_django_staging
    default_env_file="$ROOT/.env"
    [ -f "$ROOT/.env.staging" ] && default_env_file="$ROOT/.env.staging"
    ;;
  -h|--help) usage; exit 0 ;;
  *) usage; die "unknown environment '$1': use production or staging" ;;
esac

ENV_FILE=${ENV_FILE:-$default_env_file}
[ -f "$ENV_FILE" ] || die "no env file $ENV_FILE: create it (cp config/prod.env.example .env && chmod 600 .env) or set ENV_FILE"
command -v docker >/dev/null 2>&1 || die "docker not found: install Docker (the server needs only Docker, Compose v2 and git)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer: start it (systemctl start docker) and run again"
docker image inspect "$BACKUP_IMAGE" >/dev/null 2>&1 \
  || die "image $BACKUP_IMAGE not found: build it from the checkout (docker compose build backup) or set BACKUP_IMAGE"
docker network inspect "$NETWORK" >/dev/null 2>&1 \
  || die "network $NETWORK not found: is the stack up? (docker compose up -d, from the checkout)"

if [ -z "${MEDIA_VOLUME:-}" ]; then
  MEDIA_VOLUME=$(docker inspect --type container --format \
    '{{range .Mounts}}{{if eq .Destination "/app/media"}}{{.Name}}{{end}}{{end}}' "$app" 2>/dev/null) \
    || die "$app is not running, so its media volume is unknown: start the stack (docker compose up -d), or set MEDIA_VOLUME (none: a set without media)"
  [ -n "$MEDIA_VOLUME" ] || die "$app has no volume at /app/media: set MEDIA_VOLUME to the uploads' volume (none: a set without media)"
fi
if [ "$MEDIA_VOLUME" != none ]; then
  docker volume inspect "$MEDIA_VOLUME" >/dev/null 2>&1 \
    || die "media volume $MEDIA_VOLUME not found: is the stack up? (docker compose up -d), or set MEDIA_VOLUME to the uploads' volume (none: a set without media)"
fi

mkdir -p "$BACKUP_DIR" "$LOG_DIR"
chmod 700 "$BACKUP_DIR" "$LOG_DIR"
BACKUP_DIR=$(realpath "$BACKUP_DIR")
LOG="$LOG_DIR/backup_${ENVIRONMENT}_$(date -u +%Y%m%d_%H%M%S).log"

media=()
media_arg=()
if [ "$MEDIA_VOLUME" != none ]; then
  # nocopy: the image's own root-owned /media must never seed (and chown) an empty volume
  media=(--mount "type=volume,source=$MEDIA_VOLUME,target=/media,readonly,volume-nocopy")
  media_arg=(--media-dir /media)
else
  printf 'backup.sh: MEDIA_VOLUME=none: this set holds no media\n' >&2
fi

drill_arg=()
if [ -s "$DRILL_IDENTITY.pub" ]; then
  drill_arg=(--drill-recipient "$(tr -d '[:space:]' < "$DRILL_IDENTITY.pub")")
fi

# The code comes from this checkout (read-only), so the image needs only the dependencies.
# Hardened like the `backup` service of compose/server.yml: keep the two in step.
status=0
docker run --rm --name "aiia_backup_${ENVIRONMENT}" --network "$NETWORK" \
  --security-opt no-new-privileges:true --cap-drop ALL \
  --memory 64m --read-only --tmpfs /tmp:size=16m \
  --user "$(id -u):$(id -g)" \
  -v "$ROOT:/opt/aiia:ro" -w /opt/aiia -e PYTHONPATH=/opt/aiia -e HOME=/tmp \
  -v "$(realpath "$ENV_FILE"):/run/aiia/env:ro" \
  -v "$BACKUP_DIR:/backups" \
  "${media[@]}" \
  "$BACKUP_IMAGE" \
  python3 -m opskit.backup backup --env "$ENVIRONMENT" --env-file /run/aiia/env \
    --backup-dir /backups "${media_arg[@]}" "${drill_arg[@]}" 2> >(tee -a "$LOG" >&2) || status=$?

if [ "$status" -ne 0 ]; then
  printf 'backup.sh: %s backup FAILED (exit %s); see %s\n' "$ENVIRONMENT" "$status" "$LOG" >&2
fi
exit "$status"
