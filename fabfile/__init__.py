"""The fab collection: remote work over SSH (`fab --list`; `fab --help TASK`).

Assembles the task modules of opskit.remote; each exports `ns`. Run from a clone:
    fab -H ubuntu@your.server.ip deploy --env production --image ghcr.io/...:sha
"""

from __future__ import annotations

from importlib import import_module

from invoke import Collection

MODULES = (
    "opskit.remote.deploy",
    "opskit.remote.lock",
    "opskit.remote.health",
    "opskit.remote.backup",
    "opskit.remote.certs",
    "opskit.remote.cluster",
)


def namespace() -> Collection:
    root = Collection()
    for name in MODULES:
        module = import_module(name)
        for task_name, task in module.ns.tasks.items():
            root.add_task(task, name=task_name)
        root.configure(module.ns.configuration())
    return root


ns = namespace()
