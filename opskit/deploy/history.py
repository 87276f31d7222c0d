"""The deploy log on the server: one JSON line per deploy or rollback, appended at its end.

`logs/deploys.log` in the environment's checkout answers "who deployed what, when, and
did it work": `fab deploys` prints it as a table. A line is appended through stdin
(`cat >> FILE`), so no value in it is ever part of a command line; a line that cannot be
parsed (a disk that filled mid-write) is shown as such rather than hiding the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from opskit.commands.deploy import append_line
from opskit.shell import sh


@dataclass(frozen=True)
class Entry:
    when: str  # ISO 8601 UTC, when the deploy started
    env: str
    action: str  # deploy | rollback
    who: str
    result: str  # ok | failed
    duration_s: float
    release: str = ""
    ref: str = ""
    commit: str = ""
    image: str = ""
    version: str = ""
    previous: str = ""  # the release that served before
    reason: str = ""  # why it failed
    backup: str = ""  # the pre-deploy backup, or why there is none
    migrations: list[str] = field(default_factory=list)  # those this deploy applied
    why: str = ""
    digest: str = ""  # the image by digest (repository@sha256:...), for --image deploys
    previous_commit: str = ""  # where the checkout was before this deploy moved it

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")) + "\n"

    @property
    def source(self) -> str:
        """What was deployed, as an operator would name it."""
        if self.image:
            return self.image
        if self.ref:
            return f"{self.ref}@{self.commit[:12]}" if self.commit else self.ref
        return self.release


@dataclass(frozen=True)
class Unreadable:
    line_no: int
    text: str


def append(path: str) -> list[str]:
    """Append stdin (one line) to the deploy log (the transcript's append, one script)."""
    return append_line(path)


def read(path: str, last: int = 50) -> list[str]:
    """The last `last` lines of the deploy log; a missing log is an empty history."""
    return sh('[ -f "$1" ] || exit 0; tail -n "$2" -- "$1"', path, str(last))


def parse(text: str) -> list[Entry | Unreadable]:
    out: list[Entry | Unreadable] = []
    names = set(Entry.__dataclass_fields__)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            out.append(Entry(**{k: v for k, v in data.items() if k in names}))
        except (ValueError, TypeError):
            out.append(Unreadable(n, line[:120]))
    return out


def successful_releases(entries: list[Entry | Unreadable], env: str) -> list[Entry]:
    """Entries that put a release in service, oldest first."""
    return [
        e
        for e in entries
        if isinstance(e, Entry) and e.env == env and e.result == "ok" and e.release
    ]


def served_releases(entries: list[Entry | Unreadable], env: str) -> list[str]:
    """Every release that was in service: those deploys put in, and those they replaced."""
    out: list[str] = []
    for e in successful_releases(entries, env):
        for release in (e.previous, e.release):
            if release and release not in out:
                out.append(release)
    return out


def staged_image(entries: list[Entry | Unreadable], env: str, commit: str) -> Entry | None:
    """The newest deploy that put a registry image of `commit` in service in `env`: the
    image a push of that commit to the next environment promotes (by its digest)."""
    for e in reversed(successful_releases(entries, env)):
        if e.action == "deploy" and e.digest and e.commit == commit:
            return e
    return None


def release_commit(entries: list[Entry | Unreadable], env: str, release: str) -> str:
    """The commit a release was built from, as the deploy log knows it: its own deploy's
    commit, else where the checkout was when a later deploy replaced it."""
    for e in reversed([e for e in entries if isinstance(e, Entry) and e.env == env]):
        if e.release == release and e.commit and e.result == "ok":
            return e.commit
        if e.previous == release and e.previous_commit and e.result == "ok":
            return e.previous_commit
    return ""


def previous_release(entries: list[Entry | Unreadable], env: str, current: str) -> str:
    """The release that served before `current` went in (what `fab rollback` brings back)."""
    for e in reversed(successful_releases(entries, env)):
        if e.release == current:
            return e.previous
    return ""


def table(entries: list[Entry | Unreadable]) -> str:
    """A fixed-width table, newest last (as `tail` would show it)."""
    rows = [("when (UTC)", "env", "action", "who", "release / source", "result", "took")]
    for e in entries:
        if isinstance(e, Unreadable):
            rows.append((f"line {e.line_no}", "", "", "", f"unreadable: {e.text}", "", ""))
            continue
        result = e.result if e.result == "ok" else f"{e.result}: {e.reason}"
        src = e.release + (f" ({e.source})" if e.source and e.source != e.release else "")
        rows.append(
            (
                e.when[:19].replace("T", " "),
                e.env,
                e.action,
                e.who,
                src,
                result,
                f"{e.duration_s:.0f}s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 2)]
    lines = []
    for r in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(r[:-2], widths, strict=False))
        lines.append(f"{head}  {r[-1].rjust(5)}  {r[-2]}".rstrip())
    return "\n".join(lines)
