"""System checks for the SSE settings (``manage.py check``, and at startup via config.asgi)."""

import logging
import re
from fnmatch import fnmatchcase
from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from sse.backends import Broker
from sse.conf import setting

log = logging.getLogger("sse")

ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


@checks.register("sse")
def cors_origins(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    origins = setting("SSE_CORS_ORIGINS", [])
    if isinstance(origins, str):
        return [checks.Error("SSE_CORS_ORIGINS must be a list of origins, not a string", id="sse.E001")]
    errors = []
    for origin in origins:
        if "*" in origin:
            errors.append(
                checks.Error(
                    f"SSE_CORS_ORIGINS contains {origin!r}: list exact origins. Streams are sent with "
                    "credentials, and a wildcard would let any site read a signed-in user's streams.",
                    id="sse.E002",
                )
            )
        elif not ORIGIN.fullmatch(origin):
            errors.append(
                checks.Error(
                    f"SSE_CORS_ORIGINS contains {origin!r}, which is not an origin: write "
                    "scheme://host[:port], e.g. https://app.example.com (no path, no trailing slash)",
                    id="sse.E003",
                )
            )
    return errors


@checks.register("sse")
def authorize_policy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # Imported here, not at the first stream: a typo would make every stream a 500.
    path = setting("SSE_AUTHORIZE", "sse.security.auth.default_policy")
    try:
        policy = import_string(path)
    except Exception as exc:  # ImportError, or whatever the policy's module raises on import
        return [checks.Error(f"SSE_AUTHORIZE = {path!r} cannot be imported: {exc}", id="sse.E010")]
    if not callable(policy):
        return [
            checks.Error(
                f"SSE_AUTHORIZE = {path!r} is not a callable (request, stream) -> bool",
                id="sse.E011",
            )
        ]
    return []


@checks.register("sse")
def broker_backend(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # Imported here, not at the first publish: a typo would make every publish and stream fail.
    path = setting("SSE_BROKER", None)
    if not path:
        return []  # chosen from REDIS_CLUSTER_NODES / REDIS_URL / REDIS_SENTINELS
    try:
        backend = import_string(path)
    except Exception as exc:
        return [checks.Error(f"SSE_BROKER = {path!r} cannot be imported: {exc}", id="sse.E012")]
    if not (isinstance(backend, type) and issubclass(backend, Broker)):
        return [checks.Error(f"SSE_BROKER = {path!r} is not a subclass of sse.backends.Broker", id="sse.E013")]
    return []


@checks.register("sse")
def retention_budget(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A stream's log holds at most SSE_MAX_STREAM_BYTES, unless one event alone is larger."""
    budget = setting("SSE_MAX_STREAM_BYTES", 16_777_216)
    largest = setting("SSE_MAX_DATA_BYTES", 1_048_576)
    if budget > 0 and largest > budget:
        return [
            checks.Warning(
                f"SSE_MAX_DATA_BYTES ({largest}) is larger than SSE_MAX_STREAM_BYTES ({budget}): the newest "
                "event always stays in its stream's log, so one stream may hold SSE_MAX_DATA_BYTES, over the "
                "budget, and nothing before such an event can be replayed.",
                hint="Raise SSE_MAX_STREAM_BYTES to several times SSE_MAX_DATA_BYTES, or lower SSE_MAX_DATA_BYTES.",
                id="sse.W001",
            )
        ]
    return []


# What private stream names look like, for user models with integer, text or UUID keys.
PRIVATE_SAMPLES = ["user.1", "user.42", "user.alice", "user.0f8fad5b-d9cb-469f-a165-70867728950e"]


@checks.register("sse")
def public_patterns(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    patterns = setting("SSE_PUBLIC_STREAMS", [])
    if isinstance(patterns, str):
        patterns = [patterns]
    matching = [p for p in patterns if any(fnmatchcase(name, p) for name in PRIVATE_SAMPLES)]
    if not matching:
        return []
    return [
        checks.Warning(
            f"SSE_PUBLIC_STREAMS {matching} match private user.<id> streams. Those stay readable by their "
            "user only: the pattern does not make them public.",
            hint="Name the public streams (e.g. notifications, chat) or use a pattern outside user.*",
            id="sse.W007",
        )
    ]


@checks.register("sse", deploy=True)
def dotenv_in_production(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A development .env copied to a server fills in whatever the environment lacks."""
    names = setting("DOTENV_VARIABLES", [])
    if setting("DEBUG", False) or not names:
        return []
    return [
        checks.Warning(
            f"DEBUG is off, yet .env set {', '.join(names)}: in production set every variable in the "
            "environment (systemd's EnvironmentFile) and remove .env from the project folder",
            id="sse.W008",
        )
    ]


@checks.register("sse")
def channel_layer_with_cluster(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """channels-redis cannot use a Redis Cluster: the layer needs a single Redis of its own."""
    if not apps.is_installed("channels") or not setting("REDIS_CLUSTER_NODES", []):
        return []
    if setting("CHANNEL_LAYER_REDIS_URL", None):
        return []
    return [
        checks.Warning(
            "REDIS_CLUSTER_NODES is set and CHANNEL_LAYER_REDIS_URL is not: channels-redis cannot use a Redis "
            "Cluster, so plain channel_layer.group_send() messages reach no SSE client (publish() is not affected).",
            hint="Set CHANNEL_LAYER_REDIS_URL to a single Redis for the channel layer, or publish with sse.publish().",
            id="sse.W009",
        )
    ]


# Warnings said at startup too (Daphne runs no system checks): a feature that is off.
STARTUP_WARNINGS = {"sse.W009"}


def fail_fast() -> None:
    """Refuse to serve with a broken SSE configuration: Daphne runs no system checks."""
    messages = checks.run_checks(tags=["sse"])
    errors = [message for message in messages if message.is_serious()]
    if errors:
        raise ImproperlyConfigured("; ".join(f"{e.id}: {e.msg}" for e in errors))
    for message in messages:
        if message.id in STARTUP_WARNINGS:
            log.warning("sse: %s: %s %s", message.id, message.msg, message.hint or "")
