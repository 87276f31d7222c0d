"""`fab apply-services`: put a release's shared-service configs in service, health-gated.

A deploy moves the server's checkout to the release's commit and names the shared-service
configs that changed (opskit.deploy); this applies them:

- nginx: the checkout's templates are copied into the running container and rendered
  beside the running configuration's upstream files; `nginx -t` must accept them (else
  the running configuration is put back and nothing changes), then one graceful reload
  through aiia-reload (nginx/reload.sh), which costs no client a request. The image keeps
  the templates it was built with: `docker compose build nginx` makes a restart use the
  new ones too.
- PgBouncer, Redis, PostgreSQL: not automated yet. Recreating one stops it: every request
  that needs it fails until it is healthy again. The task names the command and refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opskit.commands import deploy as cmd
from opskit.commands.lock import sh
from opskit.runner import Runner

SERVICES = ("nginx", "pgbouncer", "redis", "postgresql")

# in the nginx container: unpack the templates from stdin, render them over the running
# configuration (its upstream files kept), test; on refusal put the running one back
RENDER = r"""set -eu
run=/run/nginx; next=$run/next; conf=$run/conf; prev=$run/conf.prev
rm -rf "$next" "$prev"
mkdir -p "$next"
tar -x -C "$next"
cp -a "$conf" "$prev"
default() { sed -n "s/^$1=//p" "$next/defaults.env" | tail -n 1 | tr -d '"'; }
: "${NGINX_TLS_CERT:=$(default NGINX_TLS_CERT)}"
: "${NGINX_TLS_KEY:=$(default NGINX_TLS_KEY)}"
if [ ! -s "$NGINX_TLS_CERT" ] || [ ! -s "$NGINX_TLS_KEY" ]; then
  # the entrypoint's first-start certificate, until certbot has issued one
  NGINX_TLS_CERT=$run/fallback-tls/cert.pem NGINX_TLS_KEY=$run/fallback-tls/key.pem
fi
export NGINX_TLS_CERT NGINX_TLS_KEY
if ! sh "$next/render.sh" "$conf" || ! cp -a "$prev/upstreams/." "$conf/upstreams/" \
   || ! nginx -t -q; then
  rm -rf "$conf"
  mv "$prev" "$conf"
  echo "nginx refused the new configuration; the running one is unchanged" >&2
  exit 1
fi
"""


def nginx_templates(stack_dir: str, nginx: str = cmd.NGINX) -> list[str]:
    """Copy the checkout's nginx/ templates into the container and render them there."""
    return sh(
        'set -eu; tar -C "$1/nginx" -cf - render.sh defaults.env templates '
        '| docker exec -i "$2" sh -c "$3"',
        stack_dir,
        nginx,
        RENDER,
    )


def parse_services(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in SERVICES]
    if unknown or not names:
        raise ValueError(
            f"--service {text!r}: name one or more of {', '.join(SERVICES)}, comma-separated"
        )
    return names


@dataclass
class Applied:
    ok: bool
    lines: list[str]


def apply(
    runner: Runner,
    stack_dir: str,
    services: tuple[str, ...],
    *,
    out: Callable[[str], None] = print,
    dry_run: bool = False,
) -> Applied:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        out(line)

    ok = True
    for name in services:
        if name == "nginx":
            steps = [nginx_templates(stack_dir), cmd.nginx_reload()]
            if dry_run:
                say("nginx: would run")
                for argv in steps:
                    say("  " + " ".join(argv[:8]) + (" ..." if len(argv) > 8 else ""))
                continue
            rendered = runner.run(steps[0], timeout=120)
            if not rendered.ok:
                ok = False
                say(f"nginx: NOT applied: {rendered.tail(5)}")
                continue
            reloaded = runner.run(steps[1], timeout=120)
            if not reloaded.ok:
                ok = False
                say(f"nginx: the reload failed ({reloaded.tail(3)}); see docker logs aiia_nginx")
                continue
            say(
                f"nginx: {stack_dir}/nginx/templates tested and in service (graceful reload, "
                "kept-alive connections drained first); `docker compose build nginx` in the "
                "checkout makes a restart keep it"
            )
        else:
            ok = False
            say(
                f"{name}: not applied: recreating it stops it, and every request that needs "
                f"it fails until it is healthy again; this is not automated yet. By hand, at "
                f"a quiet moment: cd {stack_dir} && docker compose up -d --build --no-deps "
                f"{name}"
            )
    return Applied(ok, lines)
