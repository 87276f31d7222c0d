"""Images: every one from the one Debian base, lint-clean, and no build secret in a layer."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from opskit import appenv
from tests.harness.appenv import compose_config, project_dir, render_server
from tests.harness.core import ROOT, venv_tool
from tests.stack.stackkit import (
    SERVER_COMPOSE,
    Compose,
    build_variables,
    docker,
    dockerfiles,
    env_from_example,
    render_app_env,
    write_private,
)

BASE = "debian:bookworm-slim"
# the services each image belongs to, as compose builds them
SERVER_IMAGES = ("nginx", "django_prod", "django_staging", "postgresql", "pgbouncer", "redis")
EXPECTED_DOCKERFILES = {
    "compose/app/Dockerfile",
    "nginx/Dockerfile",
    "postgres/Dockerfile",
    "pgbouncer/Dockerfile",
    "redis/Dockerfile",
}


def from_lines(dockerfile: Path) -> list[tuple[str, str | None]]:
    """(image, stage name) of every FROM, with ARG defaults filled in."""
    args: dict[str, str] = {}
    found = []
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if m := re.match(r"(?i)^ARG\s+(\w+)=(\S+)", line):
            args.setdefault(m.group(1), m.group(2))
        if m := re.match(r"(?i)^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line):
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda g: args[g.group(1) or g.group(2)], m[1])
            found.append((image, m.group(2)))
    return found


def test_every_dockerfile_starts_from_the_one_debian_base():
    files = dockerfiles()
    assert {str(f.relative_to(ROOT)) for f in files} >= EXPECTED_DOCKERFILES
    for dockerfile in files:
        stages: set[str] = set()
        for image, stage in from_lines(dockerfile):
            # a later stage may start from an earlier one; anything else is the base
            assert image == BASE or image in stages, f"{dockerfile}: FROM {image}"
            if stage:
                stages.add(stage)
        text = dockerfile.read_text()
        # a syntax line makes BuildKit fetch the Dockerfile frontend from Docker Hub
        assert not re.search(r"(?im)^#\s*syntax\s*=", text), dockerfile


def hadolint() -> str:
    return venv_tool("hadolint")


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_clean(dockerfile: Path):
    # .hadolint.yaml at the root holds the rules the project ignores, each with its reason
    proc = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_files_are_valid(tmp_path):
    prod_env = write_private(
        tmp_path / "prod.env", env_from_example(ROOT / "config" / "prod.env.example")
    )
    staging_env = write_private(
        tmp_path / "staging.env", env_from_example(ROOT / "config" / "staging.env.example")
    )
    # in a project directory of its own: the checkout's .env.app/ is left alone
    project = project_dir(tmp_path / "project")
    render_server(project, prod_env, staging_env)
    server = compose_config(
        project, ("docker-compose.yml",), prod_env, {"STAGING_ENV_FILE": str(staging_env)}
    )
    assert server.returncode == 0 and server.stdout, server.stderr
    # a fresh clone has no .env: the local stack still resolves, from the example alone
    # (what `inv dev` renders first)
    appenv.refresh(project, appenv.LOCAL, {})
    local = compose_config(project, ("docker-compose.local.yml",), None, {})
    assert local.returncode == 0 and local.stdout, local.stderr


def test_server_stack_refuses_a_missing_secret(tmp_path):
    env = tmp_path / "prod.env"
    env.write_text("ENVIRONMENT=production\n")
    proc = Compose("aiia_test_config", (SERVER_COMPOSE,), env_file=env).run(
        "config", "-q", check=False
    )
    assert proc.returncode != 0
    assert "in the production env file" in proc.stderr


def test_server_images_share_the_base_layers(server_stack):
    """Built (by the server_stack fixture) on a machine that cannot reach Docker Hub."""
    base = docker("image", "inspect", BASE, "--format", "{{json .RootFS.Layers}}").stdout
    base_layers = base.strip().strip("[]").split(",")
    for service in SERVER_IMAGES:
        ref = server_stack.compose.run("images", "-q", service).stdout.split()
        assert ref, f"no image for {service}"
        layers = docker("image", "inspect", ref[0], "--format", "{{json .RootFS.Layers}}")
        image_layers = layers.stdout.strip().strip("[]").split(",")
        assert image_layers[: len(base_layers)] == base_layers, service


def test_extra_ca_reaches_pip_but_no_layer(tmp_path, docker_engine):
    """A marker certificate handed to a clean build is found nowhere in the image."""
    from opskit import tls

    marker = tls.create_ca(f"AIIA extra CA marker {uuid.uuid4().hex}").cert_pem()
    bundle = tmp_path / "extra-ca.pem"
    # the marker plus what this host needs to reach PyPI, as an operator would pass it
    bundle.write_bytes(Path(build_variables("x")["EXTRA_CA_CERTS"]).read_bytes() + marker)
    tag = f"ca-check-{uuid.uuid4().hex[:8]}"
    image = f"aiia-test/app:{tag}"
    prod_env = write_private(
        tmp_path / "prod.env", env_from_example(ROOT / "config" / "prod.env.example")
    )
    compose = Compose(
        f"aiia_test_{tag.replace('-', '_')}",
        (SERVER_COMPOSE,),
        env_file=prod_env,
        variables={
            "EXTRA_CA_CERTS": str(bundle),
            "APP_IMAGE": "aiia-test/app",
            "APP_TAG_PRODUCTION": tag,
            "PRODUCTION_ENV_FILE": str(prod_env),
            "STAGING_ENV_FILE": str(prod_env),
        },
    )
    render_app_env(compose.variables)
    try:
        # no cache: the secret is not part of BuildKit's cache key, a cached RUN never saw it
        compose.run("build", "--no-cache", "django_prod", timeout=1800)
        # a line of the signature: random, so no other certificate in the image has it
        needle = max(marker.decode().splitlines()[-4:-1], key=len)
        found = docker(
            "run",
            "--rm",
            "--user",
            "0",
            "--entrypoint",
            "grep",
            image,
            "-rlF",
            "--exclude-dir=proc",
            "--exclude-dir=sys",
            "--exclude-dir=dev",
            needle,
            "/",
            check=False,
            timeout=300,
        )
        assert found.returncode == 1 and not found.stdout, f"marker CA in {found.stdout}"
        assert needle not in docker("history", "--no-trunc", image).stdout
    finally:
        docker("rmi", "-f", image, check=False)
