"""The deploy lock: an atomic `mkdir` on the server, holding who, when, what and why.

Pure builders (argv lists, nothing runs here) and parsers of what the server answers.
`mkdir` either creates the directory or fails because it exists, in one system call, so
two deploys started at the same moment cannot both get it. The details file is written
from stdin, so nothing a user typed (the reason, a ref) ever becomes part of a command
line.

The lock also records the process that holds it on the server: for a deploy driven over
SSH that is the sshd process of the operator's connection (it lives exactly as long as
the connection), for `scripts/deploy.sh` the engine's own process. `lock-status` checks
that process, with its start time so a reused pid is not mistaken for the holder, and can
then say whether the holder is still running or died leaving the lock behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from opskit.shell import sh

DETAILS = "details.json"
HOLDER = "holder"
# exit code of the acquire script when the lock is already held (EX_TEMPFAIL)
HELD = 75

# Runs on the server as `sh -c SCRIPT sh LOCKDIR [PID]`. On success it writes stdin to
# the details file and the holder process (pid and start time) next to it; when the lock
# is held it prints the holder's details and exits HELD. With no PID given, the holder is
# the nearest sshd ancestor: the operator's SSH connection.
ACQUIRE = r"""set -u
dir=$1
# stdin is read first, whatever happens next: a command that exits without reading what
# it was sent makes the sender's write fail
details=$(cat)
mkdir -p -- "$(dirname -- "$dir")" || exit 1
if ! mkdir -- "$dir" 2>/dev/null; then
  if [ -d "$dir" ]; then
    cat -- "$dir/details.json" 2>/dev/null || echo '{}'
    exit 75
  fi
  mkdir -- "$dir"
  exit 1
fi
printf '%s\n' "$details" > "$dir/details.json" || exit 1
pid=${2:-}
if [ -z "$pid" ]; then
  p=$$
  while [ "$p" -gt 1 ] 2>/dev/null; do
    case "$(cat "/proc/$p/comm" 2>/dev/null)" in sshd*) pid=$p; break ;; esac
    p=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f2) || break
  done
fi
if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
  start=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20)
  printf '%s %s\n' "$pid" "$start" > "$dir/holder"
fi
exit 0
"""

# `sh -c SCRIPT sh LOCKDIR`: the details, then a line saying whether the holder process
# still runs ("holder: alive PID", "holder: gone PID" or "holder: unknown"); exit 1 when
# there is no lock.
STATUS = r"""set -u
dir=$1
[ -d "$dir" ] || exit 1
cat -- "$dir/details.json" 2>/dev/null || echo '{}'
echo
if [ -r "$dir/holder" ]; then
  read -r pid start < "$dir/holder"
  now=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f20)
  if [ -n "$now" ] && [ "$now" = "$start" ]; then
    echo "holder: alive $pid"
  else
    echo "holder: gone $pid"
  fi
else
  echo "holder: unknown"
fi
"""

# `sh -c SCRIPT sh LOCKDIR`: removes the lock's own files and the directory; anything
# else found inside makes rmdir fail instead of being deleted.
RELEASE = r"""set -u
dir=$1
[ -d "$dir" ] || exit 3
rm -f -- "$dir/details.json" "$dir/holder"
rmdir -- "$dir"
"""


@dataclass(frozen=True)
class Lock:
    """The lock directory of one environment on the server."""

    path: str

    def acquire(self, holder_pid: int | None = None) -> list[str]:
        """Take the lock; the details go on stdin. Exit HELD, printing them, when held."""
        extra = [str(holder_pid)] if holder_pid else []
        return sh(ACQUIRE, self.path, *extra)

    def status(self) -> list[str]:
        return sh(STATUS, self.path)

    def release(self) -> list[str]:
        """Remove the lock; exit 3 when there was none."""
        return sh(RELEASE, self.path)


@dataclass(frozen=True)
class LockDetails:
    """What a lock holds: who took it, when, for what and why."""

    who: str
    when: str  # ISO 8601, UTC
    env: str
    action: str  # deploy, rollback, ...
    what: str  # the ref, image or release being deployed
    why: str = ""
    host: str = ""  # the machine the deploy was started from
    pid: int | None = None  # its process there

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LockDetails:
        """Whatever a lock file holds; a damaged one still yields a describable lock."""
        try:
            data = json.loads(text or "{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        pid = data.get("pid")
        return cls(
            who=str(data.get("who") or "unknown"),
            when=str(data.get("when") or ""),
            env=str(data.get("env") or ""),
            action=str(data.get("action") or ""),
            what=str(data.get("what") or ""),
            why=str(data.get("why") or ""),
            host=str(data.get("host") or ""),
            pid=pid if isinstance(pid, int) else None,
        )

    def age_s(self, now: datetime | None = None) -> float | None:
        try:
            then = datetime.fromisoformat(self.when)
        except (TypeError, ValueError):
            return None
        if then.tzinfo is None:
            then = then.replace(tzinfo=UTC)
        return ((now or datetime.now(UTC)) - then).total_seconds()

    def describe(self, now: datetime | None = None) -> str:
        age = self.age_s(now)
        since = f"since {self.when}" + (f" ({_duration(age)} ago)" if age is not None else "")
        text = f"{self.who} {since}: {self.action} {self.env} {self.what}".rstrip()
        if self.why:
            text += f" (why: {self.why})"
        return text


@dataclass(frozen=True)
class LockStatus:
    held: bool
    details: LockDetails | None = None
    holder: str = "unknown"  # alive, gone or unknown
    holder_pid: int | None = None

    @property
    def stale(self) -> bool:
        return self.held and self.holder == "gone"


def parse_status(exited: int, stdout: str) -> LockStatus:
    """Read the answer of `Lock.status()`."""
    if exited != 0:
        return LockStatus(held=False)
    lines = stdout.rstrip("\n").split("\n")
    holder, pid = "unknown", None
    if lines and lines[-1].startswith("holder: "):
        words = lines.pop().split()
        holder = words[1] if len(words) > 1 else "unknown"
        if len(words) > 2 and words[2].isdigit():
            pid = int(words[2])
    details = LockDetails.from_json("\n".join(lines).strip())
    return LockStatus(held=True, details=details, holder=holder, holder_pid=pid)


def explain(status: LockStatus, *, env: str, release_hint: str) -> str:
    """A paragraph for `lock-status`: who holds it and what to do."""
    if not status.held:
        return f"{env}: not locked"
    assert status.details is not None
    text = f"{env}: locked by {status.details.describe()}"
    if status.holder == "alive":
        text += (
            f"\nthe process holding it on the server (pid {status.holder_pid}) is still "
            "running: that deploy is in progress; wait for it to finish"
        )
    elif status.holder == "gone":
        text += (
            f"\nthe process that took it (pid {status.holder_pid}) is gone: that deploy was "
            "interrupted (its connection dropped or it was killed) and left the lock behind."
            f"\nrelease it with: {release_hint}"
        )
    else:
        text += (
            "\nwhether the holder still runs is unknown; if no deploy is running, "
            f"release it with: {release_hint}"
        )
    return text


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"
