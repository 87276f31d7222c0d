"""`fab apply-services`: which services, and the exact commands for nginx."""

from __future__ import annotations

import pytest
from invoke import MockContext, Result

from opskit import services
from opskit.commands import deploy as cmd
from opskit.runner import ContextRunner
from opskit.shell import join


def test_parse_services():
    assert services.parse_services("nginx, redis,nginx") == ("nginx", "redis")
    for bad in ("", "nginx,mysql"):
        with pytest.raises(ValueError, match="name one or more of nginx, pgbouncer"):
            services.parse_services(bad)


def test_nginx_is_rendered_in_the_container_then_reloaded_through_the_drain():
    render = services.nginx_templates("/srv/prod")
    assert render[:2] == ["sh", "-c"] and render[-3:] == ["/srv/prod", "aiia_nginx",
                                                            services.RENDER]  # fmt: skip
    ctx = MockContext(run={join(render): Result(""), join(cmd.nginx_reload()): Result("")},
                      repeat=True)  # fmt: skip
    done = services.apply(ContextRunner(ctx, where="x"), "/srv/prod", ("nginx",), out=lambda _: 0)
    assert done.ok
    sent = [c.args[0] for c in ctx.run.call_args_list]
    assert sent == [join(render), join(cmd.nginx_reload())]


def test_a_refused_configuration_is_not_reloaded():
    render = services.nginx_templates("/srv/prod")
    ctx = MockContext(run={join(render): Result("", stderr="nginx refused", exited=1)})
    done = services.apply(ContextRunner(ctx, where="x"), "/srv/prod", ("nginx",), out=lambda _: 0)
    assert not done.ok and "NOT applied" in done.lines[0]


def test_database_services_are_refused_with_the_command_to_run():
    ctx = MockContext(run={})
    done = services.apply(ContextRunner(ctx, where="x"), "/srv/prod", ("postgresql",),
                          out=lambda _: 0)  # fmt: skip
    assert not done.ok
    assert "docker compose up -d --build --no-deps postgresql" in done.lines[0]
