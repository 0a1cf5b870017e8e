"""The interface every backend implements, and what a backend may rely on.

A backend keeps a capped log per stream (its entry ids are the SSE ids) and
delivers live events to each process's hub through a :class:`Feed`. It hands
them to a :class:`Sink` (the hub implements it) and never imports the hub, a
transport or the metrics: those build on this module, not the other way round.
"""

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

from sse.conf import setting
from sse.encoding import (
    RESET_EVENT,
    EventKey,
    InvalidEvent,
    payload,
    validate_event_name,
    validate_stream,
)

Entry = tuple[str, str, str]  # id, event name, data as sent (JSON text, or the text= payload)
REPLAY_PAGE = 500  # entries per Redis round trip, at most


class BrokerUnavailable(RuntimeError):
    """Redis could not be reached; the message says where (without the password)."""


class BrokerFull(BrokerUnavailable):
    """Redis is at ``maxmemory`` and refuses writes (``noeviction``): nothing was published."""


class Sink(Protocol):
    """What a feed hands live events to: the hub of one event loop (``sse.hub.Hub``)."""

    loop: asyncio.AbstractEventLoop
    last: dict[str, EventKey]  # the newest id delivered per stream: where a catch-up starts

    def deliver(self, stream: str, id: str, event: str, data: str) -> None:
        """A logged event, in id order; older or repeated ids are ignored."""

    def deliver_unlogged(self, stream: str, event: str, data: str) -> None:
        """A live-only event (no log entry, no replay): channels' ``group_send``."""

    def control(self, message: str) -> None:
        """A control message sent with :meth:`Broker.publish_control` by any process."""

    def close_stream(self, stream: str) -> None:
        """End every local connection of ``stream``: they reconnect and replay (or get a reset)."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        """Run a background task on the hub's loop, kept referenced until it ends."""
        ...


class Feed(Protocol):
    """A live source of events for a hub, watched per stream."""

    async def watch(self, stream: str) -> None: ...

    async def unwatch(self, stream: str) -> None: ...


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
    """The interface every backend implements.

    A backend is made with no arguments (``SSE_BROKER`` names its class) and reads
    its settings itself; the process keeps one (``sse.backends.get_broker()``).
    """

    name = "custom"  # what /health/ reports as "broker"

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

    def feed(self, hub: Sink) -> Feed:
        """The feed that brings this backend's live events to ``hub``, one per hub."""
        raise NotImplementedError

    async def ahealth(self) -> str | None:
        """``"ok"`` or ``"unavailable"`` for /health/; None when there is nothing to reach."""
        return None

    def publish_control(self, message: str) -> None:
        """Tell every process's hub ``message`` (sse.security.revocation), at most once, no log entry."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection publish() uses (when settings change in tests)."""

    async def aclose(self) -> None:
        """Close the connections of the running event loop."""
