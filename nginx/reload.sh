#!/bin/sh
# Reload nginx's configuration without costing a kept-alive client a request.
#
# Usage: aiia-reload [WAIT_S]     (in the nginx container: docker exec aiia_nginx aiia-reload)
#
# nginx 1.22 closes every idle kept-alive HTTP/1.1 connection the moment its old workers
# are told to quit; a client that sends its next request at that moment gets a read error
# (measured: one error per kept-alive wrk connection, every reload). So, first:
#   1. the configuration is tested; nothing happens when nginx refuses it;
#   2. $NGINX_RUN_DIR/draining is created: every HTTP/1.x answer now says
#      "Connection: close" (snippets/drain.conf), and each kept-alive connection ends
#      cleanly after its next request, or at keepalive_timeout (15 s) when it sends none;
#   3. after WAIT_S (default 16: keepalive_timeout and a second) no kept-alive connection
#      is left idle, and nginx reloads; the script returns once workers of the new
#      configuration serve (exit 1 if nginx kept the old one: it rejected the new);
#   4. once the old workers have finished what they serve (at most 30 s), the flag goes.
# HTTP/2 connections are ended by nginx's own GOAWAY on the reload.
set -o errexit -o nounset

here=/etc/nginx/aiia
default() { sed -n "s/^$1=//p" "$here/defaults.env" | tail -n 1 | tr -d '"'; }
: "${NGINX_RUN_DIR:=$(default NGINX_RUN_DIR)}"
wait_s=${1:-16}
case "$wait_s" in ''|*[!0-9]*) echo "aiia-reload: WAIT_S must be whole seconds" >&2; exit 2 ;; esac

# the master's workers serving now (not those finishing old requests), by pid
master=$(cat "$NGINX_RUN_DIR/nginx.pid")
serving() {
  for f in /proc/[0-9]*/cmdline; do
    # a process may end between the glob and the read
    title=$({ tr '\0' ' ' < "$f"; } 2>/dev/null) || continue
    case "$title" in
      "nginx: worker process is shutting down"*) ;;
      "nginx: worker process"*)
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        read -r _ _ _ ppid _ < "/proc/$pid/stat" 2>/dev/null || continue
        [ "$ppid" = "$master" ] && echo "$pid"
        ;;
    esac
  done
}

nginx -t -q
flag=$NGINX_RUN_DIR/draining
: > "$flag"
trap 'rm -f "$flag"' EXIT
sleep "$wait_s"
before=" $(serving | tr '\n' ' ')"
nginx -s reload
# `nginx -s reload` only signals the master, which reads the configuration afterwards (on
# a busy machine, seconds later): return once no worker of the old configuration serves,
# so that whoever called this can rely on the new one (a deploy then stops the old
# release); a configuration the master rejected leaves the old workers serving: say so
i=0
while :; do
  now=$(serving)
  left=0
  for pid in $now; do
    case "$before " in *" $pid "*) left=1 ;; esac
  done
  if [ -n "$now" ] && [ "$left" = 0 ]; then
    break
  fi
  i=$((i + 1))
  if [ "$i" -ge 300 ]; then
    echo "aiia-reload: nginx still serves with its old configuration 30 s after the reload" \
      "signal (did it reject the new one? docker logs aiia_nginx)" >&2
    exit 1
  fi
  sleep 0.1
done
# the old workers finish what they serve, then exit (bounded; the brackets keep grep from
# finding its own command line)
i=0
while [ "$i" -lt 300 ] && grep -qs 'worker process is shutting[ ]down' /proc/[0-9]*/cmdline; do
  sleep 0.1
  i=$((i + 1))
done
