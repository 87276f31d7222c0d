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
7. switch: nginx's upstream file names the new container, `nginx -t`, and one graceful
   reload that first lets kept-alive connections end cleanly (nginx/reload.sh); the old
   workers drain, the old container stops, the new one takes the guide's stable name
   (aiia_django_prod) and the upstream file names it (for the next reload; no reload).
8. unlock: the lock is released and one line appended to logs/deploys.log.

Nothing before step 7 touches what is serving: any failure there removes what the
deploy created, releases the lock, records the reason and exits non-zero, while the
previous release keeps answering. Migrations are never reversed silently: when a deploy
fails after applying some, it lists them with the command that reverses them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from opskit.commands.lock import Lock
from opskit.deploy.checks import Checks, predeploy_backup
from opskit.deploy.image import Image
from opskit.deploy.plan import BackupHook, DeployError, Interrupted, Outcome, Plan, State
from opskit.deploy.record import STEP_COUNT, Record
from opskit.deploy.switch import Switch
from opskit.runner import CommandFailed, DryRunner, Runner


@dataclass(frozen=True)
class Step:
    """One row of the table: what a deploy runs, what a rollback runs (None: skipped)."""

    name: str
    deploy: str
    rollback: str | None
    skipped: str = ""


# The one table both a real run and a dry run walk, in order.
TABLE = (
    Step("lock", "_acquire", "_acquire"),
    Step("preflight", "_preflight", "_preflight"),
    Step("backup", "_backup", None, "a rollback runs no migrations"),
    Step("image", "_image", "_rollback_image"),
    Step("migrate", "_migrate", None, "migrations are never reversed by a rollback"),
    Step("release", "_release", "_release"),
    Step("switch", "_switch", "_switch"),
)
STEPS = (*(step.name for step in TABLE), "unlock")  # unlock: Record._finish, always
assert len(STEPS) == STEP_COUNT


class Deployer(Checks, Image, Switch, Record):
    """Runs a Plan through a Runner; every effect on the server goes through `runner`."""

    def __init__(
        self,
        runner: Runner,
        plan: Plan,
        *,
        out: Callable[[str], None] | None = None,
        backup: BackupHook = predeploy_backup,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        # a dry run sends its questions and shows, without running, every change
        self.r: Runner = DryRunner(runner, out=self.say) if plan.dry_run else runner
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
    def _step(self, n: int, name: str, s: State):
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

    # --- the walk ----------------------------------------------------------------------

    def run(self) -> Outcome:
        s = State(started=self.now(), t0=self.clock())
        p = self.plan
        self.say(
            f"{p.action} {self.env.name} on {p.server or self.r.where}: {p.what}"
            + (f" (why: {p.why})" if p.why else "")
            + (" [dry run]" if p.dry_run else "")
        )
        if p.dry_run:
            self.say("would run (release id and image shown as placeholders):")
        restore = _trap_sigterm()
        try:
            return self._walk(s)
        finally:
            restore()

    def _walk(self, s: State) -> Outcome:
        failure: str | None = None
        try:
            for n, step in enumerate(TABLE, start=1):
                method = step.deploy if self.plan.action == "deploy" else step.rollback
                try:
                    with self._step(n, step.name, s) as box:
                        if method is None:
                            box["status"], box["detail"] = "skipped", step.skipped
                        else:
                            done = getattr(self, method)(s)
                            box["detail"], box["status"] = (
                                done if isinstance(done, tuple) else (done, "ok")
                            )
                except DeployError as exc:
                    if step.name == "lock":
                        return self._finish(s, ok=False, reason=exc.reason, locked_out=True)
                    raise
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


def _trap_sigterm() -> Callable[[], None]:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so the deploy cleans up."""

    def handler(signum, frame):
        raise Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
