"""The invoke collection: each module defines its tasks and an `ns`; the root flattens them.

Task names follow the operators' guide's make targets (`inv dev-down` for `make dev-down`).
"""

from __future__ import annotations

from importlib import import_module

from invoke import Collection

# one module per area; each exports `ns`
MODULES = (
    "opskit.tasks.config",
    "opskit.tasks.setup",
    "opskit.tasks.dev",
    "opskit.tasks.django",
    "opskit.tasks.quality",
    "opskit.tasks.docker",
    "opskit.tasks.health",
    "opskit.tasks.monitor",
    "opskit.tasks.logs",
    "opskit.tasks.backup",
)


def namespace(modules: tuple[str, ...] = MODULES) -> Collection:
    """One flat collection of the tasks of `modules` (each exports `ns`), with their config.

    `inv` assembles opskit.tasks.* with it, `fab` opskit.remote.*.
    """
    root = Collection()
    for name in modules:
        module = import_module(name)
        for task_name, task in module.ns.tasks.items():
            root.add_task(task, name=task_name)
        root.configure(module.ns.configuration())
    return root
