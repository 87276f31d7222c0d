"""The fab collection: remote work over SSH (`fab --list`; `fab --help TASK`).

Assembles the task modules of opskit.remote; each exports `ns`. Run from a clone:
    fab -H ubuntu@your.server.ip deploy --env production --image ghcr.io/...:sha
"""

from __future__ import annotations

from opskit.tasks import namespace

MODULES = (
    "opskit.remote.deploy",
    "opskit.remote.lock",
    "opskit.remote.health",
    "opskit.remote.backup",
    "opskit.remote.certs",
    "opskit.remote.cluster",
    "opskit.remote.monitor",
    "opskit.remote.services",
    "opskit.remote.setup",
)

ns = namespace(MODULES)
