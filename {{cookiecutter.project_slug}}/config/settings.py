"""Settings, read from the environment and ``.env``.

Every variable is listed in ``.env.example`` and the README.
"""

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import django
import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# The environment wins over .env, variable by variable: a value systemd's EnvironmentFile
# (or the shell) sets is never replaced, and .env only fills in what is unset. So a
# development .env copied to a server would still bring its DJANGO_DEBUG=1 if the
# production environment lacked that line: deploy without .env (deploy/README.md).
_environment = set(os.environ)
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
# The names .env filled in (not their values): `check --deploy` warns about them (sse.W008).
DOTENV_VARIABLES = sorted(set(os.environ) - _environment)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Required when debug is off, so production never starts with a known key. An empty
# value counts as unset: Django would start, then fail every request.
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or ("dev-only-insecure-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("Set the DJANGO_SECRET_KEY environment variable (it is unset or empty)")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
# Behind nginx over HTTPS, from the site's own host names: "example.com" gives
# "https://example.com" and ".example.com" gives "https://*.example.com".
CSRF_TRUSTED_ORIGINS = env.list(
    "DJANGO_CSRF_TRUSTED_ORIGINS",
    default=[f"https://{'*' if host.startswith('.') else ''}{host}" for host in ALLOWED_HOSTS if host != "*"],
)

INSTALLED_APPS = [
    "daphne",  # first: its runserver serves ASGI, streams included
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
{%- if cookiecutter.sse_mode == "channels" %}
    "channels",
{%- endif %}
    "django_htmx",  # htmx 2 and 4 and their SSE extensions, served as static files
    "sse",
    "demo",
    *(["template_partials"] if django.VERSION < (6, 0) else []),
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "sse.ops.health.HealthProbe",  # /health/ before the Host check: probes reach an instance by address
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

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
            # Template partials (the partialdef and partial tags, "page.html#name") are built
            # into Django 6.0+. On 5.2 the package they came from provides them; as builtins,
            # its tags need no load tag, so templates are the same on both versions.
            **({"builtins": ["template_partials.templatetags.partials"]} if django.VERSION < (6, 0) else {}),
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] in ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"):
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(
            "DATABASE_URL is PostgreSQL but psycopg is not installed: install the postgres extra "
            "(uv sync --extra postgres, or pip install -r requirements.txt)"
        ) from None
    # Under ASGI every request runs its sync code in a thread of its own, and a
    # persistent connection (CONN_MAX_AGE) belongs to one thread: none would be
    # reused. A pool per process bounds the connections instead; a request that
    # finds it empty waits up to the timeout for one, then fails with a 500.
    _pool_max = env.int("DATABASE_POOL_MAX_SIZE", default=10)
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses a pool with persistent connections
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # the pool tests a connection before lending it
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(env.int("DATABASE_POOL_MIN_SIZE", default=2), _pool_max),
        "max_size": _pool_max,
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),
    }
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

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")

# --- Behind nginx, over HTTPS -------------------------------------------------
# nginx sets X-Forwarded-Proto; only trust it because nginx overwrites it.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
# Load balancers probe each instance over plain HTTP, without nginx's X-Forwarded-Proto.
SECURE_REDIRECT_EXEMPT = [r"^health/$"]
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
# includeSubDomains and preload commit every subdomain, and the domain for
# months, to HTTPS: a choice for the site owner, so they are off by default and
# their deploy checks (W005, W021) are silenced until switched on.
SILENCED_SYSTEM_CHECKS = [
    *([] if SECURE_HSTS_INCLUDE_SUBDOMAINS else ["security.W005"]),
    *([] if SECURE_HSTS_PRELOAD else ["security.W021"]),
]

# --- Server-Sent Events ---------------------------------------------------------
# Unset: one process, events kept in memory. Set: Redis carries events between
# processes and keeps the replay log.
REDIS_URL = env.str("REDIS_URL", default=None)
# Redis Sentinel (redis-py's from_url has no Sentinel scheme): REDIS_SENTINELS=host:port,host:port
# and the master's name. REDIS_URL, if also set, then only gives the password and database.
REDIS_SENTINELS = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in env.list("REDIS_SENTINELS", default=[]))]
REDIS_SENTINEL_MASTER = env.str("REDIS_SENTINEL_MASTER", default="mymaster")
_redis = urlsplit(REDIS_URL or "redis://")
REDIS_SENTINEL_OPTIONS = {
    "db": int(_redis.path.strip("/") or 0),
    "username": _redis.username,
    "password": _redis.password,
}
# Redis Cluster: REDIS_CLUSTER_NODES=host:port,host:port (some of the nodes: the client
# finds the others). It wins over REDIS_URL, which then only gives the user name and
# password (and TLS, with rediss://).
REDIS_CLUSTER_NODES = [
    (h, int(p)) for h, _, p in (s.rpartition(":") for s in env.list("REDIS_CLUSTER_NODES", default=[]))
]
REDIS_CLUSTER_OPTIONS = {"username": _redis.username, "password": _redis.password, "ssl": _redis.scheme == "rediss"}
# A broker class by dotted path (a subclass of sse.backends.Broker); unset, REDIS_CLUSTER_NODES
# chooses Redis Cluster, REDIS_URL or REDIS_SENTINELS Redis, else memory (this process only).
SSE_BROKER = env.str("SSE_BROKER", default=None)
SSE_KEY_PREFIX = env.str(
    "SSE_KEY_PREFIX",
    default="{{ cookiecutter.project_slug }}:sse",
)
SSE_MAXLEN = env.int("SSE_MAXLEN", default=10_000)  # events kept per stream for replay
# Bytes of event names and data kept per stream for replay (the newest event always stays); 0: no byte limit.
SSE_MAX_STREAM_BYTES = env.int("SSE_MAX_STREAM_BYTES", default=16_777_216)
SSE_MAX_AGE = env.float("SSE_MAX_AGE", default=86_400)  # seconds an event stays replayable; 0: no limit
SSE_STREAM_TTL = env.int("SSE_STREAM_TTL", default=86_400)  # seconds a stream's log outlives its last event
SSE_HEARTBEAT = env.float("SSE_HEARTBEAT", default=15.0)  # seconds between comment lines
SSE_RETRY_MS = env.int("SSE_RETRY_MS", default=3_000)  # the retry: hint, randomized by +-20%
SSE_MAX_BUFFER = env.int("SSE_MAX_BUFFER", default=1_048_576)  # unsent bytes per client: then wait for it
SSE_SEND_TIMEOUT = env.float("SSE_SEND_TIMEOUT", default=10.0)  # seconds a client may read nothing, then closed
SSE_QUEUE_SIZE = env.int("SSE_QUEUE_SIZE", default=1_000)  # events a client may fall behind before it is closed
SSE_UNWATCH_DELAY = env.float("SSE_UNWATCH_DELAY", default=30.0)  # keep a stream's upstream after its last client
SSE_MAX_STREAMS = env.int("SSE_MAX_STREAMS", default=20_000)  # open streams per process; then 503
SSE_MAX_DATA_BYTES = env.int("SSE_MAX_DATA_BYTES", default=1_048_576)  # largest event data, as JSON
SSE_REDIS_SOCKET_TIMEOUT = env.float("SSE_REDIS_SOCKET_TIMEOUT", default=30.0)
# Seconds to connect to Redis (and get its handshake): how long a new stream waits for its 503 when Redis is down.
SSE_REDIS_CONNECT_TIMEOUT = env.float("SSE_REDIS_CONNECT_TIMEOUT", default=1.0)
SSE_REDIS_MAX_CONNECTIONS = env.int("SSE_REDIS_MAX_CONNECTIONS", default=50)
# The garbage collector's thresholds in a server process (sse/ops/collector.py); empty: Python's own.
SSE_GC_THRESHOLDS = env.list("SSE_GC_THRESHOLDS", default=["10000", "0", "2500"])
# Who may read which stream: a callable (request, stream) -> bool, see sse/security/auth.py.
# The default allows these fnmatch patterns to everyone and user.<id> to that user.
SSE_AUTHORIZE = env.str("SSE_AUTHORIZE", default="sse.security.auth.default_policy")
SSE_PUBLIC_STREAMS = env.list("SSE_PUBLIC_STREAMS", default=["notifications", "chat", "orders", "datastar"])
# Open non-public streams are authorized again this often (seconds; 0: only at logout and
# password change, which close them at once).
SSE_RECHECK_INTERVAL = env.float("SSE_RECHECK_INTERVAL", default=300.0)
# Prometheus metrics at /metrics/: 404 unless on; then only for these addresses
# (exact, or CIDR networks) and staff users. Behind nginx the address is the client's.
SSE_METRICS = env.bool("SSE_METRICS", default=False)
SSE_METRICS_ALLOWED_IPS = env.list("SSE_METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
SSE_MAX_STREAMS_PER_CONNECTION = env.int("SSE_MAX_STREAMS_PER_CONNECTION", default=16)  # /sse/?stream=a&stream=b
# Pages on these exact origins (https://app.example.com) may read streams with the user's
# cookies (EventSource withCredentials). Never "*": the system check sse.E002 refuses it.
SSE_CORS_ORIGINS = env.list("SSE_CORS_ORIGINS", default=[])
SSE_DEMO_PUBLISH = env.bool("SSE_DEMO_PUBLISH", default=DEBUG)  # the demo form; staff may always publish
{%- if cookiecutter.sse_mode == "channels" %}
SSE_FEEDS = ["sse.backends.channel_layer.LayerFeed"]  # group_send({"type": "sse.event"}) reaches clients too

# socket_timeout longer than channels-redis' 5 s blocking reads: redis-py 8's 5 s
# default times out idle layers.
_layer_options = {
    "socket_timeout": SSE_REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": SSE_REDIS_CONNECT_TIMEOUT,
    "max_connections": 100,
}
# The layer's own Redis, if not REDIS_URL's. channels-redis cannot use a Redis Cluster:
# with REDIS_CLUSTER_NODES the layer (plain group_send only; publish() goes through the
# cluster) needs this single Redis, and without it group_send reaches no SSE client
# (system check sse.W009).
CHANNEL_LAYER_REDIS_URL = env.str("CHANNEL_LAYER_REDIS_URL", default=None)
_layer_host = None
if CHANNEL_LAYER_REDIS_URL:
    _layer_host = {"address": CHANNEL_LAYER_REDIS_URL, **_layer_options}
elif REDIS_CLUSTER_NODES:
    SSE_FEEDS = []
elif REDIS_SENTINELS:
    _layer_host = {
        "sentinels": REDIS_SENTINELS,
        "master_name": REDIS_SENTINEL_MASTER,
        "sentinel_kwargs": {"socket_timeout": 5.0},
        **{k: v for k, v in REDIS_SENTINEL_OPTIONS.items() if v is not None},
        **_layer_options,
    }
elif REDIS_URL:
    _layer_host = {"address": REDIS_URL, **_layer_options}
if _layer_host is not None:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_layer_host], "group_expiry": env.int("CHANNELS_GROUP_EXPIRY", default=86_400)},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
{%- endif %}


def _one_line(record: logging.LogRecord) -> bool:
    # A SuspiciousOperation (a bad Host header, too many query fields...) is the client's
    # mistake: log one line, not a traceback. On the handler: a logger's own filter would
    # miss the records of its children (django.security.<name>).
    if record.name.startswith("django.security."):
        record.exc_info = record.exc_text = None
    return True


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        "one_line": {"()": "django.utils.log.CallbackFilter", "callback": _one_line},
        "mask_tokens": {"()": "sse.ops.logmask.MaskTokens"},  # runserver's request lines
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["one_line"]}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "sse": {"level": env.str("SSE_LOG_LEVEL", default="INFO"), "propagate": True},
        # One line per stream connect, disconnect and reset (sse/security/access.py); WARNING silences them.
        "sse.access": {"level": env.str("SSE_ACCESS_LOG_LEVEL", default="INFO"), "propagate": True},
        # Django's default config gives "django" a console handler of its own (DEBUG only), and
        # its records then reach ours through the root: every request line and warning printed
        # twice. Naming the logger here drops that handler; its records use the root's.
        "django": {"level": "INFO", "handlers": [], "propagate": True},
        "django.channels.server": {"filters": ["mask_tokens"]},
    },
}
