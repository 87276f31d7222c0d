"""Steps 1 to 3 of a deploy: the lock, the pre-flight checks, the pre-deploy backup."""

from __future__ import annotations

import io
import json
import os
import socket

from dotenv import dotenv_values

from opskit import appenv
from opskit import settings as settings_mod
from opskit.backup.commands import backup_script
from opskit.commands import checkout as co
from opskit.commands import deploy as cmd
from opskit.commands.lock import HELD, LockDetails
from opskit.deploy.plan import DeployError, State
from opskit.runner import CommandFailed, Runner
from opskit.units import size_mb


def predeploy_backup(
    runner: Runner, env: cmd.Environment, settings=None, *, media: bool = True
) -> str:
    """The pre-deploy backup: the server's scripts/backup.sh; returns the new set's path.

    The one backup path of a deploy, whether it is driven by `fab deploy` over SSH or by
    scripts/deploy.sh on the server (the same script cron runs). `media=False` leaves the
    uploads out: backup.sh finds them through the container named aiia_django_<env>, which
    a swarm's database node does not run (its uploads live on the web nodes).
    """
    argv = backup_script(env.path, env.name)
    if not media:
        argv = ["env", "MEDIA_VOLUME=none", *argv]
    result = runner.check(argv, what="pre-deploy backup")
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise DeployError("pre-deploy backup failed: scripts/backup.sh printed no set path")
    return lines[-1]


def _limit_mb(spec: cmd.ServiceSpec) -> int | None:
    flags = list(spec.flags)
    if "--memory" not in flags:
        return None
    return size_mb(flags[flags.index("--memory") + 1])


class Checks:
    """The Deployer's steps before anything new exists on the server."""

    # --- 1. lock -------------------------------------------------------------------

    def _acquire(self, s: State) -> str:
        p = self.plan
        details = LockDetails(
            who=p.who,
            when=s.started.isoformat(timespec="seconds"),
            env=self.env.name,
            action=p.action,
            what=p.what,
            why=p.why,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        res = self.r.run(self.lock.acquire(p.holder_pid), stdin=details.to_json())
        if res.exited == HELD:
            holder = LockDetails.from_json(res.stdout.strip())
            raise DeployError(
                f"refused: {self.env.name} is locked by {holder.describe()}",
                detail=(
                    "another deploy holds the lock; wait for it, or see "
                    f"`fab lock-status --env {self.env.name}`"
                ),
            )
        if not res.ok:
            raise DeployError(f"could not take the lock {self.env.lock_dir}: {res.tail()}")
        s.locked = True
        return f"{self.env.name} locked by {p.who}"

    # --- 2. pre-flight ---------------------------------------------------------------

    def _preflight(self, s: State) -> str:
        p, env = self.plan, self.env
        problems: list[str] = []

        docker = self.r.ask(cmd.docker_version())
        if not docker.ok:
            problems.append(f"Docker does not answer: {docker.tail(3)}")

        env_text = self.r.ask(cmd.read_file(env.env_file))
        if not env_text.ok:
            problems.append(
                f"cannot read the env file {env.env_file}: {env_text.tail(2)} "
                f"(create it from config/*.env.example, mode 0600)"
            )
        else:
            raw = dotenv_values(stream=io.StringIO(env_text.stdout), interpolate=False)
            try:
                s.settings = settings_mod.validate(raw, env.name, text=env_text.stdout)
            except settings_mod.SettingsError as exc:
                problems += [pr.render(env.env_file) for pr in exc.problems]

        problems += self._checkout_clean(s)
        if problems:  # nothing below can be judged without Docker and a valid env file
            raise DeployError("pre-flight failed", detail="\n".join(problems))
        assert s.settings is not None
        s.port = int(s.settings.get("APP_PORT") or env.port)

        disk = self.r.ask(cmd.disk_free(env.path))
        mem = self.r.ask(cmd.meminfo())
        free_mb = cmd.parse_df(disk.stdout) if disk.ok else 0
        info = cmd.parse_meminfo(mem.stdout) if mem.ok else {}
        avail_mb = info.get("MemAvailable", 0) + info.get("SwapFree", 0)
        if free_mb < p.min_disk_mb:
            problems.append(
                f"only {free_mb} MB free on {env.path}, need {p.min_disk_mb} MB: "
                "remove unused images (docker image prune) or old backups"
            )

        nginx = self.r.ask(cmd.container_state(cmd.NGINX))
        if not nginx.ok or not nginx.stdout.startswith("running"):
            problems.append(f"{cmd.NGINX} is not running: bring the stack up first")
        else:
            up = self.r.ask(cmd.read_upstream(env))
            if not up.ok or not cmd.parse_upstream(up.stdout):
                problems.append(
                    f"nginx has no upstream file {env.upstream_file} for {env.name}: "
                    "the nginx image must include it (nginx/templates/app-site.conf)"
                )
            else:
                s.upstream_before = up.stdout
                s.served = cmd.parse_upstream(up.stdout)[0]
        if problems:
            raise DeployError("pre-flight failed", detail="\n".join(problems))

        served = self.r.ask(cmd.inspect(s.served))
        if not served.ok and s.served != env.container:
            # nginx names the compose service (its rendered default, django_prod): the
            # container behind that name is the environment's own
            s.served = env.container
            served = self.r.ask(cmd.inspect(s.served))
        if served.ok:
            data = json.loads(served.stdout)[0]
            s.served_labels = dict((data.get("Config") or {}).get("Labels") or {})
            s.served_release = s.served_labels.get(cmd.LABEL_RELEASE, "")
            if not s.served_release:
                # started by compose, not by a deploy: it becomes a release of its own, so
                # a rollback can bring it back like any other
                s.served_release = cmd.initial_release(data.get("Created", ""))
                if data.get("Image"):
                    tagged = self.r.run(cmd.tag(data["Image"], env.release_image(s.served_release)))
                    if not tagged.ok:
                        s.warnings.append(f"could not tag the serving image: {tagged.tail(1)}")
            if not (data.get("State") or {}).get("Running"):
                s.warnings.append(f"{s.served}, which nginx points at, is not running")
        else:
            s.warnings.append(f"{s.served}, which nginx points at, does not exist")

        stack = cmd.Stack.from_labels(s.served_labels) or cmd.Stack(
            files=(p.stack_file,), directory=p.stack_dir
        )
        self._render_app_env(stack, env_text.stdout)
        # Compose runs once, here: its 73 MB binary run twice in a row (`compose version`
        # first) had its pages activated, and the 512 MB VPS counted them at the deploy's
        # peak (docs/server.md); its version is asked only to explain a failure
        conf = self.r.ask(cmd.compose_config(stack, env.service))
        if not conf.ok:
            compose = self.r.ask(cmd.compose_version())
            if not compose.ok:
                raise DeployError(
                    "pre-flight failed", detail=f"Docker Compose v2 is missing: {compose.tail(3)}"
                )
            raise DeployError(
                f"cannot read service {env.service} from the stack {stack.describe()}",
                detail=conf.tail(),
            )
        try:
            s.spec = cmd.service_spec(json.loads(conf.stdout), env.service)
            s.spec.env_file()
        except (ValueError, cmd.BuilderError) as exc:
            raise DeployError(f"the stack's {env.service} cannot be run: {exc}") from None
        need_mem = p.min_memory_mb if p.min_memory_mb is not None else _limit_mb(s.spec) or 150
        if avail_mb < need_mem:
            raise DeployError(
                "pre-flight failed",
                detail=f"only {avail_mb} MB of memory and swap available, the new release "
                f"needs {need_mem} MB beside the old one: add swap (README) or stop what is "
                "not needed",
            )

        removed = self._remove_leftovers(s)
        return (
            f"disk {free_mb} MB free, memory {avail_mb} MB available, env file valid, "
            f"docker {docker.stdout.strip()}, "
            f"serving {s.served} ({s.served_release})" + (f"; {removed}" if removed else "")
        )

    def _render_app_env(self, stack: cmd.Stack, env_text: str) -> None:
        """The service's rendered env file (only the keys Django reads), from the env file
        just checked: compose reads it for the release and for every later `up`."""
        service = self.env.service
        if not any(a.name == service for a in appenv.SERVER):
            return
        path = f"{stack.directory.rstrip('/')}/{appenv.rendered_path(service)}"
        try:
            text = appenv.render(appenv.parse(env_text), source=self.env.env_file)
        except appenv.AppEnvError as exc:
            raise DeployError("pre-flight failed", detail=str(exc)) from None
        res = self.r.run(cmd.write_private(path), stdin=text)
        if not res.ok:
            raise DeployError(f"cannot write the app's env file {path}: {res.tail(2)}")

    def _checkout_clean(self, s: State) -> list[str]:
        """The checkout will follow the release: it must hold no local change to lose."""
        env = self.env
        head = self.r.ask(co.head(env.path))
        if not head.ok:
            s.warnings.append(f"{env.path} is not a git checkout: it cannot follow the release")
            return []
        s.checkout_before = head.stdout.strip()
        res = self.r.ask(co.status(env.path))
        dirty = co.parse_status(res.stdout) if res.ok else []
        if not dirty:
            return []
        shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
        return [
            f"the checkout {env.path} has local changes to {shown}: a deploy moves it to the "
            f"release's commit; put them in a commit upstream, or aside with "
            f"`git -C {env.path} stash`"
        ]

    def _remove_leftovers(self, s: State) -> str:
        """Containers of interrupted deploys: never serving (nginx points elsewhere)."""
        res = self.r.ask(cmd.env_containers(self.env))
        gone = []
        for name, _state, _release in cmd.parse_env_containers(res.stdout if res.ok else ""):
            if name in (s.served, self.env.container):
                continue
            if self.r.run(cmd.remove(name)).ok:
                gone.append(name)
        return f"removed {', '.join(gone)} left by an interrupted deploy" if gone else ""

    # --- 3. backup -----------------------------------------------------------------

    def _backup(self, s: State) -> tuple[str, str]:
        if self.plan.skip_backup:
            s.backup = "skipped (--skip-backup)"
            return "skipped (--skip-backup): NO pre-deploy backup was taken", "skipped"
        assert s.settings is not None
        try:
            where = self.backup_hook(self.r, self.env, s.settings)
        except DeployError:
            raise
        except Exception as exc:  # noqa: BLE001 - any backup failure stops the deploy
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not text.startswith("pre-deploy backup"):
                text = f"pre-deploy backup failed: {text}"
            detail = exc.result.tail() if isinstance(exc, CommandFailed) else ""
            raise DeployError(text, detail=detail) from None
        s.backup = str(where)
        return f"verified: {where}", "ok"
