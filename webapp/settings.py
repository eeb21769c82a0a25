"""EdgeSlim's one settings module, driven by environment variables (see README: Configuration).

``EDGESLIM_ENV`` picks the defaults: ``embedded`` (the default: ``edgeslim up`` on one machine,
SQLite and an embedded Redis), ``production`` (every secret required, ``check --deploy`` clean)
or ``test``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from webapp.env import env, envbool, envint, envlist
from webapp.proxy import parse_networks

BASE_DIR = Path(__file__).resolve().parent.parent
EDGESLIM_ENV = env("EDGESLIM_ENV", "embedded")
if EDGESLIM_ENV not in {"embedded", "production", "test"}:
    raise ImproperlyConfigured(
        f"EDGESLIM_ENV={EDGESLIM_ENV!r}: use one of embedded, production, test"
    )
PRODUCTION = EDGESLIM_ENV == "production"

DATA_DIR = Path(env("EDGESLIM_DATA_DIR", str(Path.cwd() / "data"))).resolve()


def _secret_key() -> str:
    key = env("SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. In production EdgeSlim needs SECRET_KEY (or SECRET_KEY_FILE) "
            "to be a long random string, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # The embedded default generates one on the first run and keeps it in the data folder.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
# The studio's address as devices reach it (e.g. http://192.168.1.20:8000): the enrollment page
# prints it in every command; its host is allowed. Unset: the browser's own address, with a warning.
EDGESLIM_PUBLIC_URL = env("EDGESLIM_PUBLIC_URL", "").strip().rstrip("/")
if EDGESLIM_PUBLIC_URL and "*" not in ALLOWED_HOSTS:
    _public_host = urlsplit(EDGESLIM_PUBLIC_URL).hostname or ""
    ALLOWED_HOSTS.append(f"[{_public_host}]" if ":" in _public_host else _public_host)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI for /api/docs/, served locally
    "webapp.accounts",
    "webapp.live",
    "device_registry",
    "webapp.catalog",
    "webapp.jobs",
    "webapp.reports",
    "webapp.sensitivity",
]

MIDDLEWARE = [
    # First: a container's own health check (127.0.0.1, plain HTTP) skips the host and HTTPS checks.
    "webapp.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "webapp.accounts.middleware.CurrentOrganizationMiddleware",
    "webapp.accounts.middleware.PasswordChangeRequiredMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.accounts.context_processors.organization",
            ],
        },
    },
]

# --- database --------------------------------------------------------------------------------
_default_db = f"sqlite:///{DATA_DIR / 'edgeslim.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(env("DATABASE_URL", _default_db), conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; IMMEDIATE avoids lock upgrades.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- redis: Celery broker and channel layer ---------------------------------------------------
REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 reads with a 5 s socket timeout by default, the same as channels_redis's
            # blocking receive (BZPOPMIN 5 s): every idle socket then died with "Timeout reading".
            # Its pool also stops at 100 connections, which a fleet of agent sockets exceeds.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15, "max_connections": 1000}],
            "prefix": env("EDGESLIM_CHANNEL_PREFIX", "edgeslim"),
            "capacity": 1000,
            "expiry": 30,
        },
    }
}
# Login throttling counts failures here, so the cache is shared by every web process. Values are
# stored as JSON, not pickles: whoever can write to Redis cannot make a web process unpickle code.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env("EDGESLIM_CACHE_PREFIX", "edgeslim"),
        "OPTIONS": {"serializer": "webapp.cache.JSONSerializer"},
    }
}
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    "visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", 43200)
}
if env("EDGESLIM_BROKER_PREFIX"):
    # Separates runs that share one Redis (parallel test sessions, several installs).
    CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env("EDGESLIM_BROKER_PREFIX")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- storage -----------------------------------------------------------------------------------
MEDIA_ROOT = Path(env("EDGESLIM_MEDIA_ROOT", str(DATA_DIR / "media")))
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = Path(env("EDGESLIM_STATIC_ROOT", str(DATA_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]


def _plotly_js_dir() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data"


# Plotly's bundle ships inside the plotly package (and htmx inside django-htmx): nothing is
# copied by hand into the repo and nothing loads from a CDN.
STATICFILES_DIRS.append(("plotly", _plotly_js_dir()))  # type: ignore[arg-type]
WHITENOISE_USE_FINDERS = not PRODUCTION

_s3_bucket = env("EDGESLIM_S3_BUCKET")
STORAGES = {
    "default": (
        {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": _s3_bucket,
                "endpoint_url": env("EDGESLIM_S3_ENDPOINT_URL") or None,
                "region_name": env("EDGESLIM_S3_REGION") or None,
                "access_key": env("AWS_ACCESS_KEY_ID") or None,
                "secret_key": env("AWS_SECRET_ACCESS_KEY") or None,
                "default_acl": None,
                "querystring_auth": True,
            },
        }
        if _s3_bucket
        else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    ),
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- catalog uploads -----------------------------------------------------------------------------
# Largest model or dataset upload, checked up front (413) and again on every chunk.
EDGESLIM_MAX_UPLOAD_BYTES = envint("EDGESLIM_MAX_UPLOAD_BYTES", 2 * 1024**3)
# Every other request body (webapp/body_limit.py caps them before they are read), and a device
# artifact upload (the model and its optional evaluation set together).
EDGESLIM_MAX_REQUEST_BYTES = envint("EDGESLIM_MAX_REQUEST_BYTES", 10 * 1024**2)
EDGESLIM_MAX_ARTIFACT_BYTES = envint("EDGESLIM_MAX_ARTIFACT_BYTES", 512 * 1024**2)
# Chunked uploads are appended here (local disk even with S3 storage) until completed.
EDGESLIM_UPLOAD_TMP_DIR = Path(env("EDGESLIM_UPLOAD_TMP_DIR", str(DATA_DIR / "uploads")))
# An upload session untouched for this long is expired and its temp file removed.
EDGESLIM_UPLOAD_EXPIRY_S = envint("EDGESLIM_UPLOAD_EXPIRY_S", 24 * 3600)
# Uploaded models and datasets are opened in a child process with this address-space cap
# (torch alone needs about 3 GiB of it) and this timeout.
EDGESLIM_INSPECT_MEMORY_BYTES = envint("EDGESLIM_INSPECT_MEMORY_BYTES", 6 * 1024**3)
EDGESLIM_INSPECT_TIMEOUT_S = envint("EDGESLIM_INSPECT_TIMEOUT_S", 600)
# Built-in sample models are trained on the built-in MNIST at first start: epochs for each
# (0: each model's own) and batches per epoch (0: all). Tests train a few batches only.
_TEST = EDGESLIM_ENV == "test"
EDGESLIM_BUILTIN_TRAIN_EPOCHS = envint("EDGESLIM_BUILTIN_TRAIN_EPOCHS", 1 if _TEST else 0)
EDGESLIM_BUILTIN_TRAIN_MAX_BATCHES = envint("EDGESLIM_BUILTIN_TRAIN_MAX_BATCHES", 5 if _TEST else 0)
# Where the built-in samples' validations and builds are kept for the next organisation
# (webapp/catalog/services/builtin_cache.py; entries are keyed by the code that makes them).
EDGESLIM_BUILTIN_CACHE_DIR = Path(
    env("EDGESLIM_BUILTIN_CACHE_DIR", str(DATA_DIR / "cache" / "builtin"))
).resolve()

# --- compression jobs ----------------------------------------------------------------------------
# A run holds a lease on its Job row and renews it while it reports progress; a worker that dies
# leaves the lease to expire, and the redelivered task resumes after the last completed stage.
EDGESLIM_JOB_LEASE_S = envint("EDGESLIM_JOB_LEASE_S", 60)
# Runs that took the lease and died (worker killed, out of memory) before the job is FAILED.
EDGESLIM_JOB_MAX_ATTEMPTS = envint("EDGESLIM_JOB_MAX_ATTEMPTS", 3)
EDGESLIM_JOB_SOFT_TIME_LIMIT_S = envint("EDGESLIM_JOB_SOFT_TIME_LIMIT_S", 6 * 3600)
EDGESLIM_JOB_HARD_TIME_LIMIT_S = envint("EDGESLIM_JOB_HARD_TIME_LIMIT_S", 6 * 3600 + 300)

# --- recovery: the reaper (Celery beat, in the maintenance worker; docs/jobs.md "Recovery") -----
# How often beat sends the jobs reaper: a RUNNING job whose lease lapsed (its worker died) is put
# back on its queue and resumes after its last completed stage. With the 60 s lease a killed
# worker's job is requeued within lease + interval (75 s) and resumes on any live worker.
EDGESLIM_REAPER_INTERVAL_S = envint("EDGESLIM_REAPER_INTERVAL_S", 15)
# A model inspection or data set validation still pending this long after it was (re)sent is sent
# again, at most EDGESLIM_INSPECT_RETRIES times; after that it is marked invalid.
EDGESLIM_INSPECT_STUCK_S = envint("EDGESLIM_INSPECT_STUCK_S", 1800)
# How often deployments past their deadline are ended (their unfinished targets timed out).
EDGESLIM_DEPLOYMENT_EXPIRE_INTERVAL_S = envint("EDGESLIM_DEPLOYMENT_EXPIRE_INTERVAL_S", 60)
EDGESLIM_INSPECT_RETRIES = envint("EDGESLIM_INSPECT_RETRIES", 2)
# Upload sessions that ended without a file (expired, aborted) are deleted this long after.
EDGESLIM_UPLOAD_RECORD_S = envint("EDGESLIM_UPLOAD_RECORD_S", 7 * 24 * 3600)
# Task names, not imports: settings never import the apps. Each message expires after one period,
# so a stopped maintenance worker never finds a pile of stale sweeps when it comes back.
CELERY_BEAT_SCHEDULE = {
    "jobs-reap": {
        "task": "edgeslim.jobs_reap",
        "schedule": float(EDGESLIM_REAPER_INTERVAL_S),
        "options": {"expires": float(EDGESLIM_REAPER_INTERVAL_S)},
    },
    "inspections-reap": {
        "task": "catalog.inspections_reap",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    "uploads-cleanup": {
        "task": "catalog.uploads_cleanup",
        "schedule": 600.0,
        "options": {"expires": 600.0},
    },
    "deployments-expire": {
        "task": "devices.deployments_expire",
        "schedule": float(EDGESLIM_DEPLOYMENT_EXPIRE_INTERVAL_S),
        "options": {"expires": float(EDGESLIM_DEPLOYMENT_EXPIRE_INTERVAL_S)},
    },
}

# --- auth and security -------------------------------------------------------------------------
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
if EDGESLIM_ENV == "test":
    # Tests create many users; the default PBKDF2 cost buys nothing there.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Failed sign-ins per (username, address) pair, and per address for any usernames (spraying).
LOGIN_THROTTLE_ATTEMPTS = envint("EDGESLIM_LOGIN_ATTEMPTS", 5)
LOGIN_THROTTLE_ADDRESS_ATTEMPTS = envint("EDGESLIM_LOGIN_ADDRESS_ATTEMPTS", 50)
LOGIN_THROTTLE_WINDOW_S = envint("EDGESLIM_LOGIN_WINDOW_S", 300)
# Days an invitation link stays valid, and the expiry of a token made by POST /api/v1/auth/token/
# that names none (0: never). Password-reset links use Django's PASSWORD_RESET_TIMEOUT (3 days).
EDGESLIM_INVITATION_DAYS = envint("EDGESLIM_INVITATION_DAYS", 7)
EDGESLIM_API_TOKEN_DEFAULT_DAYS = envint("EDGESLIM_API_TOKEN_DEFAULT_DAYS", 90)

# --- email: password resets and invitations -------------------------------------------------------
# Embedded: printed on the console (the log of `edgeslim up`); tests: kept in memory; production:
# SMTP from the environment.
EMAIL_BACKEND = {
    "embedded": "django.core.mail.backends.console.EmailBackend",
    "test": "django.core.mail.backends.locmem.EmailBackend",
    "production": "django.core.mail.backends.smtp.EmailBackend",
}[EDGESLIM_ENV]
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 587 if envbool("EMAIL_USE_TLS", PRODUCTION) else 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", PRODUCTION)
EMAIL_TIMEOUT = 20
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "EdgeSlim <edgeslim@localhost>")

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Reverse proxies (addresses or networks) whose X-Forwarded-For names the real client and whose
# X-Forwarded-Proto the scheme (webapp/proxy.py); empty: REMOTE_ADDR is the connection's peer and
# the scheme the connection's own, whatever the headers say.
try:
    EDGESLIM_TRUSTED_PROXIES = parse_networks(envlist("EDGESLIM_TRUSTED_PROXIES", ""))
except ValueError as exc:
    raise ImproperlyConfigured(
        f"EDGESLIM_TRUSTED_PROXIES: {exc} (use addresses or networks, e.g. 10.0.0.5,172.16.0.0/12)"
    ) from exc
if PRODUCTION:
    # No SECURE_PROXY_SSL_HEADER: it would believe X-Forwarded-Proto from any client. The ASGI
    # middleware (webapp/proxy.py) takes the scheme from it only for EDGESLIM_TRUSTED_PROXIES.
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe over plain HTTP (a container's own check is answered before this).
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preloading puts the domain into browsers' built-in lists, which takes months to undo: only
    # when the operator asks for it. Its deploy-check warning is silenced while it is off.
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

# --- REST API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # API tokens are stored hashed (shown once), unlike rest_framework.authtoken's.
        "webapp.accounts.authentication.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Every API view declares who may use it (webapp/accounts/permissions.py): by default every
    # member of the call's organisation reads and admins and engineers write; views that differ
    # set their own permission_classes. tests/webapp/test_role_matrix.py checks each route.
    "DEFAULT_PERMISSION_CLASSES": ["webapp.accounts.permissions.OrgWriter"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "EdgeSlim API",
    "DESCRIPTION": "Compress CNNs and prove the result on real edge devices.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Several models have a "status" field with different choices; name each set.
    "ENUM_NAME_OVERRIDES": {
        "ItemStatusEnum": "webapp.catalog.models.ItemStatus",
        # Choice sets that share a field name across components get names of their own.
        "JobStatusEnum": "webapp.jobs.models.JobStatus",
        "QueueRequestEnum": ["auto", "cpu", "gpu"],
        "JobQueueEnum": "webapp.jobs.models.JobQueue",
        "UploadTaskEnum": ["auto", "detection"],
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
