"""`python3 -m opskit.backup.relay DIR -- ARGV...`: a command of the drill, run by the host.

scripts/drill.sh runs the weekly restore drill (decryption and `opskit.backup.restore`,
which need Python and `cryptography`) in a container of the backup image with no network
and no Docker socket, while the commands that reach PostgreSQL must run on the host:
`docker exec -i aiia_postgresql psql|pg_restore ...` over the server's socket (pg_hba
refuses the superuser over the network). This module is to the drill what `ssh HOST --`
is to `fab restore --verify-only`: the prefix of its `PgConn`, so the drill runs the very
same restore code. Each command's stdin, stdout and stderr are streamed through FIFOs in
a private directory both sides see, so a decrypted dump is never stored anywhere:

    relay -> host:  "N" on DIR/requests (a FIFO)      argv in N.argv, NUL-separated
    host:           ARGV <N.in >N.out 2>N.err         FIFOs, opened in this order
    host -> relay:  N.rc, the exit status (written once the command has ended)

The host runs only its vocabulary (scripts/drill.sh: `docker exec -i <the PostgreSQL
container> psql|pg_restore`) and answers anything else with 126. The relay exits with the
command's status, so the caller sees a plain child process.
"""

from __future__ import annotations

import itertools
import os
import selectors
import sys
import threading
import time
from collections.abc import Sequence

from opskit.backup.commands import PgConn

REQUESTS = "requests"
BLOCK = 1 << 16
RC_WAIT_S = 60.0  # the host writes N.rc right after the command's end

_counter = itertools.count(1)


def prefix(directory: str) -> tuple[str, ...]:
    """What goes before a command that the host must run: this module, through `directory`."""
    return (sys.executable, "-m", "opskit.backup.relay", directory, "--")


def relayed(directory: str, conn: PgConn) -> PgConn:
    """`conn` (e.g. `docker exec -i aiia_postgresql`) run by the host through `directory`."""
    return PgConn(
        user=conn.user,
        host=conn.host,
        port=conn.port,
        prefix=(*prefix(directory), *conn.prefix),
        bin_dir=conn.bin_dir,
    )


def _pump_stdin(source, sink_path: str) -> None:
    """Our stdin into N.in until its end; a host command that stops reading ends it too."""
    try:
        with open(sink_path, "wb", buffering=0) as sink:
            while block := source.read(BLOCK):
                sink.write(block)
    except BrokenPipeError:
        pass


def relay(directory: str, argv: Sequence[str], *, stdin=None, stdout=None, stderr=None) -> int:
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    base = os.path.join(directory, f"{os.getpid()}-{next(_counter)}")
    names = {s: f"{base}.{s}" for s in ("argv", "in", "out", "err", "rc")}
    old = os.umask(0o077)
    try:
        with open(names["argv"] + ".tmp", "wb") as f:
            f.write(b"".join(str(a).encode() + b"\0" for a in argv))
        os.rename(names["argv"] + ".tmp", names["argv"])
        for s in ("in", "out", "err"):
            os.mkfifo(names[s])
    finally:
        os.umask(old)
    try:
        with open(os.path.join(directory, REQUESTS), "w") as requests:
            requests.write(os.path.basename(base) + "\n")
        # The host opens N.in, N.out, N.err in this order (its shell's redirections) and
        # each open waits for the other side: N.in is opened by the feeder, the two outputs
        # here, one after the other, as the host does.
        feeder = threading.Thread(target=_pump_stdin, args=(stdin, names["in"]), daemon=True)
        feeder.start()
        out = open(names["out"], "rb", buffering=0)  # noqa: SIM115 - closed below
        err = open(names["err"], "rb", buffering=0)  # noqa: SIM115 - closed below
        with selectors.DefaultSelector() as sel, out, err:
            sel.register(out, selectors.EVENT_READ, stdout)
            sel.register(err, selectors.EVENT_READ, stderr)
            while sel.get_map():
                for key, _ in sel.select():
                    block = os.read(key.fd, BLOCK)
                    if not block:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.write(block)
                    key.data.flush()
        deadline = time.monotonic() + RC_WAIT_S
        while not os.path.exists(names["rc"]):
            if time.monotonic() > deadline:
                stderr.write(b"relay: the host gave no exit status\n")
                return 125
            time.sleep(0.01)
        with open(names["rc"]) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else 125
    finally:
        for path in names.values():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python3 -m opskit.backup.relay DIR -- ARGV...", file=sys.stderr)
        return 2
    return relay(args[0], args[2:])


if __name__ == "__main__":
    sys.exit(main())
