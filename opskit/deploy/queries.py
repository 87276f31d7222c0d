"""The questions around a deploy: who holds the lock, what serves, what is kept, is it healthy.

Each sends read-only commands through a Runner (releasing a stale lock and `manage` aside)
and turns the answers into a line or a table for `fab`.
"""

from __future__ import annotations

import json

from opskit.commands import deploy as cmd
from opskit.commands.lock import Lock, explain, parse_status
from opskit.deploy import history
from opskit.deploy.plan import DeployError, Plan
from opskit.runner import Result, Runner


def lock_status(runner: Runner, env: cmd.Environment, release_hint: str) -> tuple[bool, str]:
    """(held, explanation) for `fab lock-status`."""
    res = runner.run(Lock(env.lock_dir).status())
    status = parse_status(res.exited, res.stdout)
    return status.held, explain(status, env=env.name, release_hint=release_hint)


def release_lock(runner: Runner, env: cmd.Environment, *, force: bool) -> tuple[bool, str]:
    """Release a lock whose holder is gone; one whose holder still runs only with force."""
    lock = Lock(env.lock_dir)
    answer = runner.run(lock.status())
    status = parse_status(answer.exited, answer.stdout)
    if not status.held:
        return True, f"{env.name}: not locked, nothing to release"
    assert status.details is not None
    if status.holder == "alive" and not force:
        return False, (
            f"{env.name}: the deploy holding the lock is still running on the server "
            f"(pid {status.holder_pid}): {status.details.describe()}\n"
            "refusing to release it; wait for it, or pass --force if you are sure"
        )
    res = runner.run(lock.release())
    if not res.ok:
        return False, f"{env.name}: could not release the lock: {res.tail()}"
    return True, f"{env.name}: released the lock held by {status.details.describe()}"


def deploy_history(runner: Runner, env: cmd.Environment, last: int = 20) -> str:
    res = runner.run(history.read(env.history_file, last))
    if not res.ok:
        raise DeployError(f"cannot read {env.history_file}: {res.tail()}")
    entries = history.parse(res.stdout)
    if not entries:
        return f"{env.name}: no deploys recorded in {env.history_file}"
    return history.table(entries)


def serving(runner: Runner, env: cmd.Environment) -> tuple[str, str]:
    """(container, release) nginx sends the environment's traffic to."""
    up = runner.run(cmd.read_upstream(env))
    found = cmd.parse_upstream(up.stdout) if up.ok else None
    if not found:
        raise DeployError(f"nginx has no upstream for {env.name} ({env.upstream_file})")
    container = found[0]
    res = runner.run(cmd.inspect(container))
    if not res.ok and container != env.container:
        container = env.container
        res = runner.run(cmd.inspect(container))
    release = ""
    if res.ok:
        labels = (json.loads(res.stdout)[0].get("Config") or {}).get("Labels") or {}
        release = labels.get(cmd.LABEL_RELEASE, "") or "initial"
    return container, release


def releases(runner: Runner, env: cmd.Environment) -> str:
    """The releases kept for rollback, the serving one marked."""
    container, current = serving(runner, env)
    res = runner.run(cmd.release_images(env))
    kept = cmd.parse_release_images(env, res.stdout if res.ok else "")
    log = runner.run(history.read(env.history_file, 500))
    by_release = {
        e.release: e
        for e in history.successful_releases(history.parse(log.stdout if log.ok else ""), env.name)
    }
    lines = [f"{env.name}: serving {current} from {container}"]
    for release in reversed(kept):
        e = by_release.get(release)
        mark = "*" if release == current else " "
        what = (
            f"{e.source}, version {e.version}, {e.when}"
            + (f", commit {e.commit[:12]}" if e.commit else "")
            + (f", {e.digest}" if e.digest and e.digest != e.source else "")
            if e
            else "(not in the deploy log)"
        )
        lines.append(f" {mark} {release}  {what}")
    if not kept:
        lines.append("   no release images kept (deploys tag them aiia/app:<env>-<release>)")
    return "\n".join(lines)


def staged_image(runner: Runner, env: cmd.Environment, commit: str) -> str:
    """The image (by digest) that `env` successfully deployed for `commit`, or "".

    What promotion asks the staging checkout's deploy log: the production workflow
    deploys this digest instead of building the commit again (DESIGN decision 2)."""
    cmd.commit_id(commit)
    log = runner.run(history.read(env.history_file, 1000))
    if not log.ok:
        raise DeployError(f"cannot read {env.history_file}: {log.tail()}")
    found = history.staged_image(history.parse(log.stdout), env.name, commit)
    return found.digest if found else ""


def check_health(runner: Runner, env: cmd.Environment, timeout_s: int = 5) -> tuple[bool, str]:
    """Probe the serving container from inside nginx's network, as nginx reaches it."""
    container, release = serving(runner, env)
    port = env.port
    up = runner.run(cmd.read_upstream(env))
    found = cmd.parse_upstream(up.stdout) if up.ok else None
    if found:
        port = found[1]
    res = runner.run(cmd.probe(container, port, timeout_s=timeout_s), timeout=timeout_s + 30)
    health = cmd.parse_health(res.exited, res.stdout)
    text = (
        f"{env.name}: {container} (release {release}) "
        + ("healthy" if health.ok else f"NOT healthy: {health.detail}")
        + (f", version {health.version}" if health.version else "")
    )
    return health.ok, text


def manage(
    runner: Runner,
    env: cmd.Environment,
    release: str,
    args: list[str],
    *,
    stack_file: str | None = None,
    stack_dir: str | None = None,
) -> Result:
    """`python manage.py ARGS` in a one-off container of a kept release's image."""
    plan = Plan(env=env, stack_file=stack_file, stack_dir=stack_dir, who="-")
    container, _release = serving(runner, env)
    res = runner.run(cmd.inspect(container))
    labels = (json.loads(res.stdout)[0].get("Config") or {}).get("Labels") or {} if res.ok else {}
    stack = cmd.Stack.from_labels(labels) or cmd.Stack((plan.stack_file,), plan.stack_dir)
    conf = runner.check(cmd.compose_config(stack, env.service))
    spec = cmd.service_spec(json.loads(conf.stdout), env.service)
    argv = cmd.run_oneoff(
        env, spec, release, env.release_image(release), "manage", [*cmd.MANAGE, *args]
    )
    return runner.run(argv, stdin=spec.env_file(), timeout=3600)
