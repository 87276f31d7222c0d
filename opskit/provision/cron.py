"""The server's scheduled jobs: one table, so another job is one more entry.

Each job is a line of the deploy user's crontab ending in `# aiia:<id>`; setup keeps
each exactly once (opskit.provision.state.merge_crontab). A job added here reaches
every server at its next `fab setup`.
"""

from __future__ import annotations

from collections.abc import Callable

from opskit.backup import drill
from opskit.provision.state import CronJob

STATUS_SCHEDULE = "7 * * * *"
# commands of a job that an older release (or `fab install-cron`) wrote: replaced too
REPLACES: dict[str, Callable[[str, str], list[str]]] = {
    "status": lambda prod, stg: [f"{prod}/scripts/status.sh", "run"],
}

# (id, schedule, command builder from the production and staging checkout paths)
JOBS: list[tuple[str, str, Callable[[str, str], list[str]]]] = [
    # the operators' guide: 0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production
    (
        "backup-production",
        "0 2 * * *",
        lambda prod, stg: [f"{prod}/scripts/backup.sh", "production"],
    ),
    # staging's after production's, so the two never compete for the box's memory
    ("backup-staging", "30 2 * * *", lambda prod, stg: [f"{stg}/scripts/backup.sh", "staging"]),
    # twice a day, as certbot's own packaging schedules it (scripts/renew-certs.sh)
    ("renew-certs", "17 3,15 * * *", lambda prod, stg: [f"{prod}/scripts/renew-certs.sh"]),
    # the status collector (the devstatus page, the alerts) runs every minute in its own
    # container, started by setup's last step; this hourly `start` only looks (two docker
    # calls) and brings it back if it was removed, or its settings or image changed.
    # It replaces the former `* * * * * status.sh run` line: a docker run from cron each
    # minute kept 16-19 MiB of the docker CLI's pages active (docs/server.md)
    ("status", STATUS_SCHEDULE, lambda prod, stg: [f"{prod}/scripts/status.sh", "start"]),
    # the weekly restore drill, after the night's backups, with its own key (the drill-key
    # step of opskit.provision.steps)
    (
        "drill-production",
        drill.SCHEDULE,
        lambda prod, stg: [f"{prod}/scripts/drill.sh", "production"],
    ),
]


def cron_jobs(production: str, staging: str) -> list[CronJob]:
    return [
        CronJob(
            job_id,
            when,
            build(production, staging),
            tuple([REPLACES[job_id](production, staging)] if job_id in REPLACES else []),
        )
        for job_id, when, build in JOBS
    ]
