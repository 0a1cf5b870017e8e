"""Publish, subscribe and replay, over Redis or, with no ``REDIS_URL``, in memory.

Every event is appended to a capped log per stream (a Redis Stream, or a ring
buffer); the log entry id is the SSE id, so ids are unique, increasing, and
survive restarts. Live delivery is one upstream subscription per process and
stream, fanned out locally by the hub (``sse.hub``) to every open connection as
bytes encoded once per event.

This module has the interface and picks the backend: ``sse.redis_backend``, or
``sse.memory`` with no Redis configured.
"""

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

from django.core.signals import setting_changed

from sse.conf import setting
from sse.encoding import (
    RESET_EVENT,
    InvalidEvent,
    payload,
    validate_event_name,
    validate_stream,
)
from sse.hub import Feed, Hub

log = logging.getLogger("sse")

Entry = tuple[str, str, str]  # id, event name, data as sent (JSON text, or the text= payload)
REPLAY_PAGE = 500  # entries per Redis round trip, at most


class BrokerUnavailable(RuntimeError):
    """Redis could not be reached; the message says where (without the password)."""


class BrokerFull(BrokerUnavailable):
    """Redis is at ``maxmemory`` and refuses writes (``noeviction``): nothing was published."""


def prepare(stream: str, event: str, data: Any, text: str | None = None) -> tuple[str, str, str]:
    """Validate a publish call and serialize its data, before anything is written.

    The payload is ``data`` as JSON, or ``text`` as given (HTML, Datastar lines):
    from here on both are the same text, stored, replayed and encoded alike.
    """
    validate_stream(stream)
    validate_event_name(event)
    if event == RESET_EVENT:
        raise InvalidEvent(f"event name {RESET_EVENT!r} is reserved for replay resets")
    body = payload(data, text)
    limit = setting("SSE_MAX_DATA_BYTES", 1_048_576)
    if len(body.encode()) > limit:
        raise InvalidEvent(f"data is larger than SSE_MAX_DATA_BYTES ({limit} bytes)")
    return stream, event, body


class Broker:
    """The interface both backends implement."""

    def publish(self, stream: str, event: str, data: Any, text: str | None = None) -> str:
        """Log and deliver one event; its payload is ``data`` as JSON or ``text`` (see :func:`prepare`)."""
        raise NotImplementedError

    async def apublish(self, stream: str, event: str, data: Any, text: str | None = None) -> str:
        raise NotImplementedError

    async def areplay(self, stream: str, after: str, count: int) -> list[Entry] | None:
        """Up to ``count`` entries after ``after``; None when ``after`` is not in the log.

        An empty ``after`` means from the start of the log (a multi-stream client
        whose stream had no events yet when it connected).
        """
        raise NotImplementedError

    async def alast_id(self, stream: str) -> str | None:
        raise NotImplementedError

    async def arecent(self, stream: str, count: int) -> list[Entry]:
        """The newest ``count`` entries, oldest first: what a page shows before it goes live."""
        raise NotImplementedError

    async def pages(self, stream: str, after: str) -> AsyncIterator[list[Entry] | None]:
        """Every entry after ``after``, in order, in pages of about min(256 KB, ``SSE_MAX_BUFFER``).

        Yields None (and stops) when ``after``, or a later page's start, is no
        longer in the log. Small events come in few round trips, large ones
        without a memory spike.
        """
        # Redis can't limit a page by bytes, only by count, and sizes are unknown
        # until entries arrive: the first page is one entry (ten of 1 MiB were
        # 10 MiB held per replaying client, several times over: reply, text,
        # frames). Then a page holds as many of the largest entry seen so far as
        # fit the budget, at most twice the last count.
        budget = min(262_144, setting("SSE_MAX_BUFFER", 1_048_576) or 262_144)
        cursor, count, largest = after, 1, 1
        while True:
            entries = await self.areplay(stream, cursor, count)
            if entries is None:
                yield None
                return
            if entries:
                yield entries
            if len(entries) < count:
                return
            cursor = entries[-1][0]
            largest = max(largest, *(len(data) for _id, _event, data in entries))
            count = max(1, min(REPLAY_PAGE, count * 2, budget // largest))

    def feed(self, hub: Hub) -> Feed:
        raise NotImplementedError

    def publish_control(self, message: str) -> None:
        """Tell every process's hub ``message`` (sse.revocation), at most once, no log entry."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection publish() uses (when settings change in tests)."""

    async def aclose(self) -> None:
        """Close the connections of the running event loop."""


_broker: Broker | None = None
_broker_lock = threading.Lock()
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_broker() -> Broker:
    """The process's broker: Redis when ``REDIS_URL`` or ``REDIS_SENTINELS`` is set, else memory."""
    global _broker
    with _broker_lock:
        if _broker is None:
            url, sentinels = setting("REDIS_URL", None), setting("REDIS_SENTINELS", [])
            if url or sentinels:
                from sse.redis_backend import RedisBroker  # the backends build on this module

                _broker = RedisBroker(url, sentinels)
            else:
                from sse.memory import MemoryBroker

                _broker = MemoryBroker()
        return _broker


def get_hub() -> Hub:
    """The hub of the running event loop."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(get_broker())
    return hub


async def aclose() -> None:
    """Stop this event loop's hub and close its Redis connections (tests, shutdown)."""
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.aclose()
    if _broker is not None:
        await _broker.aclose()


# Settings the broker reads once, when it is made; the others are read when used.
BROKER_SETTINGS = {"SSE_KEY_PREFIX", "SSE_MAXLEN", "SSE_FEEDS", "SSE_REDIS_SOCKET_TIMEOUT", "SSE_REDIS_CONNECT_TIMEOUT"}


def _reset(*, setting: str, **kwargs: Any) -> None:
    """Tests change settings: start again with a broker made from the new ones."""
    global _broker
    if setting.startswith("REDIS_") or setting in BROKER_SETTINGS:
        with _broker_lock:
            if _broker is not None:
                _broker.close()
            _broker = None
        _hubs.clear()


setting_changed.connect(_reset)
