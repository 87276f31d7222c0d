"""Operator tasks: `inv --list` shows them all; each mirrors a make target of the guide."""

from opskit.tasks import namespace

ns = namespace()
