"""Flowscope settings, read from the environment (12-factor). Defaults suit development."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from dashboard.live import DEFAULT_INTERVAL
from eventbus import logs
from eventbus.httpserver import metrics_token

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("FLOWSCOPE_STATE_DIR", BASE_DIR / ".state"))

DEV_SECRET_KEY = "flowscope-development-key-do-not-use-in-production"


def envbool(name: str, default: str = "False") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def running_url(kind: str) -> str:
    """The URL of an embedded server that `make run` started (see eventbus/stack.py)."""
    path = STATE_DIR / "run" / f"{kind}.url"
    return path.read_text().strip() if path.exists() else ""


DEBUG = envbool("DJANGO_DEBUG", "True")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_DEBUG is off but DJANGO_SECRET_KEY is the development key: set a secret key."
    )
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

DATABASE_URL = os.environ.get("DATABASE_URL") or running_url("postgres")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set and no embedded PostgreSQL is running: "
        "start everything with `make run`, or set DATABASE_URL=postgresql://user@host:port/db."
    )
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
NATS_URL = os.environ.get("NATS_URL") or running_url("nats") or "nats://127.0.0.1:4222"
NATS_CREDS = os.environ.get("NATS_CREDS", "")

INSTALLED_APPS = [
    "daphne",
    "dashboard.admin_site.FlowscopeAdminConfig",  # django.contrib.admin, for admins only
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "csp",
    "django_htmx",
    "template_partials",
    "dashboard",
]

MIDDLEWARE = [
    "dashboard.metrics.RequestMetrics",  # first: it times and counts every request
    "dashboard.middleware.reject_nul",
    "django.middleware.security.SecurityMiddleware",
    "dashboard.security.ContentSecurityPolicy",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lock-out into our page (security.py)
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.roles.context",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# django-axes first: it refuses a locked-out (username, address) before the password is checked
AUTHENTICATION_BACKENDS = [
    "dashboard.security.LoginThrottle",  # django-axes
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Production serves what `collectstatic` gathered; development serves the source folders.
STATIC_ROOT = None if DEBUG else Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
WHITENOISE_USE_FINDERS = True  # serve from the source folders too: no collectstatic in dev
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Production security (issue #14, point 9; README "Security"). Cookies are Secure unless
# DEBUG is on; HSTS, the proxy's X-Forwarded-Proto and the redirect to HTTPS are opt-in.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = envbool(
    "FLOWSCOPE_SECURE_COOKIES", "False" if DEBUG else "True"
)
SESSION_COOKIE_AGE = envint("FLOWSCOPE_SESSION_HOURS", 12) * 3600
SESSION_EXPIRE_AT_BROWSER_CLOSE = envbool("FLOWSCOPE_SESSION_AT_BROWSER_CLOSE")
SECURE_HSTS_SECONDS = envint("FLOWSCOPE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("FLOWSCOPE_HSTS_INCLUDE_SUBDOMAINS", "True")
SECURE_HSTS_PRELOAD = envbool("FLOWSCOPE_HSTS_PRELOAD")
if envbool("FLOWSCOPE_BEHIND_PROXY"):
    # only behind a proxy that sets this header itself (and strips a client's)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = envbool("FLOWSCOPE_SSL_REDIRECT")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes speak plain HTTP
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Preloading HSTS is a commitment to browsers' built-in lists, hard to undo: left to the
# operator (FLOWSCOPE_HSTS_PRELOAD=1), so `check --deploy` is not asked to nag about it.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# No inline script or style anywhere (htmx's indicator style is off: base.html's htmx-config);
# dashboard.security.ContentSecurityPolicy adds ws:/wss: of the request's own host to
# connect-src for the live socket (CSP 3 lets 'self' match them; older browsers do not).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
    }
}

# Failed logins (django-axes): FLOWSCOPE_LOGIN_ATTEMPTS failures for one username from one
# address lock that pair out for FLOWSCOPE_LOCKOUT_MINUTES; other addresses may still try.
# Attempts during a lock-out do not extend it. The address is the audit log's.
FLOWSCOPE_LOGIN_ATTEMPTS = envint("FLOWSCOPE_LOGIN_ATTEMPTS", 5)
FLOWSCOPE_LOCKOUT_MINUTES = envint("FLOWSCOPE_LOCKOUT_MINUTES", 15)
AXES_FAILURE_LIMIT = FLOWSCOPE_LOGIN_ATTEMPTS
AXES_COOLOFF_TIME = timedelta(minutes=FLOWSCOPE_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "dashboard.audit.client_address"
AXES_LOCKOUT_CALLABLE = "dashboard.security.locked_out"
AXES_HTTP_RESPONSE_CODE = 429
AXES_DISABLE_ACCESS_LOG = True  # logins are in the audit log already

# Flowscope's own knobs (documented in README.md).
FLOWSCOPE_PUBLIC_READ = envbool("FLOWSCOPE_PUBLIC_READ")  # anonymous visitors may browse
FLOWSCOPE_TRUST_X_FORWARDED_FOR = envbool("FLOWSCOPE_TRUST_X_FORWARDED_FOR")  # behind a proxy
FLOWSCOPE_PAYLOAD_PREVIEW_BYTES = envint("FLOWSCOPE_PAYLOAD_PREVIEW_BYTES", 64 * 1024)
FLOWSCOPE_LAG_INTERVAL = float(os.environ.get("FLOWSCOPE_LAG_INTERVAL", "5"))
FLOWSCOPE_RETENTION = os.environ.get("FLOWSCOPE_RETENTION", "7d")
# Live pages (dashboard/live): a page gets at most one update every this many seconds, however
# fast events arrive (the latest state wins), and each topic is rendered at most that often.
try:
    FLOWSCOPE_LIVE_INTERVAL = float(os.environ.get("FLOWSCOPE_LIVE_INTERVAL", DEFAULT_INTERVAL))
except ValueError:
    FLOWSCOPE_LIVE_INTERVAL = -1.0
if not 0.05 <= FLOWSCOPE_LIVE_INTERVAL <= 10:
    raise ImproperlyConfigured(
        "FLOWSCOPE_LIVE_INTERVAL must be seconds from 0.05 to 10 (default 0.2: 5 updates a second)"
    )
FLOWSCOPE_SUBJECT_PREFIX = os.environ.get("FLOWSCOPE_SUBJECT_PREFIX", "flowscope")
FLOWSCOPE_SERVICE_HEADER = os.environ.get("FLOWSCOPE_SERVICE_HEADER", "Flowscope-Service")
FLOWSCOPE_TAP_READER = os.environ.get("FLOWSCOPE_TAP_READER", "wire")  # or "nats-py"
if FLOWSCOPE_TAP_READER not in ("wire", "nats-py"):
    raise ImproperlyConfigured("FLOWSCOPE_TAP_READER must be 'wire' or 'nats-py'")
# Dead letters (eventbus/deadletters.py): the stream of Flowscope's own that keeps the server's
# consumer advisories, and the streams whose every message is a dead letter (names or patterns).
FLOWSCOPE_ADVISORY_STREAM = os.environ.get("FLOWSCOPE_ADVISORY_STREAM", "FLOWSCOPE_ADVISORIES")
FLOWSCOPE_DLQ_STREAMS = [
    s.strip() for s in os.environ.get("FLOWSCOPE_DLQ_STREAMS", "").split(",") if s.strip()
]
# /metrics, /healthz and /readyz of the tap and the demo on ports of their own
# (eventbus/httpserver.py); 0 turns a port off. The web app serves them on its own port.
FLOWSCOPE_METRICS_HOST = os.environ.get("FLOWSCOPE_METRICS_HOST", "127.0.0.1")
FLOWSCOPE_TAP_METRICS_PORT = envint("FLOWSCOPE_TAP_METRICS_PORT", 9470)
FLOWSCOPE_DEMO_METRICS_PORT = envint("FLOWSCOPE_DEMO_METRICS_PORT", 9471)
# /metrics of every process wants this bearer token when set (eventbus/httpserver.py)
FLOWSCOPE_METRICS_TOKEN = metrics_token()
# The web app's /readyz wants a tap heartbeat at most this many seconds old (0: no tap check).
FLOWSCOPE_READY_TAP_SECONDS = float(os.environ.get("FLOWSCOPE_READY_TAP_SECONDS", "10"))
# Event journeys (dashboard/traces.py): a link from every trace id to the team's tracing UI,
# e.g. https://jaeger.example/trace/{trace_id}; empty: no link.
FLOWSCOPE_TRACE_URL = os.environ.get("FLOWSCOPE_TRACE_URL", "").strip()
if FLOWSCOPE_TRACE_URL and (
    "{trace_id}" not in FLOWSCOPE_TRACE_URL
    or not FLOWSCOPE_TRACE_URL.lower().startswith(("http://", "https://"))
):
    raise ImproperlyConfigured(
        "FLOWSCOPE_TRACE_URL must be an http(s) URL with a {trace_id} placeholder, "
        "e.g. https://jaeger.example/trace/{trace_id}"
    )
FLOWSCOPE_DEMO_RATE = float(os.environ.get("FLOWSCOPE_DEMO_RATE", "2"))  # orders per second
FLOWSCOPE_DEMO_FAILURE_RATE = float(os.environ.get("FLOWSCOPE_DEMO_FAILURE_RATE", "0.1"))

# Structured logs (eventbus/logs.py): JSON lines in production, readable ones in development
# (FLOWSCOPE_LOG_FORMAT), with the trace and span ids of the request or message being handled.
try:
    LOGGING = logs.logging_config()
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from exc
