"""scripts/deploy.sh: the engine's vocabulary, the exchange directory, private logs.

The engine runs in a container and asks deploy.sh for each host command. A rogue or
broken engine is stood in for by a `docker` on PATH that speaks the bridge protocol
(opskit/remote/runner.py BridgeRunner) from the script's side: it answers deploy.sh's
`docker inspect`, and as `docker run ... -m opskit.deploy` it hands over requests and
records the answers. Everything deploy.sh itself does runs for real.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from opskit.commands import deploy as cmd
from opskit.commands.lock import Lock
from opskit.deploy import history
from tests.harness.core import ROOT, require_binary

SCRIPT = ROOT / "scripts" / "deploy.sh"


def engine_scripts() -> list[str]:
    """Every fixed script the engine runs with `sh -c`."""
    lock = Lock("/srv/p/.deploy/lock")
    argvs = [
        lock.acquire(1),
        lock.status(),
        lock.release(),
        cmd.git_resolve("/srv/p", "main"),
        cmd.git_archive("/srv/p", "a" * 40, "/srv/p/.deploy/build/x"),
        cmd.append_line("/srv/p/logs/x.log"),
        cmd.write_private("/srv/p/.env.app/django_prod.env"),
        history.append("/srv/p/.deploy/history"),
        history.read("/srv/p/.deploy/history"),
    ]
    scripts = []
    for argv in argvs:
        assert argv[:2] == ["sh", "-c"], argv
        scripts.append(argv[2])
    return scripts


def test_the_script_knows_every_sh_script_of_the_engine():
    text = SCRIPT.read_text()
    listed = re.search(r'ENGINE_SCRIPTS="\n(.*?)\n"', text, re.S).group(1).split()
    wanted = sorted({hashlib.sha256(s.encode()).hexdigest() for s in engine_scripts()})
    assert listed == wanted, (
        "scripts/deploy.sh's ENGINE_SCRIPTS differs from the engine's scripts; put these "
        "lines there:\n" + "\n".join(wanted)
    )


def test_shellcheck_clean():
    shellcheck = require_binary("shellcheck", "packages")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# The rogue engine: `docker run` hands over each request $ROGUE_DIR/req.N (argv, NUL
# separated) in turn and appends what came back to $ROGUE_DIR/answers.
FAKE_DOCKER = r"""#!/usr/bin/env bash
set -u
case "$1" in
  inspect|image) echo sha256:fake; exit 0 ;;
  run) ;;
  *) echo "fake docker: $*" >&2; exit 1 ;;
esac
bridge=""; prev=""
for a in "$@"; do
  if [ "$prev" = --bridge ]; then bridge=$a; fi
  prev=$a
done
n=1
while [ -f "$ROGUE_DIR/req.$n" ]; do
  cp "$ROGUE_DIR/req.$n" "$bridge/$n.argv"
  : > "$bridge/$n.in"
  printf 'run %s 0\n' "$n"
  read -r done_word m rc
  printf '%s %s rc=%s out=%s err=%s\n' "$done_word" "$m" "$rc" \
    "$(tr '\n' ' ' < "$bridge/$n.out")" "$(tr '\n' ' ' < "$bridge/$n.err")" >> "$ROGUE_DIR/answers"
  n=$((n + 1))
done
printf 'exit 0\n'
"""


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "opskit").mkdir()
    (root / "opskit" / "deploy").mkdir()
    (root / "opskit" / "deploy" / "__init__.py").write_text("# the engine, in its container\n")
    (root / "scripts" / "deploy.sh").write_bytes(SCRIPT.read_bytes())
    (root / "scripts" / "backup.sh").write_text("#!/bin/sh\necho backups/db_prod_x\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    return root, bindir, tmp_path


def deploy(root: Path, bindir: Path, tmp: Path, requests: list[list[str]], **env_extra):
    rogue = tmp / "rogue"
    rogue.mkdir()
    for n, argv in enumerate(requests, start=1):
        (rogue / f"req.{n}").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    out = rogue / "answers"
    out.write_text("")
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HOME": str(tmp),
        "ROGUE_DIR": str(rogue),
        **env_extra,
    }
    proc = subprocess.run(
        ["bash", str(root / "scripts" / "deploy.sh"), "production"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    return proc, out.read_text().splitlines()


def test_refuses_a_command_outside_the_vocabulary_naming_it(checkout):
    root, bindir, tmp = checkout
    victim = tmp / "victim"
    victim.write_text("keep me")
    planted = tmp / "planted"
    requests = [
        ["rm", "-f", str(victim)],  # rm of anything but a build directory
        ["touch", str(planted)],  # a program the engine never uses
        ["sh", "-c", f"touch {planted}"],  # sh with a script that is not the engine's
        ["bash", "-c", f"touch {planted}"],
        ["rm", "-rf", "--", f"{root}/.deploy/build/../../x"],
        ["df", "-Pk", str(root)],  # in the vocabulary: runs
        cmd.read_file(str(victim)),  # cat: runs
        Lock(f"{root}/.deploy/lock").status(),  # one of the engine's scripts: runs
    ]
    proc, answers = deploy(root, bindir, tmp, requests)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "keep me" and not planted.exists()
    assert len(answers) == len(requests)
    for answer, program in zip(answers[:5], ("rm", "touch", "sh", "bash", "rm"), strict=True):
        assert "rc=126" in answer, answer
        assert f"deploy.sh refused {program}: not in the deploy engine's vocabulary" in answer
    assert proc.stderr.count("REFUSED a command outside the deploy engine's vocabulary") == 5
    assert "REFUSED a command outside the deploy engine's vocabulary: touch " in proc.stderr
    assert "rc=0" in answers[5] and "rc=0 out=keep me" in answers[6]
    assert "rc=126" not in answers[7], answers[7]
    # the refusals are in the log too, and the log is private
    logs = list((root / "logs").glob("deploy_production_*.log"))
    assert len(logs) == 1 and "REFUSED" in logs[0].read_text()
    assert stat.S_IMODE(logs[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "logs").stat().st_mode) == 0o700


def test_exchange_dir_on_disk_is_refused_without_a_terminal(checkout):
    root, bindir, tmp = checkout
    disk = tmp / "not-tmpfs"
    disk.mkdir()
    proc, answers = deploy(
        root, bindir, tmp, [["df", "-Pk", "/"]], DEPLOY_EXCHANGE_DIR=str(disk), TMPDIR=str(disk)
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{disk} is not a writable tmpfs" in proc.stderr
    assert "set DEPLOY_EXCHANGE_DIR to a writable tmpfs" in proc.stderr
    assert answers == [] and list(disk.iterdir()) == []


def test_exchange_dir_on_a_tmpfs_is_used(checkout):
    root, bindir, tmp = checkout
    if not Path("/dev/shm").is_dir() or not os.access("/dev/shm", os.W_OK):
        pytest.fail("/dev/shm is not writable on this machine")
    proc, answers = deploy(root, bindir, tmp, [["df", "-Pk", "/"]], DEPLOY_EXCHANGE_DIR="/dev/shm")
    assert proc.returncode == 0, proc.stderr
    assert "rc=0" in answers[0]


def test_every_command_of_a_deploy_is_in_the_vocabulary(tmp_path):
    """The engine's own requests in a deploy of an image, of a ref and with the pre-deploy
    backup all pass deploy.sh's check (its `allowed`, run by bash)."""
    import shlex

    from opskit.deploy.checks import backup_script
    from opskit.shell import join
    from tests.unit import test_deploy_engine as e

    outcome, ctx, lines = e.deploy(e.Server())
    assert outcome.ok, "\n".join(lines)
    argvs = [shlex.split(c) for c in e.commands(ctx)]

    server = e.Server()
    commit = "abc1234" + "0" * 33
    build_dir = f"{e.PROD.build_dir}/{e.RELEASE}"
    server.answers.update(
        {
            join(cmd.git_fetch(e.PROD.path)): e.ok(),
            join(cmd.git_resolve(e.PROD.path, "v2")): e.ok(commit + "\n"),
            join(cmd.git_describe(e.PROD.path, commit)): e.ok("v2\n"),
            join(cmd.git_archive(e.PROD.path, commit, build_dir)): e.ok(),
            join(cmd.compose_build(build_dir)): e.ok(),
            join(cmd.remove_build_dir(build_dir)): e.ok(),
        }
    )
    release = cmd.run_release(
        e.PROD, server.spec, e.RELEASE, e.PROD.release_image(e.RELEASE), f"v2@{commit[:12]}"
    )
    server.answers[join(release)] = e.ok("cid\n")
    outcome, ctx, lines = e.deploy(server, image=None, ref="v2")
    assert outcome.ok, "\n".join(lines)
    argvs += [shlex.split(c) for c in e.commands(ctx)]
    # the pre-deploy backup (opskit/deploy/checks.py predeploy_backup)
    argvs.append(backup_script(e.PROD.path, "production"))
    assert len(argvs) > 30

    check = tmp_path / "check.sh"
    check.write_text(
        "set -eu\n"
        f"root={shlex.quote(e.PROD.path)}\n"
        + re.search(r'(?ms)^ENGINE_SCRIPTS=".*?^}\n', SCRIPT.read_text()).group(0)
        + 'for f in "$@"; do mapfile -d "" -t argv < "$f"; '
        'allowed || { echo "REFUSED: ${argv[*]}"; }; done\n'
    )
    files = []
    for n, argv in enumerate(argvs):
        f = tmp_path / f"argv.{n}"
        f.write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        files.append(str(f))
    proc = subprocess.run(["bash", str(check), *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", proc.stdout
