"""The deploy engine: health-gated, zero-downtime, locked and audited; rollback reuses it.

- steps.py: the table of steps (lock, preflight, backup, image, migrate, release, switch,
  unlock) that a run and a dry run both walk, and the Deployer that walks it;
  checks.py, image.py, switch.py and record.py hold the steps themselves.
- plan.py: what to deploy where (Plan), what was found on the way, how it ended.
- queries.py: lock status, what serves, the releases kept, health, `manage`.
- history.py: the deploy log; notify.py: the webhook; cli.py: scripts/deploy.sh.
"""

from opskit.deploy.checks import predeploy_backup
from opskit.deploy.plan import EXIT_FAILED, EXIT_LOCKED, DeployError, Outcome, Plan, operator
from opskit.deploy.queries import (
    check_health,
    deploy_history,
    lock_status,
    manage,
    release_lock,
    releases,
    serving,
    staged_image,
)
from opskit.deploy.steps import STEPS, TABLE, Deployer

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "STEPS",
    "TABLE",
    "DeployError",
    "Deployer",
    "Outcome",
    "Plan",
    "check_health",
    "deploy_history",
    "lock_status",
    "manage",
    "operator",
    "predeploy_backup",
    "release_lock",
    "releases",
    "serving",
    "staged_image",
]
