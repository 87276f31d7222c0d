"""The cluster's tasks: init, join, label, status, up, and the rolling deploy and rollback.

Everything goes through Runners: the manager's (the node that also holds the database,
the checkouts and the env files) and, to join, each new node's. A deploy on the cluster
takes the same lock, writes the same deploy log and takes the same pre-deploy backup as
on one box; migrations run once per release in a one-off container on the manager, then
`docker service update --image` replaces the tasks one by one, each new task started
beside the old one and let in only once its health check passes. A task that fails it
makes the swarm put the previous image back by itself.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from dotenv import dotenv_values

from opskit import settings as settings_mod
from opskit.commands import deploy as dcmd
from opskit.commands.lock import HELD, Lock, LockDetails
from opskit.deploy import history
from opskit.runner import CommandFailed, Runner
from opskit.shell import join
from opskit.swarm import commands as cmd
from opskit.swarm import stack as stk

EXIT_FAILED = 1
EXIT_LOCKED = 75
ENV_FILE_VARS = {"production": "PRODUCTION_ENV_FILE", "staging": "STAGING_ENV_FILE"}


class ClusterError(Exception):
    """What failed, in one line; `detail` goes under it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# --- nodes ---------------------------------------------------------------------------


def _state(r: Runner) -> tuple[str, bool]:
    res = r.run(cmd.swarm_state())
    if not res.ok:
        raise ClusterError(f"Docker does not answer on {r.where}", res.tail())
    words = res.stdout.split()
    return (words[0] if words else ""), (len(words) > 1 and words[1] == "true")


def init(r: Runner, advertise_addr: str | None = None) -> str:
    """Make this node the swarm's manager and label it the db node; a second run says so."""
    state, manager = _state(r)
    lines = []
    if state == "active" and manager:
        lines.append(f"{r.where} is already a swarm manager")
    elif state == "active":
        raise ClusterError(f"{r.where} is a worker of another swarm: run init on its manager")
    else:
        r.check(cmd.swarm_init(advertise_addr), what="docker swarm init")
        lines.append(f"{r.where}: swarm initialised")
    node = r.check(cmd.node_self()).stdout.strip()
    r.check(cmd.label(node, stk.DB), what="docker node update")
    lines.append(f"{r.where}: labelled {stk.ROLE_LABEL}={stk.DB} (PostgreSQL, PgBouncer, Redis)")
    return "\n".join(lines)


def join_node(manager: Runner, node: Runner, role: str, advertise_addr: str | None = None) -> str:
    """Join `node` to the manager's swarm as a worker and label it with its role."""
    cmd.check_role(role)
    state, _ = _state(manager)
    if state != "active":
        raise ClusterError(f"{manager.where} is not in a swarm: run `fab cluster-init` there first")
    node_state, _ = _state(node)
    lines = []
    if node_state == "active":
        lines.append(f"{node.where} is already in a swarm")
    else:
        token = manager.check(cmd.join_token("worker"), what="docker swarm join-token").stdout
        addr = manager.check(cmd.manager_addr()).stdout.strip()
        joined = node.run(cmd.swarm_join(addr, advertise_addr), stdin=token.strip() + "\n")
        if not joined.ok:
            raise ClusterError(f"{node.where} could not join the swarm at {addr}", joined.tail())
        lines.append(f"{node.where} joined the swarm at {addr}:2377")
    node_id = node.check(cmd.node_self()).stdout.strip()
    manager.check(cmd.label(node_id, role), what="docker node update")
    lines.append(f"{node.where}: labelled {stk.ROLE_LABEL}={role}")
    return "\n".join(lines)


def label_node(r: Runner, node: str, role: str) -> str:
    r.check(cmd.label(node, role), what="docker node update")
    return f"{node}: labelled {stk.ROLE_LABEL}={role}"


def status(r: Runner) -> tuple[bool, str]:
    """(all well, a report): nodes with their role, services with replicas, tasks per node."""
    nodes = cmd.parse_nodes(r.check(cmd.nodes(), what="docker node ls").stdout)
    roles: dict[str, str] = {}
    if nodes:
        res = r.run(cmd.node_inspect(*[n.id for n in nodes]))
        roles = cmd.parse_roles(res.stdout) if res.ok else {}
    ok = True
    lines = ["nodes:"]
    for n in nodes:
        role = roles.get(n.hostname) or "(no role: fab cluster-label)"
        ok = ok and n.status == "Ready"
        lines.append(
            f"  {n.hostname:<16} {n.status:<6} {n.availability:<7} {n.manager or 'worker':<10} "
            f"{stk.ROLE_LABEL}={role}"
        )
    res = r.run(cmd.services())
    lines.append("services:")
    for line in res.stdout.splitlines() if res.ok else []:
        d = json.loads(line)
        replicas = d.get("Replicas", "")
        have, _, want = replicas.partition("/")
        want = want.split()[0] if want else ""
        if have != want:
            ok = False
        name, mode, image = d.get("Name", ""), d.get("Mode", ""), d.get("Image", "")
        lines.append(f"  {name:<22} {mode:<10} {replicas:<8} {image}")
    tasks = r.run(cmd.stack_tasks())
    lines.append("tasks per node:")
    if tasks.ok:
        for node, items in cmd.tasks_per_node(cmd.parse_tasks(tasks.stdout)).items():
            lines.append(f"  {node}:")
            for t in items:
                lines.append(f"    {t.name:<26} {t.current:<28} {cmd.strip_digest(t.image)}")
                ok = ok and t.running
    else:
        lines.append(f"  (no stack {stk.STACK}: fab cluster-up)")
    return ok, "\n".join(lines)


# --- the stack: secrets, configs, docker stack deploy --------------------------------


def read_env(r: Runner, env: dcmd.Environment) -> tuple[dict[str, str], settings_mod.Settings]:
    """The environment's env file on the manager, parsed and validated."""
    res = r.run(dcmd.read_file(env.env_file))
    if not res.ok:
        raise ClusterError(
            f"cannot read the env file {env.env_file} on {r.where}: {res.tail(2)}",
            "create it from config/*.env.example (mode 0600)",
        )
    raw = dotenv_values(stream=io.StringIO(res.stdout), interpolate=False)
    try:
        settings = settings_mod.validate(raw, env.name, text=res.stdout)
    except settings_mod.SettingsError as exc:
        raise ClusterError(
            f"{env.env_file} is not valid",
            "\n".join(p.render(env.env_file) for p in exc.problems),
        ) from None
    return {k: v or "" for k, v in raw.items()}, settings


@dataclass
class Sources:
    """The checkout's files a deploy reads (the operator's, the release's)."""

    server: dict
    stack_text: str
    site_template: str

    @classmethod
    def from_checkout(cls, root: Path = stk.ROOT) -> Sources:
        return cls(
            server=stk.load_server(root),
            stack_text=(root / stk.STACK_FILE).read_text(),
            site_template=(root / stk.NGINX_SITE_TEMPLATE).read_text(),
        )


def environments(
    r: Runner, paths: Mapping[str, str | None] | None = None
) -> dict[str, dict[str, str]]:
    """Both env files, keyed by the variable server.yml names them with."""
    out = {}
    for name, var in ENV_FILE_VARS.items():
        env = dcmd.environment(name, (paths or {}).get(name))
        out[var] = read_env(r, env)[0]
    return out


def service_env(src: Sources, service: str, files: Mapping[str, Mapping[str, str]]) -> dict:
    return stk.service_environment(src.server, service, files, files[ENV_FILE_VARS["production"]])


def _ensure(r: Runner, kind: str, name: str, label: str, content: str) -> bool:
    """Create the secret or config unless one of that (content-derived) name exists."""
    if r.run(cmd.exists(kind, name)).ok:
        return False
    build = cmd.secret_create if kind == "secret" else cmd.config_create
    r.check(build(name, label), stdin=content, what=f"docker {kind} create {name}")
    return True


def current_image(r: Runner, service: str) -> cmd.ServiceState | None:
    res = r.run(cmd.service_inspect(service))
    return cmd.parse_service(res.stdout) if res.ok else None


def up(
    r: Runner,
    src: Sources,
    *,
    paths: Mapping[str, str | None] | None = None,
    images: Mapping[str, str] | None = None,
    encrypt: bool = True,
    resolve_image: bool = True,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
) -> str:
    """Create the versioned secrets and the nginx config, then `docker stack deploy`.

    The Django services keep the image they run (a deploy changes it, not this) unless
    `images` names one; the first time, the env file's APP_IMAGE:APP_TAG_<ENV>.
    """
    state, manager = _state(r)
    if not (state == "active" and manager):
        raise ClusterError(f"{r.where} is not a swarm manager: run `fab cluster-init` there")
    files = environments(r, paths)
    variables = dict(files[ENV_FILE_VARS["production"]])
    stack = yaml.safe_load(src.stack_text)
    made = []
    for name in stack["services"]:
        text = stk.shell_env(service_env(src, name, files))
        secret = stk.versioned(f"{name}_env", text)
        variables[stk.SECRET_VAR.format(name.upper())] = secret
        if not dry_run and _ensure(r, "secret", secret, name, text):
            made.append(secret)
    site = stk.cluster_site_template(src.site_template)
    config = stk.versioned("nginx_site", site)
    variables[stk.CONFIG_VAR] = config
    if not dry_run and _ensure(r, "config", config, "nginx_site", site):
        made.append(config)
    filled = yaml.safe_load(stk.fill(src.stack_text, variables))
    for name in stk.APP_SERVICES:
        given = (images or {}).get(name)
        running = current_image(r, name)
        if given:
            filled["services"][name]["image"] = dcmd.check_image(given)
        elif running and running.image:
            filled["services"][name]["image"] = running.image
    if not encrypt:
        filled["networks"][stk.NETWORK].pop("driver_opts", None)
    text = yaml.safe_dump(filled, sort_keys=False, default_flow_style=False, width=1000)
    if dry_run:
        say("would run: " + join(cmd.stack_deploy(resolve_image)) + "  < the filled stack file")
        return text
    say(f"secrets and configs created: {', '.join(made) or 'none (all present)'}")
    res = r.run(cmd.stack_deploy(resolve_image), stdin=text, timeout=600)
    if not res.ok:
        raise ClusterError("docker stack deploy failed", res.tail(20))
    say(res.stdout.strip())
    for kind in ("secret", "config"):
        gone = r.run(cmd.unused(kind))
        if gone.ok and gone.stdout.strip():
            say(f"removed unused {kind}s: {', '.join(gone.stdout.split())}")
    return text


# --- deploy and rollback ----------------------------------------------------------------

STEPS = ("lock", "preflight", "backup", "image", "migrate", "update", "unlock")
BackupHook = Callable[[Runner, dcmd.Environment, settings_mod.Settings], str]


def operator() -> str:
    from opskit.deploy import operator as who

    return who()


@dataclass
class Plan:
    env: dcmd.Environment
    action: str = "deploy"  # deploy | rollback
    image: str | None = None
    to_image: str | None = None
    why: str = ""
    who: str = ""
    skip_backup: bool = False
    resolve_image: bool = True
    timeout_s: float = 900.0
    poll_s: float = 2.0
    paths: dict = field(default_factory=dict)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.action not in ("deploy", "rollback"):
            raise ValueError(f"unknown action {self.action!r}")
        if self.action == "deploy" and not self.image:
            raise dcmd.BuilderError("give the image to deploy: --image REGISTRY/NAME:TAG")
        for image in (self.image, self.to_image):
            if image:
                dcmd.check_image(image)
        if not self.who:
            self.who = operator()

    @property
    def what(self) -> str:
        if self.action == "rollback":
            return f"image {self.to_image or '(previous)'}"
        return f"image {self.image}"


@dataclass
class Outcome:
    ok: bool
    exit_code: int
    image: str = ""
    reason: str = ""
    lines: list[str] = field(default_factory=list)


class Deployer:
    """One deploy or rollback of an environment's Django service on the cluster."""

    def __init__(
        self,
        runner: Runner,
        plan: Plan,
        src: Sources | None = None,
        *,
        backup: BackupHook | None = None,
        out: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.r = runner
        self.plan = plan
        self.env = plan.env
        self.src = src or Sources.from_checkout()
        self.backup_hook = backup
        self.clock, self.sleep, self.now = clock, sleep, now
        self.lines: list[str] = []
        self._out = out or (lambda line: print(line, flush=True))
        self.lock = Lock(self.env.lock_dir)
        self.service = self.env.service

    def say(self, line: str) -> None:
        self.lines.append(line)
        self._out(line)

    def _line(self, n: int, name: str, status: str, t: float, detail: str) -> None:
        self.say(f"[{n}/{len(STEPS)}] {name:<10} {status:<7} {self.clock() - t:5.1f}s  {detail}")

    def run(self) -> Outcome:
        p = self.plan
        started = self.now()
        t0 = self.clock()
        self.say(
            f"cluster {p.action} {self.env.name} on {self.r.where}: {p.what}"
            + (f" (why: {p.why})" if p.why else "")
            + (" [dry run]" if p.dry_run else "")
        )
        if p.dry_run:
            return self._dry_run()
        t = self.clock()
        details = LockDetails(
            who=p.who, when=started.isoformat(timespec="seconds"), env=self.env.name,
            action=f"cluster {p.action}", what=p.what, why=p.why, host=socket.gethostname(),
            pid=os.getpid(),
        )  # fmt: skip
        got = self.r.run(self.lock.acquire(), stdin=details.to_json())
        if got.exited == HELD:
            holder = LockDetails.from_json(got.stdout.strip())
            reason = f"refused: {self.env.name} is locked by {holder.describe()}"
            self._line(1, "lock", "FAILED", t, reason)
            return Outcome(False, EXIT_LOCKED, reason=reason, lines=list(self.lines))
        if not got.ok:
            reason = f"could not take the lock {self.env.lock_dir}: {got.tail(2)}"
            self._line(1, "lock", "FAILED", t, reason)
            return Outcome(False, EXIT_FAILED, reason=reason, lines=list(self.lines))
        self._line(1, "lock", "ok", t, f"{self.env.name} locked by {p.who}")

        s: dict = {"image": "", "previous": "", "backup": "", "migrations": []}
        failure = ""
        steps = [
            (2, "preflight", self._preflight),
            (3, "backup", self._backup),
            (4, "image", self._image),
            (5, "migrate", self._migrate),
            (6, "update", self._update),
        ]
        for n, name, fn in steps:
            t = self.clock()
            try:
                status, detail = fn(s)
            except ClusterError as exc:
                self._line(n, name, "FAILED", t, exc.reason)
                for line in exc.detail.rstrip().splitlines():
                    self.say(f"      | {line}")
                failure = exc.reason
                break
            except CommandFailed as exc:
                self._line(n, name, "FAILED", t, str(exc).splitlines()[0])
                failure = str(exc).splitlines()[0]
                break
            self._line(n, name, status, t, detail)
        return self._finish(s, started, t0, failure)

    # --- steps -------------------------------------------------------------------

    def _preflight(self, s: dict) -> tuple[str, str]:
        state, manager = _state(self.r)
        if not (state == "active" and manager):
            raise ClusterError(f"{self.r.where} is not a swarm manager (swarm: {state or '?'})")
        self.files = environments(self.r, self.plan.paths)
        self.settings = read_env(self.r, self.env)[1]
        running = current_image(self.r, self.service)
        if running is None:
            raise ClusterError(
                f"no service {cmd.service(self.service)} on the cluster: run `fab cluster-up` first"
            )
        s["previous"] = running.image
        if self.plan.action == "rollback":
            s["image"] = self.plan.to_image or self._previous(running)
        else:
            s["image"] = self.plan.image
        if s["image"] == running.image:
            raise ClusterError(f"{s['image']} is already what {cmd.service(self.service)} runs")
        return "ok", f"swarm manager, env files valid, serving {running.image}"

    def _previous(self, running: cmd.ServiceState) -> str:
        log = self.r.run(history.read(self.env.history_file, 500))
        entries = history.parse(log.stdout if log.ok else "")
        target = history.previous_release(entries, self.env.name, running.image)
        if not target:
            target = running.previous_image  # the swarm's own memory of the last spec
        if not target:
            raise ClusterError("no earlier image to roll back to (none in the deploy log)")
        return target

    def _backup(self, s: dict) -> tuple[str, str]:
        if self.plan.action == "rollback":
            return "skipped", "a rollback runs no migrations"
        if self.plan.skip_backup:
            s["backup"] = "skipped (--skip-backup)"
            return "skipped", "--skip-backup: NO pre-deploy backup was taken"
        if self.backup_hook is None:
            raise ClusterError("no pre-deploy backup hook: pass --skip-backup to go without")
        try:
            s["backup"] = str(self.backup_hook(self.r, self.env, self.settings))
        except Exception as exc:  # noqa: BLE001 - any backup failure stops the deploy
            raise ClusterError(f"pre-deploy backup failed: {str(exc).splitlines()[0]}") from None
        return "ok", f"verified: {s['backup']}"

    def _image(self, s: dict) -> tuple[str, str]:
        image = s["image"]
        if self.r.run(cmd.image_present(image)).ok:
            return "ok", f"{image} present on the manager"
        pulled = self.r.run(cmd.pull(image), timeout=1800)
        if not pulled.ok:
            raise ClusterError(f"docker pull {image} failed on the manager", pulled.tail())
        return "ok", f"pulled {image} (each web node pulls it as its tasks start)"

    def migrate_argv(self, image: str) -> list[str]:
        return [
            "docker", "run", "--rm", "-i", "--network", stk.NETWORK, "--env-file", "/dev/stdin",
            "--user", "10001:10001", "--read-only", "--tmpfs", "/tmp:size=16m",  # noqa: S108
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--label", f"aiia.env.oneoff={self.env.name}",
            "--entrypoint", "python", dcmd.check_image(image), "manage.py", "migrate", "--noinput",
        ]  # fmt: skip

    def _migrate(self, s: dict) -> tuple[str, str]:
        if self.plan.action == "rollback":
            return "skipped", "migrations are never reversed by a rollback"
        env = service_env(self.src, self.service, self.files)
        ran = self.r.run(self.migrate_argv(s["image"]), stdin=stk.docker_env(env), timeout=1800)
        applied, failed = dcmd.parse_migrate(ran.stdout)
        s["migrations"] = applied
        if not ran.ok:
            raise ClusterError(
                f"migration {failed or '(unknown)'} failed; the serving tasks are untouched",
                ran.tail(12),
            )
        return "ok", (f"applied {len(applied)}: {', '.join(applied)}" if applied else
                      "no migrations pending") + " (once, before any task changes)"  # fmt: skip

    def _update(self, s: dict) -> tuple[str, str]:
        image = s["image"]
        argv = cmd.update_image(self.service, image, resolve_image=self.plan.resolve_image)
        started = self.r.run(argv, timeout=120)
        if not started.ok:
            raise ClusterError("docker service update failed", started.tail())
        deadline = self.clock() + self.plan.timeout_s
        state = cmd.ServiceState("", "", "", "")
        while self.clock() < deadline:
            state = current_image(self.r, self.service) or state
            if state.update_state in cmd.UPDATE_DONE + cmd.UPDATE_ROLLED_BACK + cmd.UPDATE_STUCK:
                break
            self.sleep(self.plan.poll_s)
        if state.update_state in cmd.UPDATE_ROLLED_BACK:
            raise ClusterError(
                f"health gate failed: the swarm rolled {cmd.service(self.service)} back to "
                f"{state.image}",
                state.update_message,
            )
        if state.update_state not in cmd.UPDATE_DONE:
            raise ClusterError(
                f"the update did not finish ({state.update_state or 'no state'}): "
                f"see `fab cluster-status`",
                state.update_message,
            )
        tasks = cmd.parse_tasks(self.r.check(cmd.service_tasks(self.service)).stdout)
        wrong = [t for t in tasks if cmd.strip_digest(t.image) != image or not t.running]
        if wrong:
            raise ClusterError(
                "the update completed but not every task runs the new image",
                "\n".join(f"{t.name} on {t.node}: {t.image} {t.current}" for t in wrong),
            )
        nodes = sorted({t.node for t in tasks})
        return "ok", f"{len(tasks)} task(s) on {', '.join(nodes)} run {image}"

    # --- the end ---------------------------------------------------------------------

    def _finish(self, s: dict, started: datetime, t0: float, failure: str) -> Outcome:
        p = self.plan
        t = self.clock()
        ok = not failure
        entry = history.Entry(
            when=started.isoformat(timespec="seconds"),
            env=self.env.name,
            action=p.action,
            who=p.who,
            result="ok" if ok else "failed",
            duration_s=round(self.clock() - t0, 1),
            # on the cluster a release is its image: `fab cluster-rollback` brings back the
            # image that served before (history.previous_release)
            release=s["image"] if ok else "",
            image=s["image"],
            previous=s["previous"],
            reason=failure,
            backup=s["backup"],
            migrations=list(s["migrations"]),
            why=p.why,
        )
        notes = []
        released = self.r.run(self.lock.release())
        notes.append("lock released" if released.ok else f"lock NOT released: {released.tail(1)}")
        recorded = self.r.run(history.append(self.env.history_file), stdin=entry.to_line())
        log = self.env.history_file
        notes.append(f"recorded in {log}" if recorded.ok else f"NOT recorded: {recorded.tail(1)}")
        status = "ok" if released.ok and recorded.ok else "FAILED"
        self._line(7, "unlock", status, t, "; ".join(notes))
        self.say(
            f"cluster {p.action} {self.env.name} "
            + (f"done: {s['image']} on every task" if ok else f"FAILED: {failure}")
        )
        return Outcome(ok, 0 if ok else EXIT_FAILED, s["image"], failure, list(self.lines))

    def _dry_run(self) -> Outcome:
        image = self.plan.image or self.plan.to_image or "IMAGE"
        would = [self.lock.acquire()]
        if self.plan.action == "deploy":
            would += [cmd.image_present(image), self.migrate_argv(image)]
        would += [
            cmd.update_image(self.service, image, resolve_image=self.plan.resolve_image),
            cmd.service_inspect(self.service),
            cmd.service_tasks(self.service),
            self.lock.release(),
        ]
        self.say("would run:")
        for argv in would:
            self.say("  " + join(argv))
        return Outcome(True, 0, lines=list(self.lines))
