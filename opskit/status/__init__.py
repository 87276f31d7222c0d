"""Watching the box: one collector behind the devstatus page, the alerts, `inv monitor`
and `fab monitor`.

`collect` reads the box (/proc), every container (the Docker API), nginx's access log
incrementally, /health/ of each environment, PostgreSQL/PgBouncer/Redis, the
certificate, the deploy log, the backups and the restore drill; `history` keeps it in
SQLite; `rules` turns it into alerts; `page` writes the static HTML. Run every minute as
`python3 -m opskit.status run` in the container `scripts/status.sh start` keeps.
"""
