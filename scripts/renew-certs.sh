#!/usr/bin/env bash
# Renew the Let's Encrypt certificate from cron: certbot in the nginx container renews what
# is due (fewer than 30 days left) and its deploy hook reloads nginx gracefully.
#
# Usage: scripts/renew-certs.sh [--dry-run]
#
#   Twice a day, as certbot's own packaging schedules it (the server's crontab, as a user
#   who may run docker):
#     17 3,15 * * * /home/ubuntu/main/ai-ia-backend/scripts/renew-certs.sh
#
#   Silent when nothing was due or the renewal went well, so cron mails only trouble.
#   Without a terminal certbot first waits a random 1-480 s, spreading the load on Let's
#   Encrypt as it asks. --dry-run skips that wait and gets a test certificate from Let's
#   Encrypt's staging server, keeping nothing. By hand: fab -H HOST renew-certs.
#
# Environment: NGINX_CONTAINER (default: aiia_nginx).
# Exit status: 0 renewed or not due, 1 certbot failed (the certificate in service is
# unchanged), 2 wrong usage or the container is not running.
set -o errexit -o pipefail -o nounset

CONTAINER=${NGINX_CONTAINER:-aiia_nginx}

usage() { sed -n '2,/^set -o/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
die() { printf 'renew-certs.sh: %s\n' "$*" >&2; exit 2; }

[ $# -le 1 ] || { usage; die "expected at most one argument, --dry-run (got $#)"; }
dry_run=0
case "${1:-}" in
  "") ;;
  --dry-run) dry_run=1 ;;
  -h|--help) usage; exit 0 ;;
  *) usage; die "unknown argument '$1': the only option is --dry-run" ;;
esac

command -v docker >/dev/null 2>&1 \
  || die "docker is not on PATH (cron's PATH is short: set PATH=/usr/local/bin:/usr/bin:/bin in the crontab)"
running=$(docker inspect --format '{{.State.Running}}' "$CONTAINER" 2>/dev/null) || running=""
[ "$running" = true ] || die "container $CONTAINER is not running: start the stack first"

if [ "$dry_run" -eq 1 ]; then
  certbot=(certbot renew --dry-run --no-random-sleep-on-renew)
else
  certbot=(certbot renew --quiet)
fi

status=0
docker exec "$CONTAINER" "${certbot[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  message="certbot renew failed (exit $status); the certificate in service is unchanged."
  if [ "$status" -eq 137 ]; then
    message="$message certbot was killed (exit 137), most likely by $CONTAINER's memory limit: certbot needs about 50 MB."
  fi
  printf 'renew-certs.sh: %s\nLog: docker exec %s tail -n 50 /var/log/letsencrypt/letsencrypt.log\n' \
    "$message" "$CONTAINER" >&2
  exit 1
fi
if [ "$dry_run" -eq 1 ]; then
  echo "renew-certs.sh: dry run succeeded (a staging certificate, nothing kept)"
fi
