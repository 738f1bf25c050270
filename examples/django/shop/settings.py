"""Settings for the shop project, read from the environment.

| variable | default | |
|---|---|---|
| SECRET_KEY (or DJANGO_SECRET_KEY) | required unless DEBUG | |
| DEBUG | 0 | 1/true/yes/on to enable |
| ALLOWED_HOSTS | localhost,127.0.0.1 | comma-separated |
| CSRF_TRUSTED_ORIGINS | (none) | comma-separated, with scheme (https://shop.example.com) |
| DATABASE_URL | | postgres://USER:PASSWORD@HOST:PORT/NAME; wins over POSTGRES_* |
| POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD | port 5432, db = user | used when POSTGRES_HOST is set |
| CONN_MAX_AGE | 60 | seconds a database connection is reused |
| CELERY_BROKER_URL | amqp://guest:guest@localhost:5672// | |
| APP_VERSION | dev | answered by GET /version; set at build time by the Dockerfile |
| SWEEP_INTERVAL | 30 | seconds between two runs of the periodic sweep (beat) |
| ORDER_PROCESSING_SECONDS | 0 | simulated work per order, to watch a warm shutdown at work |
| HEALTHZ_FAIL | (empty) | when set, GET /healthz answers 503 with this reason: a release whose health gate fails, to test a deploy's rollback (scripts/e2e.sh bakes it into a broken image) |
| HTTPS | 0 | 1 when served over TLS: secure cookies, HSTS |
| LOG_LEVEL | INFO | |

With neither DATABASE_URL nor POSTGRES_HOST, and DEBUG on, a SQLite file is
used (handy for makemigrations); without DEBUG that is an error.
"""
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import django
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG")

SECRET_KEY = os.environ.get("SECRET_KEY") or os.environ.get("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set (or DEBUG=1 for development)")
    SECRET_KEY = "insecure-development-key"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

APP_VERSION = os.environ.get("APP_VERSION") or "dev"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_env():
    conn_max_age = int(os.environ.get("CONN_MAX_AGE", "60"))
    url = os.environ.get("DATABASE_URL")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql", "pgsql"):
            raise ImproperlyConfigured("DATABASE_URL must be a postgres:// URL, not %r" % parts.scheme)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": conn_max_age,
            "CONN_HEALTH_CHECKS": True,  # Django >= 4.1; ignored before
        }
    if os.environ.get("POSTGRES_HOST"):
        user = os.environ.get("POSTGRES_USER", "postgres")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("POSTGRES_DB") or user,
            "USER": user,
            "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
            "HOST": os.environ["POSTGRES_HOST"],
            "PORT": os.environ.get("POSTGRES_PORT", "5432"),
            "CONN_MAX_AGE": conn_max_age,
            "CONN_HEALTH_CHECKS": True,
        }
    if not DEBUG:
        raise ImproperlyConfigured("set DATABASE_URL or POSTGRES_HOST (SQLite is for DEBUG only)")
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}


DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files: `collectstatic` runs as a pre-deploy hook into the `static`
# volume mounted here; nginx serves that volume at /static/. The manifest
# storage names every file by its content hash, so the files of the previous
# release stay next to the new ones while old and new containers both serve.
STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("STATIC_ROOT", "/app/static")
_STATIC_STORAGE = "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
if DEBUG:
    _STATIC_STORAGE = "django.contrib.staticfiles.storage.StaticFilesStorage"
if django.VERSION >= (4, 2):
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": _STATIC_STORAGE},
    }
else:
    STATICFILES_STORAGE = _STATIC_STORAGE

# Behind nginx, which sets X-Forwarded-Proto (terminate TLS there or in front).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Served over HTTPS (set HTTPS=1 in production): cookies only over TLS, and HSTS.
if env_bool("HTTPS"):
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "3600"))

# Celery (shop/celery.py reads every CELERY_* setting).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A task is acknowledged only once it has run: a worker that is stopped (warm
# shutdown: SIGTERM) finishes the tasks it has started, and the messages it
# had reserved but not started go back to the queue. One message reserved at a
# time per process, so a stopping worker holds back nothing.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A task whose worker process died (OOM, SIGKILL) is redelivered too; the
# tasks are idempotent, so running one twice is harmless.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "sweep-unprocessed-orders": {
        "task": "orders.tasks.sweep_unprocessed_orders",
        "schedule": float(os.environ.get("SWEEP_INTERVAL", "30")),
    },
}
ORDER_PROCESSING_SECONDS = float(os.environ.get("ORDER_PROCESSING_SECONDS", "0"))
# Not for production: a non-empty reason makes /healthz fail (503), so that
# an image built with it is a release that never passes its health gate.
HEALTHZ_FAIL = os.environ.get("HEALTHZ_FAIL", "").strip()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
