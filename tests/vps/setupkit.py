"""What the setup tests hand to `fab setup`: images in the registry, a clone, pebble.

- `publish_images(registry)`: the stack's images (and the backup's), built here from
  this tree as CI would, pushed to the cluster's registry; setup pulls them with
  `--images-from registry:5000`.
- `operator_clone(base)`: the operator's clone of the project (this working tree) with
  `main` and `staging`; setup pushes it to the server as a git bundle.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from opskit import appenv
from tests.harness.core import ROOT
from tests.stack.stackkit import env_from_example, host_ca_bundle, write_private

GIT_ID = ["-c", "user.name=Setup Test", "-c", "user.email=setup-test@example.invalid"]


def run(argv, *, check=True, timeout=1800, env=None, cwd=None, input=None):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, input=input)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def compose_env(base: Path) -> dict[str, str]:
    """Variables for building here: throwaway env files (compose interpolates them)."""
    prod, staging = base / "build-production.env", base / "build-staging.env"
    if not prod.exists():
        write_private(prod, env_from_example(ROOT / "config" / "prod.env.example"))
        write_private(staging, env_from_example(ROOT / "config" / "staging.env.example"))
    env = {**os.environ, "EXTRA_CA_CERTS": host_ca_bundle(), "APP_VERSION": "vps-setup",
           "PRODUCTION_ENV_FILE": str(prod), "STAGING_ENV_FILE": str(staging)}  # fmt: skip
    for name in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"):
        env.pop(name, None)
    # compose loads the app services' rendered env files (opskit/appenv.py) even to build
    appenv.refresh(ROOT, appenv.SERVER, env)
    return env


def stack_images(base: Path) -> list[str]:
    out = run(["docker", "compose", "-f", ROOT / "docker-compose.yml", "--env-file",
               base / "build-production.env", "--profile", "tools", "config", "--images"],
              env=compose_env(base)).stdout  # fmt: skip
    return sorted({i if ":" in i.rsplit("/", 1)[-1] else f"{i}:latest" for i in out.split()})


def publish_images(registry, base: Path) -> list[str]:
    """Build the stack's images here (cached layers make a rebuild quick) and push them."""
    env = compose_env(base)
    compose = ["docker", "compose", "-f", ROOT / "docker-compose.yml", "--env-file",
               base / "build-production.env", "--profile", "tools"]  # fmt: skip
    run([*compose, "build"], env=env, timeout=3600)
    images = stack_images(base)
    for image in images:
        registry.push(image, image)
    return images


def operator_clone(base: Path) -> Path:
    """A clone holding this working tree (committed or not) on main and staging."""
    clone = base / "operator-clone"
    clone.mkdir()
    files = run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z"]).stdout
    names = [n for n in files.split("\0") if n and (ROOT / n).exists()]
    run(["tar", "-C", ROOT, "-c", "-f", base / "tree.tar", "--null", "-T", "-"],
        input="\0".join(names))  # fmt: skip
    run(["tar", "-C", clone, "-x", "-f", base / "tree.tar"])
    run(["git", "init", "-q", "-b", "main", clone])
    run(["git", *GIT_ID, "-C", clone, "add", "-A"])
    run(["git", *GIT_ID, "-C", clone, "commit", "-q", "-m", "the project as tested"])
    run(["git", "-C", clone, "branch", "staging"])
    return clone
