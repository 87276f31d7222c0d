"""The server's checkout follows the release (DESIGN decision 9), through the engine with
scripted server answers (tests/unit/test_deploy_engine.py's Server)."""

from __future__ import annotations

import json

from opskit.commands import checkout as co
from opskit.commands import deploy as cmd
from opskit.shell import join
from tests.unit.test_deploy_engine import (
    CHECKOUT,
    IMAGE,
    IMAGE_ID,
    PROD,
    RELEASE,
    Server,
    commands,
    deploy,
    fail,
    ok,
    recorded,
)

NEW = "ab" * 20


def labelled(server: Server, commit: str = NEW) -> Server:
    image = json.dumps({
        "Id": IMAGE_ID, "Config": {"Env": ["APP_VERSION=v2"],
                                   "Labels": {cmd.LABEL_REVISION: commit}},
        "RepoDigests": ["registry.local:5000/aiia/app@sha256:" + "e" * 64],
    })  # fmt: skip
    server.answers[join(cmd.image_inspect(IMAGE))] = ok(image)
    server.answers[join(cmd.image_inspect(PROD.release_image(RELEASE)))] = ok(image)
    return server


def test_a_dirty_checkout_is_refused_naming_its_files():
    server = Server()
    server.answers[join(co.status(PROD.path))] = ok(" M nginx/templates/app-site.conf\n"
                                                    "R  a.txt -> b.txt\n")  # fmt: skip
    outcome, ctx, lines = deploy(server)
    assert not outcome.ok
    text = "\n".join(lines)
    assert "local changes to nginx/templates/app-site.conf, b.txt" in text
    assert f"git -C {PROD.path} stash" in text
    assert not any(c.startswith("docker pull") for c in commands(ctx))


def test_an_image_deploy_moves_the_checkout_to_its_commit_and_names_changed_configs():
    server = labelled(Server())
    server.answers[join(co.has_commit(PROD.path, NEW))] = fail("", 128)
    server.answers[join(cmd.git_fetch(PROD.path))] = ok()
    server.answers[join(co.checkout(PROD.path, NEW))] = ok()
    server.answers[join(co.changed(PROD.path, CHECKOUT, NEW))] = ok(
        "nginx/templates/app-site.conf\ncompose/server.yml\n"
    )
    outcome, ctx, lines = deploy(server)
    assert outcome.ok, "\n".join(lines)
    sent = commands(ctx)
    # after the switch, never before it
    assert sent.index(join(co.checkout(PROD.path, NEW))) > sent.index(join(cmd.nginx_reload()))
    text = "\n".join(lines)
    assert f"checkout {CHECKOUT[:12]} -> {NEW[:12]}" in text
    assert "configs of nginx changed; the stack's compose file changed" in text
    assert "apply-services --env production --service nginx" in text
    entry = recorded(ctx)
    assert (entry.commit, entry.previous_commit) == (NEW, CHECKOUT)
    assert entry.digest == "registry.local:5000/aiia/app@sha256:" + "e" * 64


def test_an_image_without_a_commit_leaves_the_checkout_and_says_so():
    outcome, ctx, lines = deploy(Server())
    assert outcome.ok
    assert not any(" checkout --quiet --detach " in c for c in commands(ctx))
    assert any("names no commit: the checkout stays at" in line for line in lines)


def test_parse_changed_maps_paths_to_services():
    changes = co.parse_changed("postgres/postgresql.conf\npgbouncer/pgbouncer.ini\nredis/x\n")
    assert changes.services == ("pgbouncer", "redis", "postgresql")
    assert not changes.stack
    assert co.parse_changed("").describe() == "no shared-service config changed"
