"""The deploy engine: health-gated, zero-downtime, locked and audited; rollback reuses it.

One engine for both ways in: `fab -H HOST deploy` drives it over SSH from a laptop or
CI, `scripts/deploy.sh` on the server itself. It only talks to a `Runner`, and prints
one line per step with its duration:

    [1/8] lock       ok      0.2s  production locked by alice@laptop
    [2/8] preflight  ok      1.1s  disk 14233 MB free, memory 301 MB available, ...
    ...

The steps (a rollback skips 3 to 5):

1. lock: `mkdir` on the server, atomic; refused with the holder's details when held.
2. preflight: disk, memory, the server's env file validated here with opskit.settings,
   Docker and Compose, nginx running, the app service's definition from the stack.
3. backup: the pre-deploy backup of the environment's database, verified (a hook the
   backups library provides; without it the deploy stops unless told --skip-backup).
4. image: pulled (`--image`, built in CI) or built on the server from a git ref.
5. migrate: `migrate` (and `collectstatic`) in one-off containers of the new image.
6. release: the new container started beside the serving one, with the service's
   exact definition; gated on /health/ probed from inside the nginx container, the way
   nginx will reach it (30 attempts 2 s apart by default).
7. switch: nginx's upstream file names the new container, `nginx -t`, graceful
   `nginx -s reload`; the old workers drain, the old container stops, the new one takes
   the guide's stable name (aiia_django_prod) and nginx is pointed at that name.
8. unlock: the lock is released and one line appended to logs/deploys.log.

Nothing before step 7 touches what is serving: any failure there removes what the
deploy created, releases the lock, records the reason and exits non-zero, while the
previous release keeps answering. Migrations are never reversed silently: when a deploy
fails after applying some, it lists them with the command that reverses them.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dotenv import dotenv_values

from opskit import environments
from opskit import settings as settings_mod
from opskit.commands import deploy as cmd
from opskit.commands.lock import HELD, Lock, LockDetails
from opskit.remote import history, notify
from opskit.runner import CommandFailed, Result, Runner
from opskit.shell import Secret
from opskit.units import size_mb

STEPS = ("lock", "preflight", "backup", "image", "migrate", "release", "switch", "unlock")
EXIT_FAILED = 1
EXIT_LOCKED = 75


class DeployError(Exception):
    """A step failed: `reason` is one line for the log; `detail` is shown under it."""

    def __init__(self, reason: str, detail: str = "", hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.hint = hint


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C: clean up like any failure before the switch."""


BackupHook = Callable[[Runner, cmd.Environment, settings_mod.Settings], str]


@dataclass
class Plan:
    """What to deploy where, and how carefully."""

    env: cmd.Environment
    action: str = "deploy"  # deploy | rollback
    ref: str | None = None
    image: str | None = None
    to_release: str | None = None  # rollback target
    why: str = ""
    who: str = ""
    health_attempts: int = 30
    health_interval_s: float = 2.0
    health_timeout_s: int = 5
    drain_timeout_s: float = 30.0
    stop_timeout_s: int = 30
    keep_releases: int = 3
    min_disk_mb: int = 1000
    min_memory_mb: int | None = None  # default: the app container's memory limit
    skip_backup: bool = False
    extra_ca: str | None = None  # a CA bundle on the server for builds behind a proxy
    # the server's compose file, when the serving container does not name it (compose
    # records its files and project on every container it creates; deploys copy them)
    stack_file: str | None = None
    stack_dir: str | None = None  # its project directory
    holder_pid: int | None = None  # set when the engine runs on the server itself
    webhook: Secret | None = None  # overrides SLACK_WEBHOOK_URL of the env file
    transcript: bool = True  # write logs/deploy_<env>_<ts>.log on the server
    server: str = ""  # how to name the server in messages
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.action not in ("deploy", "rollback"):
            raise ValueError(f"unknown action {self.action!r}")
        if self.ref and self.image:
            raise cmd.BuilderError("give --ref or --image, not both")
        if self.image:
            cmd.check_image(self.image)
        if self.ref:
            cmd.check_ref(self.ref)
        if self.to_release:
            cmd.check_release(self.to_release)
        if self.health_attempts < 1 or self.health_interval_s < 0:
            raise cmd.BuilderError("health attempts must be 1 or more, the interval 0 or more")
        if not self.who:
            self.who = operator()
        if self.stack_file is None:
            self.stack_file = f"{default_stack_dir()}/docker-compose.yml"
        if self.stack_dir is None:
            self.stack_dir = os.path.dirname(self.stack_file) or "/"

    @property
    def what(self) -> str:
        if self.action == "rollback":
            return f"release {self.to_release or '(previous)'}"
        if self.image:
            return f"image {self.image}"
        return f"ref {self.ref or self.env.branch}"


def default_stack_dir() -> str:
    """The stack runs from the production checkout (both environments share it)."""
    return environments.SERVERS["production"].path


def operator() -> str:
    """Who is deploying: the CI run, or user@machine."""
    actor = os.environ.get("GITHUB_ACTOR")
    if actor and os.environ.get("GITHUB_RUN_ID"):
        repo = os.environ.get("GITHUB_REPOSITORY", "")
        return f"{actor} (github actions {repo} run {os.environ['GITHUB_RUN_ID']})"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class Outcome:
    ok: bool
    exit_code: int
    release: str = ""
    reason: str = ""
    entry: history.Entry | None = None
    lines: list[str] = field(default_factory=list)


@dataclass
class _State:
    started: datetime
    t0: float
    settings: settings_mod.Settings | None = None
    spec: cmd.ServiceSpec | None = None
    port: int = 0
    release: str = ""
    image: str = ""  # the release's local tag
    source: str = ""
    commit: str = ""
    version: str = ""
    served: str = ""  # the container nginx sends traffic to when we started
    served_release: str = ""
    served_labels: dict = field(default_factory=dict)
    image_id: str = ""
    upstream_before: str = ""
    new_container: str = ""
    plan_before: cmd.MigrationPlan | None = None
    applied: list[str] = field(default_factory=list)
    switched: bool = False
    backup: str = ""
    build_dir: str = ""
    warnings: list[str] = field(default_factory=list)
    shown_warnings: list[str] = field(default_factory=list)
    locked: bool = False


class Deployer:
    """Runs a Plan through a Runner; every effect on the server goes through `runner`."""

    def __init__(
        self,
        runner: Runner,
        plan: Plan,
        *,
        out: Callable[[str], None] | None = None,
        backup: BackupHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.r = runner
        self.plan = plan
        self.env = plan.env
        self.backup_hook = backup
        self.clock = clock
        self.now = now
        self.sleep = sleep
        self.on_step = on_step
        self.lines: list[str] = []
        self._out = out or (lambda line: print(line, flush=True))
        self.lock = Lock(self.env.lock_dir)

    # --- output ------------------------------------------------------------------

    def say(self, line: str = "") -> None:
        self.lines.append(line)
        self._out(line)

    @contextmanager
    def _step(self, n: int, name: str, s: _State):
        if self.on_step:
            self.on_step(name)
        box: dict = {"detail": "", "status": "ok"}
        t = self.clock()
        try:
            yield box
        except DeployError as exc:
            self._line(n, name, "FAILED", self.clock() - t, exc.reason)
            if exc.detail:
                for line in exc.detail.rstrip().splitlines():
                    self.say(f"      | {line}")
            self._flush_warnings(s)
            raise
        except CommandFailed as exc:
            self._line(n, name, "FAILED", self.clock() - t, str(exc).splitlines()[0])
            for line in exc.result.tail().splitlines()[1:]:
                self.say(f"      | {line}")
            self._flush_warnings(s)
            raise DeployError(str(exc).splitlines()[0]) from None
        self._line(n, name, box["status"], self.clock() - t, box["detail"])
        self._flush_warnings(s)

    def _line(self, n: int, name: str, status: str, seconds: float, detail: str) -> None:
        self.say(f"[{n}/{len(STEPS)}] {name:<10} {status:<7} {seconds:5.1f}s  {detail}".rstrip())

    # --- entry points ----------------------------------------------------------------

    def run(self) -> Outcome:
        s = _State(started=self.now(), t0=self.clock())
        p = self.plan
        self.say(
            f"{p.action} {self.env.name} on {p.server or self.r.where}: {p.what}"
            + (f" (why: {p.why})" if p.why else "")
            + (" [dry run]" if p.dry_run else "")
        )
        restore = _trap_sigterm()
        try:
            if p.dry_run:
                return self._dry_run(s)
            return self._run(s)
        finally:
            restore()

    def _run(self, s: _State) -> Outcome:
        try:
            with self._step(1, "lock", s) as box:
                box["detail"] = self._acquire(s)
        except DeployError as exc:
            return self._finish(s, ok=False, reason=exc.reason, locked_out=True)

        failure: str | None = None
        try:
            with self._step(2, "preflight", s) as box:
                box["detail"] = self._preflight(s)
            if self.plan.action == "deploy":
                with self._step(3, "backup", s) as box:
                    box["detail"], box["status"] = self._backup(s)
                with self._step(4, "image", s) as box:
                    box["detail"] = self._image(s)
                with self._step(5, "migrate", s) as box:
                    box["detail"] = self._migrate(s)
            else:
                with self._step(3, "backup", s) as box:
                    box["status"], box["detail"] = "skipped", "a rollback runs no migrations"
                with self._step(4, "image", s) as box:
                    box["detail"] = self._rollback_image(s)
                with self._step(5, "migrate", s) as box:
                    box["status"] = "skipped"
                    box["detail"] = "migrations are never reversed by a rollback"
            with self._step(6, "release", s) as box:
                box["detail"] = self._release(s)
            with self._step(7, "switch", s) as box:
                box["detail"] = self._switch(s)
        except DeployError as exc:
            failure = exc.reason
        except (Interrupted, KeyboardInterrupt):
            failure = "interrupted (SIGTERM or Ctrl-C)"
            self.say(f"{self.plan.action} interrupted")
        except Exception as exc:  # noqa: BLE001 - a bug must still release the lock
            failure = f"internal error: {type(exc).__name__}: {exc}"
            self.say(f"{self.plan.action} stopped by an internal error: {exc!r}")
        if failure is not None and not s.switched:
            self._undo(s)
        return self._finish(s, ok=failure is None, reason=failure or "")

    # --- 1. lock -------------------------------------------------------------------

    def _acquire(self, s: _State) -> str:
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

    def _preflight(self, s: _State) -> str:
        p, env = self.plan, self.env
        problems: list[str] = []

        docker = self.r.run(cmd.docker_version())
        compose = self.r.run(cmd.compose_version())
        if not docker.ok:
            problems.append(f"Docker does not answer: {docker.tail(3)}")
        if not compose.ok:
            problems.append(f"Docker Compose v2 is missing: {compose.tail(3)}")

        env_text = self.r.run(cmd.read_file(env.env_file))
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

        if problems:  # nothing below can be judged without Docker and a valid env file
            raise DeployError("pre-flight failed", detail="\n".join(problems))
        assert s.settings is not None
        s.port = int(s.settings.get("APP_PORT") or env.port)

        disk = self.r.run(cmd.disk_free(env.path))
        mem = self.r.run(cmd.meminfo())
        free_mb = cmd.parse_df(disk.stdout) if disk.ok else 0
        info = cmd.parse_meminfo(mem.stdout) if mem.ok else {}
        avail_mb = info.get("MemAvailable", 0) + info.get("SwapFree", 0)
        if free_mb < p.min_disk_mb:
            problems.append(
                f"only {free_mb} MB free on {env.path}, need {p.min_disk_mb} MB: "
                "remove unused images (docker image prune) or old backups"
            )

        nginx = self.r.run(cmd.container_state(cmd.NGINX))
        if not nginx.ok or not nginx.stdout.startswith("running"):
            problems.append(f"{cmd.NGINX} is not running: bring the stack up first")
        else:
            up = self.r.run(cmd.read_upstream(env))
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

        served = self.r.run(cmd.inspect(s.served))
        if not served.ok and s.served != env.container:
            # nginx names the compose service (its rendered default, django_prod): the
            # container behind that name is the environment's own
            s.served = env.container
            served = self.r.run(cmd.inspect(s.served))
        if served.ok:
            data = json.loads(served.stdout)[0]
            s.served_labels = dict((data.get("Config") or {}).get("Labels") or {})
            s.served_release = s.served_labels.get(cmd.LABEL_RELEASE, "")
            if not s.served_release:
                # started by compose, not by a deploy: it becomes a release of its own, so
                # a rollback can bring it back like any other
                s.served_release = cmd.initial_release(data.get("Created", ""))
                if not p.dry_run and data.get("Image"):
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
        conf = self.r.run(cmd.compose_config(stack, env.service))
        if not conf.ok:
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
            f"docker {docker.stdout.strip()}, compose {compose.stdout.strip()}, "
            f"serving {s.served} ({s.served_release})" + (f"; {removed}" if removed else "")
        )

    def _remove_leftovers(self, s: _State) -> str:
        """Containers of interrupted deploys: never serving (nginx points elsewhere)."""
        res = self.r.run(cmd.env_containers(self.env))
        gone = []
        for name, _state, _release in cmd.parse_env_containers(res.stdout if res.ok else ""):
            if name in (s.served, self.env.container):
                continue
            if self.r.run(cmd.remove(name)).ok:
                gone.append(name)
        return f"removed {', '.join(gone)} left by an interrupted deploy" if gone else ""

    # --- 3. backup -----------------------------------------------------------------

    def _backup(self, s: _State) -> tuple[str, str]:
        if self.plan.skip_backup:
            s.backup = "skipped (--skip-backup)"
            return "skipped (--skip-backup): NO pre-deploy backup was taken", "skipped"
        if self.backup_hook is None:
            raise DeployError(
                "no pre-deploy backup: the backup library is not available",
                hint="install it, or pass --skip-backup to deploy without a backup",
                detail=(
                    "the backup step calls opskit.remote.backup.predeploy, which is missing; "
                    "rerun with --skip-backup to deploy without a backup (recorded in the log)"
                ),
            )
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

    # --- 4. image --------------------------------------------------------------------

    def _image(self, s: _State) -> str:
        p, env = self.plan, self.env
        if p.image:
            pulled = self.r.run(cmd.pull(p.image), timeout=1800)
            if not pulled.ok:
                raise DeployError(f"docker pull {p.image} failed", detail=pulled.tail())
            info = self._inspect_image(p.image)
            s.source = p.image
            s.release = cmd.release_id(s.started, info["id"])
            s.image = env.release_image(s.release)
            self.r.check(cmd.tag(p.image, s.image))
            s.version = info["version"]
            s.image_id = info["id"]
            return f"pulled {p.image} ({info['id'][7:19]}) as {s.image}, version {s.version or '?'}"

        ref = p.ref or env.branch
        fetched = self.r.run(cmd.git_fetch(env.path), timeout=600)
        if not fetched.ok:
            s.warnings.append(f"git fetch failed ({fetched.tail(1)}); using what is local")
        resolved = self.r.run(cmd.git_resolve(env.path, ref))
        if not resolved.ok or not resolved.stdout.strip():
            raise DeployError(
                f"no commit named {ref!r} in {env.path}",
                detail=resolved.tail() or "git rev-parse found nothing: check the ref's name",
            )
        s.commit = resolved.stdout.strip().splitlines()[-1]
        cmd.commit_id(s.commit)
        describe = self.r.run(cmd.git_describe(env.path, s.commit))
        s.version = describe.stdout.strip() if describe.ok else s.commit[:12]
        s.source = f"{ref}@{s.commit[:12]}"
        s.release = cmd.release_id(s.started, s.commit)
        s.image = env.release_image(s.release)
        s.build_dir = f"{env.build_dir}/{s.release}"
        self.r.check(cmd.git_archive(env.path, s.commit, s.build_dir), what="git archive")
        spec = cmd.build_spec(s.build_dir, s.image, s.version, p.extra_ca, s.commit)
        built = self.r.run(cmd.compose_build(s.build_dir), stdin=spec, timeout=3600)
        self.r.run(cmd.remove_build_dir(s.build_dir))
        s.build_dir = ""
        if not built.ok:
            raise DeployError(f"building {s.source} failed", detail=built.tail(25))
        info = self._inspect_image(s.image)
        s.version = info["version"] or s.version
        s.image_id = info["id"]
        return f"built {s.source} as {s.image}, version {s.version}"

    def _inspect_image(self, image: str) -> dict:
        res = self.r.check(cmd.image_inspect(image))
        return cmd.parse_image(res.stdout)

    def _rollback_image(self, s: _State) -> str:
        env = self.env
        listed = self.r.run(cmd.release_images(env))
        kept = cmd.parse_release_images(env, listed.stdout if listed.ok else "")
        target = self.plan.to_release
        if not target:
            log = self.r.run(history.read(env.history_file, 500))
            entries = history.parse(log.stdout if log.ok else "")
            target = history.previous_release(entries, env.name, s.served_release)
            if not target or target not in kept:
                older = [r for r in kept if r < s.served_release]
                target = older[-1] if older else ""
            if not target:
                raise DeployError(
                    "no earlier release to roll back to",
                    detail=f"serving {s.served_release}; release images kept: "
                    + (", ".join(kept) or "none"),
                )
        if target == s.served_release:
            raise DeployError(f"release {target} is already serving")
        if target not in kept:
            raise DeployError(
                f"release {target} has no image on the server any more",
                detail="kept: " + (", ".join(kept) or "none"),
            )
        s.release = target
        s.image = env.release_image(target)
        info = self._inspect_image(s.image)
        s.version = info["version"]
        s.image_id = info["id"]
        s.source = f"release {target}"
        return f"{s.image}, version {s.version or '?'} (serving now: {s.served_release})"

    # --- 5. migrations ------------------------------------------------------------------

    def _oneoff(self, s: _State, what: str, command: list[str], timeout: float) -> Result:
        assert s.spec is not None
        argv = cmd.run_oneoff(self.env, s.spec, s.release, s.image, what, command)
        return self.r.run(argv, stdin=s.spec.env_file(), timeout=timeout)

    def _migrate(self, s: _State) -> str:
        plan = self._oneoff(s, "plan", cmd.showmigrations(), 300)
        if not plan.ok:
            raise DeployError("cannot read the migration plan", detail=plan.tail())
        s.plan_before = cmd.parse_plan(plan.stdout)
        ran = self._oneoff(s, "migrate", cmd.migrate(), 1800)
        applied, failed = cmd.parse_migrate(ran.stdout)
        s.applied = applied
        if not ran.ok:
            raise DeployError(
                f"migration {failed or '(unknown)'} failed"
                + (f" after applying {len(applied)}" if applied else ""),
                detail=ran.tail(12),
            )
        detail = (
            f"applied {len(applied)}: {', '.join(applied)}" if applied else "no migrations pending"
        )
        assert s.spec is not None
        if s.spec.volumes:
            static = self._oneoff(s, "static", cmd.collectstatic(), 600)
            if not static.ok:
                raise DeployError("collectstatic failed", detail=static.tail())
            detail += "; static files collected"
        return detail

    # --- 6. the new release, health-gated -----------------------------------------------

    def _release(self, s: _State) -> str:
        p, env = self.plan, self.env
        assert s.spec is not None
        name = env.release_container(s.release)
        labels = cmd.compose_labels(s.served_labels, s.image_id)
        argv = cmd.run_release(env, s.spec, s.release, s.image, s.source, labels)
        s.new_container = name
        started = self.r.run(argv, stdin=s.spec.env_file(), timeout=300)
        if not started.ok:
            raise DeployError(f"could not start {name}", detail=started.tail())
        t = self.clock()
        last = cmd.Health(False, None, detail="not probed")
        for attempt in range(1, p.health_attempts + 1):
            res = self.r.run(
                cmd.probe(name, s.port, timeout_s=p.health_timeout_s),
                timeout=p.health_timeout_s + 30,
            )
            last = cmd.parse_health(res.exited, res.stdout)
            if last.ok:
                version = last.version
                if s.version and version and version != s.version:
                    s.warnings.append(f"/health/ reports version {version}, image says {s.version}")
                s.version = version or s.version
                return (
                    f"{name} healthy after {attempt}/{p.health_attempts} attempts "
                    f"({self.clock() - t:.1f}s), version {s.version or '?'}"
                )
            state = self.r.run(cmd.container_state(name))
            words = state.stdout.split()
            if state.ok and words and words[0] in ("exited", "dead"):
                logs = self.r.run(cmd.logs_tail(name))
                oom = " (killed: out of memory)" if len(words) > 2 and words[2] == "true" else ""
                raise DeployError(
                    f"health check failed: {name} exited with code {words[1]}{oom} "
                    f"after {attempt} attempt(s)",
                    detail=(logs.stdout + logs.stderr).strip()[-2000:],
                )
            if attempt < p.health_attempts:
                self.sleep(p.health_interval_s)
        logs = self.r.run(cmd.logs_tail(name))
        raise DeployError(
            f"health check failed: {name} not healthy after {p.health_attempts} attempts "
            f"{p.health_interval_s:g}s apart (last: {last.detail})",
            detail=(logs.stdout + logs.stderr).strip()[-2000:],
        )

    # --- 7. switch ----------------------------------------------------------------------

    def _point_nginx(self, host: str, port: int, release: str) -> Result | None:
        """Write the upstream file, test, reload. None when done; else the failed result."""
        conf = cmd.upstream_conf(host, port, release)
        wrote = self.r.run(cmd.write_upstream(self.env), stdin=conf)
        if not wrote.ok:
            return wrote
        tested = self.r.run(cmd.nginx_test())
        if not tested.ok:
            return tested
        reloaded = self.r.run(cmd.nginx_reload())
        return None if reloaded.ok else reloaded

    def _switch(self, s: _State) -> str:
        env = self.env
        failed = self._point_nginx(s.new_container, s.port, s.release)
        if failed is not None:
            # put the file back as it was; the running nginx never loaded the bad one
            self.r.run(cmd.write_upstream(env), stdin=s.upstream_before)
            self.r.run(cmd.nginx_test())
            raise DeployError("nginx refused the switch", detail=failed.tail())
        s.switched = True
        # from here on the new release serves: what follows is tidying up, and a problem
        # with it is reported, never a reason to call the deploy failed
        t = self.clock()
        done = ""
        try:
            done = self._retire_old(s)
        except Exception as exc:  # noqa: BLE001 - reported; the new release keeps serving
            s.warnings.append(f"after the switch: {type(exc).__name__}: {exc}")
        return f"nginx -> {s.new_container} (release {s.release}); {done} ({self.clock() - t:.1f}s)"

    def _retire_old(self, s: _State) -> str:
        p, env = self.plan, self.env
        drained = self._drain(p.drain_timeout_s)
        # the old release: whatever nginx sent traffic to, and the stable name
        olds = [c for c in dict.fromkeys([s.served, env.container]) if c != s.new_container]
        for old in olds:
            stopped = self.r.run(cmd.stop(old, p.stop_timeout_s), timeout=p.stop_timeout_s + 60)
            if stopped.ok or "No such container" in stopped.stderr:
                self.r.run(cmd.remove(old))
            else:
                s.warnings.append(f"could not stop {old}: {stopped.tail(2)}")
        renamed = self.r.run(cmd.rename(s.new_container, env.container))
        if renamed.ok:
            released_name, s.new_container = s.new_container, env.container
            failed = self._point_nginx(env.container, s.port, s.release)
            if failed is not None:
                s.warnings.append(
                    f"nginx still names {released_name}, which now runs as {env.container}; "
                    f"the next deploy fixes it ({failed.tail(2)})"
                )
        else:
            s.warnings.append(f"kept the name {s.new_container}: {renamed.tail(2)}")
        if s.spec is not None and s.spec.image:
            # compose's own tag follows the release, so `docker compose up -d` keeps it
            moved = self.r.run(cmd.tag(s.image, s.spec.image))
            if not moved.ok:
                s.warnings.append(f"could not tag {s.spec.image}: {moved.tail(1)}")
        pruned = self._prune(s)
        return f"old drained in {drained:.1f}s and stopped" + (
            f"; pruned {', '.join(pruned)}" if pruned else ""
        )

    def _flush_warnings(self, s: _State) -> None:
        for warning in s.warnings:
            self.say(f"      ! {warning}")
        s.shown_warnings += s.warnings
        s.warnings = []

    def _drain(self, timeout: float) -> float:
        """Wait for nginx's old workers to finish their requests (bounded)."""
        t = self.clock()
        while self.clock() - t < timeout:
            res = self.r.run(cmd.draining_workers())
            if not res.ok or res.stdout.strip() in ("", "0"):
                break
            self.sleep(0.2)
        return self.clock() - t

    def _prune(self, s: _State) -> list[str]:
        listed = self.r.run(cmd.release_images(self.env))
        if not listed.ok:
            return []
        kept = cmd.parse_release_images(self.env, listed.stdout)
        log = self.r.run(history.read(self.env.history_file, 500))
        served = history.served_releases(history.parse(log.stdout if log.ok else ""), self.env.name)
        served.append(s.release)  # serving now; the log hears of it at the end
        protect = [s.release, s.served_release]
        gone = []
        for release in cmd.to_prune(kept, self.plan.keep_releases, protect, served):
            if self.r.run(cmd.untag(self.env, release)).ok:
                gone.append(release)
        return gone

    # --- failure before the switch --------------------------------------------------

    def _undo(self, s: _State) -> None:
        if s.new_container:
            res = self.r.run(cmd.remove(s.new_container))
            if res.ok:
                self.say(
                    f"      removed {s.new_container}; {s.served or 'the old release'} "
                    "keeps serving"
                )
        if s.build_dir:
            self.r.run(cmd.remove_build_dir(s.build_dir))
        if s.applied:
            self.say(
                f"      ! migrations applied by this deploy (NOT reversed): {', '.join(s.applied)}"
            )
            self.say("      ! the previous release serves with them in place; to reverse them:")
            for app, target in cmd.reverse_targets(s.plan_before or cmd.parse_plan(""), s.applied):
                self.say(
                    f"      !   fab -H {self.plan.server or 'HOST'} manage --env {self.env.name}"
                    f" --release {s.release} --command 'migrate {app} {target}'"
                )

    # --- 8. unlock and record ----------------------------------------------------------

    def _finish(self, s: _State, *, ok: bool, reason: str, locked_out: bool = False) -> Outcome:
        p = self.plan
        n = len(STEPS)
        t = self.clock()
        seconds = self.clock() - s.t0
        entry = history.Entry(
            when=s.started.isoformat(timespec="seconds"),
            env=self.env.name,
            action=p.action,
            who=p.who,
            result="ok" if ok else ("refused" if locked_out else "failed"),
            duration_s=round(seconds, 1),
            release=s.release,
            ref=p.ref or ("" if p.image or p.action == "rollback" else self.env.branch),
            commit=s.commit,
            image=p.image or "",
            version=s.version,
            previous=s.served_release,
            reason=reason,
            backup=s.backup,
            migrations=list(s.applied),
            why=p.why,
        )
        notes = []
        status = "ok"
        if s.locked:
            released = self.r.run(self.lock.release())
            if released.ok:
                notes.append("lock released")
            else:
                status = "FAILED"
                notes.append(
                    f"lock NOT released ({released.tail(1)}): see "
                    f"`fab lock-status --env {self.env.name}`"
                )
        recorded = self.r.run(history.append(self.env.history_file), stdin=entry.to_line())
        if recorded.ok:
            notes.append(f"recorded in {self.env.history_file}")
        else:
            status = "FAILED"
            notes.append(f"could not record in {self.env.history_file}: {recorded.tail(1)}")
        if not locked_out:
            self._line(n, "unlock", status, self.clock() - t, "; ".join(notes))
        result = "done" if ok else "FAILED"
        self.say(
            f"{p.action} {self.env.name} {result} in {seconds:.1f}s"
            + (
                f": release {s.release} serving, version {s.version or '?'}"
                if ok
                else f": {reason}"
            )
        )
        self._notify(s, entry, ok, reason, seconds)
        if p.transcript and not locked_out:
            self.r.run(
                cmd.append_line(self.env.transcript(s.started)), stdin="\n".join(self.lines) + "\n"
            )
        code = 0 if ok else (EXIT_LOCKED if locked_out else EXIT_FAILED)
        return Outcome(ok, code, s.release, reason, entry, list(self.lines))

    def _notify(self, s: _State, entry: history.Entry, ok: bool, reason: str, seconds: float):
        url = self.plan.webhook
        if url is None and s.settings is not None:
            value = s.settings.get("SLACK_WEBHOOK_URL")
            url = value if isinstance(value, Secret) and value else None
        if not url:
            return
        body = notify.message(
            env=self.env.name,
            action=self.plan.action,
            ok=ok,
            who=self.plan.who,
            release=s.release or "-",
            source=entry.source or self.plan.what,
            seconds=seconds,
            version=s.version,
            reason=reason,
            server=self.plan.server,
        )
        problem = notify.send(url, body)
        self.say("notified the webhook" if problem is None else f"! {problem}")

    # --- dry run --------------------------------------------------------------------

    def _dry_run(self, s: _State) -> Outcome:
        """Read-only checks, then the commands a real run would send (no lock taken)."""
        from opskit.shell import join

        try:
            with self._step(2, "preflight", s) as box:
                box["detail"] = self._preflight_readonly(s)
        except DeployError as exc:
            return Outcome(False, EXIT_FAILED, reason=exc.reason, lines=list(self.lines))
        env, p = self.env, self.plan
        release = cmd.release_id(s.started, "0000000")
        image = env.release_image(release)
        assert s.spec is not None
        would = [self.lock.acquire(p.holder_pid)]
        if p.image:
            would += [cmd.pull(p.image), cmd.tag(p.image, image)]
        elif p.action == "deploy":
            would += [cmd.git_fetch(env.path), cmd.git_resolve(env.path, p.ref or env.branch)]
        if p.action == "deploy":
            would += [cmd.run_oneoff(env, s.spec, release, image, "migrate", cmd.migrate())]
        would += [
            cmd.run_release(env, s.spec, release, image),
            cmd.probe(env.release_container(release), s.port),
            cmd.write_upstream(env),
            cmd.nginx_test(),
            cmd.nginx_reload(),
            cmd.stop(s.served or env.container),
            cmd.rename(env.release_container(release), env.container),
            self.lock.release(),
        ]
        self.say("would run (release id and image shown as placeholders):")
        for argv in would:
            self.say("  " + join(argv))
        return Outcome(True, 0, lines=list(self.lines))

    def _preflight_readonly(self, s: _State) -> str:
        # the same checks; leftovers are listed, not removed
        saved = self._remove_leftovers
        self._remove_leftovers = lambda _s: ""  # type: ignore[method-assign]
        try:
            return self._preflight(s)
        finally:
            self._remove_leftovers = saved  # type: ignore[method-assign]


def _limit_mb(spec: cmd.ServiceSpec) -> int | None:
    flags = list(spec.flags)
    if "--memory" not in flags:
        return None
    return size_mb(flags[flags.index("--memory") + 1])


def _trap_sigterm() -> Callable[[], None]:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so the deploy cleans up."""

    def handler(signum, frame):
        raise Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


# --- the smaller tasks around a deploy --------------------------------------------------


def lock_status(runner: Runner, env: cmd.Environment, release_hint: str) -> tuple[bool, str]:
    """(held, explanation) for `fab lock-status`."""
    from opskit.commands.lock import explain, parse_status

    res = runner.run(Lock(env.lock_dir).status())
    status = parse_status(res.exited, res.stdout)
    return status.held, explain(status, env=env.name, release_hint=release_hint)


def release_lock(runner: Runner, env: cmd.Environment, *, force: bool) -> tuple[bool, str]:
    """Release a lock whose holder is gone; one whose holder still runs only with force."""
    from opskit.commands.lock import parse_status

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
        what = f"{e.source}, version {e.version}, {e.when}" if e else "(not in the deploy log)"
        lines.append(f" {mark} {release}  {what}")
    if not kept:
        lines.append("   no release images kept (deploys tag them aiia/app:<env>-<release>)")
    return "\n".join(lines)


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


# --- scripts/deploy.sh: the engine on the server itself ---------------------------------


def script_backup(runner: Runner, env: cmd.Environment, settings=None) -> str:
    """The pre-deploy backup on the server: scripts/backup.sh prints the new set's path."""
    result = runner.check(["bash", f"{env.path}/scripts/backup.sh", env.name],
                          what="pre-deploy backup")  # fmt: skip
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise DeployError("pre-deploy backup failed: scripts/backup.sh printed no set path")
    return lines[-1]


def main(argv: list[str] | None = None) -> int:
    """`python -m opskit.deploy`: what scripts/deploy.sh runs in its container."""
    import argparse
    import sys

    from opskit.runner import BridgeRunner

    parser = argparse.ArgumentParser(
        prog="scripts/deploy.sh",
        description="Deploy on this server (the same steps as `fab deploy`).",
    )
    parser.add_argument("env", choices=("production", "staging"))
    parser.add_argument("--path", required=True, help="the environment's checkout")
    parser.add_argument("--bridge", required=True, help="the script's command directory")
    parser.add_argument("--who", default="", help="who runs the deploy")
    parser.add_argument("--holder-pid", type=int, default=None, help="the script's pid")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ref", help="git ref to build (default: the environment's branch)")
    source.add_argument("--image", help="registry image to pull instead of building")
    source.add_argument(
        "--rollback",
        nargs="?",
        const="",
        metavar="RELEASE",
        help="bring back a kept release (default: the previous one)",
    )
    parser.add_argument("--why", default="", help="the reason, kept in the lock and the log")
    parser.add_argument("--skip-backup", action="store_true", help="no pre-deploy backup")
    parser.add_argument("--health-attempts", type=int, default=30)
    parser.add_argument("--health-interval", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--keep", type=int, default=3, help="release images kept")
    parser.add_argument("--extra-ca", help="CA bundle for builds behind a TLS proxy")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    runner = BridgeRunner(args.bridge, where="this server")
    code = EXIT_FAILED
    try:
        try:
            plan = Plan(
                env=cmd.environment(args.env, args.path),
                action="rollback" if args.rollback is not None else "deploy",
                ref=args.ref,
                image=args.image,
                to_release=args.rollback or None,
                why=args.why,
                who=args.who,
                skip_backup=args.skip_backup,
                health_attempts=args.health_attempts,
                health_interval_s=args.health_interval,
                drain_timeout_s=args.drain_timeout,
                keep_releases=args.keep,
                extra_ca=args.extra_ca,
                holder_pid=args.holder_pid,
                transcript=False,  # the script tees everything into logs/deploy_<env>_*.log
                server="this server",
                dry_run=args.dry_run,
            )
        except (cmd.BuilderError, ValueError) as exc:
            print(f"deploy.sh: {exc}", file=sys.stderr)
            code = 2
            return code
        try:
            from opskit.remote.backup import predeploy as hook
        except ImportError:
            # opskit.remote.backup imports fabric, which this image does not have: run
            # what its predeploy runs, the server's scripts/backup.sh
            hook = script_backup
        outcome = Deployer(
            runner, plan, out=lambda line: print(line, file=sys.stderr, flush=True), backup=hook
        ).run()
        code = outcome.exit_code
        return code
    finally:
        runner.close(code)


if __name__ == "__main__":
    raise SystemExit(main())
