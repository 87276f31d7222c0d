"""A fab task run against fabric.testing's MockRemote: scripted answers, no SSH possible."""

from __future__ import annotations

from fabric import Connection
from fabric.testing.base import Command, MockRemote


def run_task(task, answers, **kwargs):
    """Call `task` on a Connection whose server answers (command, stdout, exit) in order;
    any other command, or one left unasked, fails the test."""
    remote = MockRemote()
    remote.expect(commands=[Command(cmd=c, out=o.encode(), exit=e) for c, o, e in answers])
    try:
        task(Connection("server.example", user="ubuntu"), **kwargs)
    finally:
        # checked on the way out too: a task that exits early must still have sent exactly
        # the expected commands
        try:
            remote.safety()
        finally:
            remote.stop()
