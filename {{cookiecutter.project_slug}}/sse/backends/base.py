"""The interface every backend implements, and what a backend may rely on.

A backend keeps a capped log per stream (its entry ids are the SSE ids) and
delivers live events to each process's hub through a :class:`Feed`. It hands
them to a :class:`Sink` (the hub implements it) and never imports the hub, a
transport or the metrics: those build on this module, not the other way round.
"""

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
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
# A reconnect storm can keep the event loop busy past Redis's connect timeout: a page read that
# fails is tried again (reads are idempotent) before the streams waiting for it end with an error.
REPLAY_RETRIES = (0.25, 0.5)


def size(entry: Entry) -> int:
    """What an entry counts against a byte budget: its event name and data, in UTF-8."""
    return len(entry[1].encode()) + len(entry[2].encode())


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

    async def areplay(self, stream: str, after: str, count: int, max_bytes: int = 0) -> list[Entry] | None:
        """Up to ``count`` entries after ``after``; None when ``after`` is not in the log.

        With ``max_bytes``, the page ends with the entry that brings the bytes of its
        event names and data (:func:`size`) to ``max_bytes`` or more; the first entry
        always comes. An empty ``after`` means from the start of the log (a multi-stream
        client whose stream had no events yet when it connected).
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
        longer in the log. Small events come in one round trip, large ones without
        a memory spike: a page holds one entry past the budget at most.
        """
        budget = min(262_144, setting("SSE_MAX_BUFFER", 1_048_576) or 262_144)
        cursor = after
        shared = self.__dict__.setdefault("_shared_reads", SharedReads())
        while True:
            read = functools.partial(self._page, stream, cursor, budget)
            for pause in (*REPLAY_RETRIES, None):
                try:
                    page = await shared.read((stream, cursor), read)
                    break
                except BrokerUnavailable:
                    if pause is None:
                        raise
                    await asyncio.sleep(pause)
            if page is None:
                yield None
                return
            entries, more = page
            if entries:
                yield entries
            if not more:
                return
            cursor = entries[-1][0]

    async def _page(self, stream: str, after: str, budget: int) -> tuple[list[Entry], bool] | None:
        """One page, and whether the log may go on past it: worked out once per shared read."""
        entries = await self.areplay(stream, after, REPLAY_PAGE, budget)
        if entries is None:
            return None
        # A page the budget ended may be followed by more; so may a full one.
        more = len(entries) >= REPLAY_PAGE or sum(map(size, entries)) >= budget
        return entries, more

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


class SharedReads:
    """Identical reads wanted at once share one round trip: the replay of a reconnect storm.

    A read that finds the same read running does not join it: that one may have
    started before the caller subscribed, and an event published in between would
    be in neither. It waits for the next one, which starts when the running one
    ends, after every caller that queued for it had asked. So 10,000 clients that
    come back with the same Last-Event-ID cost at most two round trips per page,
    not 10,000, and each still sees everything published before it asked. Callers
    share the result: entries are read, never changed.
    """

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _Batch]] = (
            weakref.WeakKeyDictionary()
        )

    async def read(self, key: Hashable, read: Callable[[], Awaitable[Any]]) -> Any:
        batches = self._loops.setdefault(asyncio.get_running_loop(), {})
        batch = batches.get(key)
        if batch is None:
            batch = batches[key] = _Batch(batches, key)
        # A caller that goes away (its client left) must not cancel what others wait for.
        return await asyncio.shield(batch.join(read))


class _Batch:
    """One key's read in flight, and the future of the next one."""

    __slots__ = ("batches", "key", "next", "next_read", "running")

    def __init__(self, batches: dict[Hashable, "_Batch"], key: Hashable) -> None:
        self.batches, self.key = batches, key
        self.running: asyncio.Future[Any] | None = None
        self.next: asyncio.Future[Any] | None = None
        self.next_read: Callable[[], Awaitable[Any]] | None = None

    def join(self, read: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        if self.running is None:
            self.running = self._start(read)
            return self.running
        if self.next is None:
            self.next = asyncio.get_running_loop().create_future()
            # Retrieved even if every caller has gone: no "never retrieved" log.
            self.next.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.next_read = read
        return self.next

    def _start(self, read: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(read())
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled():
            task.exception()  # each caller gets it from its own await; retrieved here too
        waiting, read = self.next, self.next_read
        self.next = self.next_read = None
        if waiting is None or read is None:
            self.running = None
            self.batches.pop(self.key, None)
            return
        self.running = self._start(read)
        self.running.add_done_callback(functools.partial(_settle, waiting))


def _settle(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


def backstop(timeout: float) -> float:
    """The wall-clock limit of a :func:`within` wait of ``timeout``: ten times it, at least 10 s."""
    return max(10 * timeout, 10.0)


async def within(awaitable: Awaitable[Any], timeout: float) -> Any:  # noqa: ASYNC109  (not asyncio.timeout: see below)
    """``awaitable``'s result, or TimeoutError once ``timeout`` seconds of the loop's free time passed.

    A timeout measured on a busy loop blames the server for the loop's own delay: a
    burst of thousands of new streams can keep a Daphne process's loop from noticing
    Redis's answer for seconds. The budget is spent in ticks of 0.1 s, and only by ticks
    the loop came back for on time: a late tick was the loop's own work, not Redis's
    silence. On an idle loop this is a plain timeout; a loop never on time still gives
    up after ten times the timeout (at least 10 s).
    """
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    budget, last = timeout, loop.time()
    give_up = last + backstop(timeout)
    try:
        while True:
            tick = min(0.1, max(budget, 0.01))
            done, _ = await asyncio.wait({task}, timeout=tick)
            if done:
                return task.result()
            now = loop.time()
            if now - last <= 1.5 * tick:
                budget -= now - last
            last = now
            if budget <= 0 or now >= give_up:
                raise TimeoutError
    finally:
        if not task.done():
            task.cancel()
