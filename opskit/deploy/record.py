"""Step 8 of a deploy: the lock released, one line in the deploy log, the webhook told."""

from __future__ import annotations

from opskit.commands import deploy as cmd
from opskit.deploy import history, notify
from opskit.deploy.plan import EXIT_FAILED, EXIT_LOCKED, Outcome, State
from opskit.shell import Secret

STEP_COUNT = 8


class Record:
    """The Deployer's last step, run whatever happened before it."""

    # --- 8. unlock and record ----------------------------------------------------------

    def _finish(self, s: State, *, ok: bool, reason: str, locked_out: bool = False) -> Outcome:
        p = self.plan
        n = STEP_COUNT
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
            digest=s.digest,
            previous_commit=s.checkout_before,
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
        if p.dry_run:  # a webhook is told of deploys that happened, not of plans
            self.say("dry run: nothing was changed; the commands shown are what a real run sends")
        else:
            self._notify(s, entry, ok, reason, seconds)
        if p.transcript and not locked_out:
            self.r.run(
                cmd.append_line(self.env.transcript(s.started)), stdin="\n".join(self.lines) + "\n"
            )
        code = 0 if ok else (EXIT_LOCKED if locked_out else EXIT_FAILED)
        return Outcome(ok, code, s.release, reason, entry, list(self.lines))

    def _notify(self, s: State, entry: history.Entry, ok: bool, reason: str, seconds: float):
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
