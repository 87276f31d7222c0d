"""gunicorn for the reference project: `gunicorn -c gunicorn.conf.py` (from any directory).

One file for every environment; the env file decides the size: production 2 workers x 2
threads on APP_PORT 8000, staging 1 x 2 on 8001. Nothing is written outside /dev/shm,
so the container's root filesystem can be read-only. Command-line flags override this
file (tests bind to a loopback port with --bind).
"""

import gc
import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a whole number (gunicorn.conf.py)") from None


wsgi_app = "aiia.wsgi:application"
# the project package sits next to this file, wherever gunicorn is started from
chdir = os.path.dirname(os.path.abspath(__file__))

# all interfaces inside the container; only nginx reaches it, over aiia_network
bind = f"0.0.0.0:{_int('APP_PORT', 8000)}"

# threads share one copy of Django per process, which is what fits in 150 MB
worker_class = "gthread"
# 2 x 2 is the guide's production size (2 vCPU; staging sets 1 x 2 in its env file)
workers = _int("GUNICORN_WORKERS", 2)
threads = _int("GUNICORN_THREADS", 2)
# import Django once in the master and fork: workers share those pages copy-on-write,
# and a recycled worker starts in milliseconds instead of re-importing. Only with two
# workers or more: one worker has no one to share with, and a master holding Django
# beside it is memory of its own (staging after a load, in the 512 MB VPS with
# bench/vps_levers.py: 69.1 MiB preloaded, 71.7 preloaded and warmed, 65.7 without;
# docs/server.md). Staging's recycled worker imports Django again (about 2 s).
preload_app = workers > 1

# recycle a worker after 10,000-15,000 requests so a slow leak cannot reach the memory
# limit. A recycle is not free: the old worker stops accepting and drains (its kept-alive
# connections linger up to 2 s) before the master forks its successor, so the container
# runs on one worker meanwhile, and nginx's connections then all land on the survivor
# (nginx's keepalive_time spreads them again: nginx/templates/app-site.conf). At 2000
# (+10 %), each worker of a saturated container recycled about every 30 s, both close
# together, and the 20 s runs they fell into served a third fewer answers
# (bench/load.py, logged-in /admin/, two rounds: 92.0 answers/s with the machine's CPUs
# 69 % busy, against 135.6 and 95 % with recycling off). At the guide's 100 users (about
# 50 requests/s a worker) 10,000 is a recycle every 3-5 minutes per worker. A worker's
# memory levels off long before: PSS 26-29 MiB fresh, 31-32 after 6,600 and again after
# 7,200 requests of logged-in /admin/ and /api/notes/ (production's 2 x 2 behind nginx,
# flat out).
max_requests = 10_000
# up to 50 % more per worker: the workers of one container drift apart and recycle
# minutes apart, never together
max_requests_jitter = 5_000

# a worker silent for 30 s is stuck: killed and replaced (nginx gives up at 60 s anyway)
timeout = 30
# SIGTERM lets in-flight requests finish for up to 25 s; compose's stop_grace_period
# must be longer (30 s) or Docker's SIGKILL comes first
graceful_timeout = 25
# longer than nginx's upstream keepalive_timeout (60 s): nginx, not gunicorn, closes
# idle upstream connections, which avoids a race that turns into 502s
keepalive = 75

# the heartbeat file is fchmod'ed on every loop: keep it in memory, not on a disk
# (Docker mounts a 64 MB tmpfs at /dev/shm) and not on a read-only root
worker_tmp_dir = "/dev/shm"  # noqa: S108 - a tmpfs in every container, by design
# gunicorn >= 25 opens a control socket under $HOME/.gunicorn by default: that writes
# under a read-only root and nothing here uses gunicornc; deploys replace containers
control_socket_disable = True

# both logs to the container's output; request time in ms (%(M)s) for the monitor
accesslog = "-"
errorlog = "-"
loglevel = "info"
access_log_format = '%({x-forwarded-for}i)s %(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(f)s" "%(a)s"'


def when_ready(server):
    """Build what Django builds lazily, once in the master, before the first fork.

    Each worker otherwise builds the URL resolver, the admin's compiled templates, forms
    and middleware on its first requests, as private memory; built here, it is shared
    copy-on-write (aiia/warm.py). Measured in the 512 MB VPS after 30 s of 100 users:
    production's container 99.8 -> 95.7 MiB (docs/server.md). Only with preload_app,
    so only where two workers share the master.
    """
    if server.cfg.preload_app:
        from aiia.warm import warm

        server.log.info("warmed before the fork: %s", warm(server.app.wsgi()))


def pre_fork(server, worker):
    """Keep what the master imported (Django, the app) shared with every worker.

    Without this, the first collection in a worker writes to the headers of those objects
    and the kernel copies their pages into the worker: gc.freeze() moves them out of the
    collector's reach (measured: about 10 MB less per Django container after a load).
    """
    gc.freeze()
