"""The event broker of this process, chosen from the settings.

``SSE_BROKER`` names a backend class by dotted path. Unset, the environment
decides: Redis Cluster when ``REDIS_CLUSTER_NODES`` is set, Redis when
``REDIS_URL`` or ``REDIS_SENTINELS`` is, else memory (one process). This module
imports only :mod:`sse.backends.base`: the backends build on it, so none of them
can import back.
"""

import threading
from typing import Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from sse.backends.base import Broker, BrokerFull, BrokerUnavailable, Entry, Feed, Sink, prepare
from sse.conf import setting

__all__ = [
    "Broker",
    "BrokerFull",
    "BrokerUnavailable",
    "Entry",
    "Feed",
    "Sink",
    "aclose",
    "backend_path",
    "get_broker",
    "prepare",
    "resets_broker",
]

MEMORY = "sse.backends.memory.MemoryBroker"
REDIS = "sse.backends.redis.RedisBroker"
CLUSTER = "sse.backends.cluster.ClusterBroker"

# Settings a broker reads once, when it is made; the others are read when used.
BROKER_SETTINGS = {
    "SSE_BROKER",
    "SSE_KEY_PREFIX",
    "SSE_MAXLEN",
    "SSE_FEEDS",
    "SSE_REDIS_SOCKET_TIMEOUT",
    "SSE_REDIS_CONNECT_TIMEOUT",
}

_broker: Broker | None = None
_broker_lock = threading.Lock()


def backend_path() -> str:
    """The dotted path of the backend class the settings choose."""
    if path := setting("SSE_BROKER", None):
        return path
    if setting("REDIS_CLUSTER_NODES", []):
        return CLUSTER
    return REDIS if setting("REDIS_URL", None) or setting("REDIS_SENTINELS", []) else MEMORY


def get_broker() -> Broker:
    """The process's broker, made on first use."""
    global _broker
    with _broker_lock:
        if _broker is None:
            _broker = import_string(backend_path())()
        return _broker


async def aclose() -> None:
    """Close the broker's connections of the running event loop, if it was made."""
    if _broker is not None:
        await _broker.aclose()


def resets_broker(name: str) -> bool:
    """Whether changing setting ``name`` makes a new broker (tests change settings)."""
    return name.startswith("REDIS_") or name in BROKER_SETTINGS


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _broker
    if resets_broker(setting):
        with _broker_lock:
            if _broker is not None:
                _broker.close()
            _broker = None


setting_changed.connect(_reset)
