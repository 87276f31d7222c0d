"""Settings for the reference project, read from the environment.

Keys are those of config/*.env.example. A file named by DJANGO_ENV_FILE, else the
project root's .env when present, is loaded first; real environment variables win.
ENVIRONMENT is local, staging or production; staging and production are "deployed":
they refuse to start with a weak DJANGO_SECRET_KEY and run the hardened settings that
`manage.py check --deploy` asks for.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from aiia import env

BASE_DIR = Path(__file__).resolve().parent.parent  # app/
PROJECT_ROOT = BASE_DIR.parent

ENV_FILE = env.load_env_file(PROJECT_ROOT)

ENVIRONMENT = env.environment_name()
DEPLOYED = ENVIRONMENT in env.DEPLOYED

# shown by /health/ so a deploy can be seen; computed once here, at startup
APP_VERSION = env.app_version(BASE_DIR)

DEBUG = env.get_bool("DJANGO_DEBUG", False)
if DEPLOYED and DEBUG:
    raise ImproperlyConfigured(
        f"DJANGO_DEBUG=true in {ENVIRONMENT}: debug pages leak settings and source. "
        "Set DJANGO_DEBUG=false in the env file."
    )

if DEPLOYED:
    SECRET_KEY = env.require_secret_key(env.get_str("DJANGO_SECRET_KEY"), ENVIRONMENT)
else:
    # local development only: a placeholder is replaced by a fixed, obviously unsafe key
    _local_key = env.get_str("DJANGO_SECRET_KEY")
    SECRET_KEY = (
        _local_key
        if env.secret_key_problem(_local_key) is None
        else "django-insecure-local-development-only-never-deploy-this-key-0123456789"
    )

ALLOWED_HOSTS = env.get_list(
    "DJANGO_ALLOWED_HOSTS", "" if DEPLOYED else "localhost,127.0.0.1,[::1]"
)
if DEPLOYED and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        f"DJANGO_ALLOWED_HOSTS is empty in {ENVIRONMENT}: every request would get 400. "
        "List the site's hostnames, comma-separated (e.g. eduaiia.com,www.eduaiia.com)."
    )
CSRF_TRUSTED_ORIGINS = env.get_list("DJANGO_CSRF_TRUSTED_ORIGINS")
SITE_DOMAIN = env.get_str("SITE_DOMAIN", "localhost")
# JSON for API clients, Django's page for browsers
CSRF_FAILURE_VIEW = "core.views.csrf_failure"

INSTALLED_APPS = [
    "core.apps.SiteAdminConfig",  # django.contrib.admin, its app list built once a request
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "core",
]

MIDDLEWARE = [
    # first: answers /health/ before the HTTPS redirect, ALLOWED_HOSTS (CommonMiddleware
    # calls get_host()), sessions and auth, so container and deploy probes always get in
    "core.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "aiia.urls"
WSGI_APPLICATION = "aiia.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- PostgreSQL through PgBouncer in transaction pooling mode -----------------------
# A server connection belongs to this client only for one transaction, so nothing may
# outlive a transaction on the server: no named (server-side) cursors, no prepared
# statements, no server-side parameter binding. PgBouncer is the pool, so Django's own
# psycopg pool stays off (no "pool" in OPTIONS).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": env.get_str("POSTGRES_DB", "aiia_dev"),
        "USER": env.get_str("POSTGRES_USER", "aiia_dev"),
        "PASSWORD": env.get_str("POSTGRES_PASSWORD"),
        "HOST": env.get_str("POSTGRES_HOST", "localhost"),
        "PORT": env.get_str("POSTGRES_PORT", "5432"),
        # keep a thread's client connection to PgBouncer for 60 s: it costs PgBouncer a
        # few kB and no server connection while idle, and saves a TCP + SCRAM handshake
        # per request; a minute is short enough that PgBouncer restarts and DNS changes
        # are picked up without anyone noticing, and health checks catch dropped ones
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {
            # libpq seconds (2 is its minimum): a dead pooler fails a request fast
            "connect_timeout": 3,
            # psycopg never prepares a statement (None = never, its default is 5 uses)
            "prepare_threshold": None,
            # client-side binding: plain simple-protocol queries, which PgBouncer can
            # hand to any server connection
            "server_side_binding": False,
            "application_name": f"aiia_{ENVIRONMENT}",
        },
    }
}

# --- Redis: cache and the first tier of sessions --------------------------------------
REDIS_KEY_PREFIX = env.get_str("REDIS_KEY_PREFIX", ENVIRONMENT)
CACHES = {
    "default": {
        # Django's, with one Redis client per pool rather than one per call (core.cache)
        "BACKEND": "core.cache.RedisCache",
        "LOCATION": env.redis_url(
            env.get_str("REDIS_HOST", "localhost"),
            env.get_int("REDIS_PORT", 6379),
            env.get_int("REDIS_DB", 0),
            env.get_str("REDIS_USER"),
            env.get_str("REDIS_PASSWORD"),
        ),
        # the ACL lets each environment's user touch only keys under its own prefix
        "KEY_PREFIX": REDIS_KEY_PREFIX,
        "OPTIONS": {
            # Redis is on the same host: a connect that takes over 1 s will not succeed
            "socket_connect_timeout": 1,
            # a cache that answers slower than 2 s is worse than a cache miss
            "socket_timeout": 2,
            # a command on a pooled connection that the far end forgot while it idled
            # (it answers with a reset) runs again, once, on a new connection. The pool
            # only notices a connection the server closed cleanly, and a client on a
            # pool of its own (Django's) retries nothing by default. Timeouts and
            # refused connects are not retried: each keeps its bound.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            # Redis 7.0 (Debian 12's) has no CLIENT SETINFO: without these, each new
            # connection spends two round trips on "unknown subcommand" errors
            "lib_name": None,
            "lib_version": None,
        },
    }
}

# Sessions live in PostgreSQL and are cached in Redis: Redis evicts (allkeys-lru) when it
# fills, and an evicted session must not log anyone out.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# English only (no LocaleMiddleware, no translations of our own): without the translation
# machinery a logged-in admin index runs 13% fewer Python calls (14,039 against 16,166,
# cProfile); dates and numbers keep the English formats
USE_I18N = False
USE_TZ = True

# --- Files nginx serves ----------------------------------------------------------------
# collectstatic writes here and nginx serves /static/ from the same volume
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.get_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.get_str("DJANGO_MEDIA_ROOT", str(BASE_DIR / "media")))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- HTTPS: nginx terminates TLS and sets X-Forwarded-Proto ----------------------------
if DEPLOYED:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # plain-http probes from Docker and the deploy script (the middleware answers first;
    # this keeps them working should it ever be moved)
    SECURE_REDIRECT_EXEMPT = [r"^health/?$"]
    # one year, the HSTS preload list's minimum; every subdomain is served over https
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Logging: everything to stdout, where Docker collects it ---------------------------
LOG_LEVEL = "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "filters": {"no_traceback": {"()": "aiia.logs.NoTraceback"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "plain",
        },
        "stdout_one_line": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "plain",
            "filters": ["no_traceback"],
        },
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["stdout"], "level": LOG_LEVEL, "propagate": False},
        # scanners send random Host headers all day; one line each is enough
        "django.security.DisallowedHost": {
            "handlers": ["stdout_one_line"],
            "level": "WARNING",
            "propagate": False,
        },
    },
}
