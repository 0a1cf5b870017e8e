"""The fan-out of one event loop: every open stream of this process, fed once per event.

Live events reach the hub once per process and stream (a Redis subscription,
the channel layer, or memory); the hub encodes each once and hands the bytes to
every :class:`Subscription` of that stream, which queues them or, on Daphne's
fast path, writes them to the client at once.
"""

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from sse.backends import Broker, Feed, get_broker, resets_broker
from sse.backends import aclose as aclose_broker
from sse.conf import setting
from sse.encoding import (
    EventKey,
    encode,
    format_id,
    parse_id,
)
from sse.ops import metrics

log = logging.getLogger("sse")

ZERO: EventKey = (0, 0, 0)
PING = encode(comment="ping")


class Subscription:
    """One connection's queue of ``(key, frame)``, and whether it has been closed.

    Bounded in events (``SSE_QUEUE_SIZE``) and bytes (``SSE_MAX_BUFFER``): a client
    further behind than that is closed instead of buffered without end. It
    reconnects with its Last-Event-ID and replay fills the gap.

    With a ``write`` (set by the connection when its queue is empty), frames skip
    the queue and go straight to the client, until it falls behind.

    A list and one future rather than an ``asyncio.Queue``: a queue holds four
    deques (about 2.5 KB), and there is one of these per open stream.
    """

    __slots__ = (
        "__weakref__",
        "bytes",
        "dropped",
        "items",
        "max_bytes",
        "max_items",
        "pinged",
        "sent_bytes",
        "sent_events",
        "stream",
        "waiter",
        "write",
    )

    def __init__(self, stream: str, max_items: int, max_bytes: int) -> None:
        self.stream = stream
        self.items: list[tuple[EventKey, bytes]] = []
        self.max_items = max_items or float("inf")
        self.max_bytes = max_bytes or float("inf")
        self.bytes = 0
        self.dropped = False
        self.pinged = False
        self.sent_events = self.sent_bytes = 0  # written on the fast path (sse.security.access adds the rest)
        self.waiter: asyncio.Future[None] | None = None
        self.write: Callable[[bytes], bool] | None = None

    def push(self, item: tuple[EventKey, bytes]) -> bool:
        """Queue a frame, or write it at once on the fast path (then True)."""
        if self.dropped:
            return False
        if self.write is not None:
            if not self.write(item[1]):
                self.write = None  # behind: what follows waits in the queue, with its bounds
            self.sent_events += 1
            self.sent_bytes += len(item[1])
            return True
        size = len(item[1])
        # One frame always fits, however large: only a backlog closes the client.
        if len(self.items) >= self.max_items or (self.bytes and self.bytes + size > self.max_bytes):
            log.info(
                "sse: closing a slow client of %s (%d events, %d bytes queued)",
                self.stream,
                len(self.items),
                self.bytes,
            )
            self.close()  # counted once per connection, where it ends (sse.security.access)
            return False
        self.bytes += size
        self.items.append(item)
        self._wake()
        return False

    def ping(self) -> int:
        """A heartbeat: written at once on the fast path (returns the bytes), else the reader sends one."""
        if self.write is not None:
            if not self.write(PING):
                self.write = None
            self.sent_bytes += len(PING)
            return len(PING)
        if not self.dropped:
            self.pinged = True
            self._wake()
        return 0

    async def wait(self) -> None:
        """Until something is queued, a heartbeat is due, or the subscription is closed."""
        if self.items or self.dropped or self.pinged:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> list[tuple[EventKey, bytes]]:
        """Everything queued, oldest first."""
        items, self.items, self.bytes = self.items, [], 0
        return items

    def close(self) -> None:
        """End the connection after what it has been sent; the client reconnects."""
        self.dropped = True
        self.items, self.bytes = [], 0
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Hub:
    """The fan-out of one event loop (one per Daphne process): the backends' ``Sink``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = asyncio.get_running_loop()
        self.subscribers: dict[str, set[Subscription]] = {}
        self.last: dict[str, EventKey] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # One timer for every stream's heartbeat, not one per stream.
        self._heartbeat: asyncio.TimerHandle | None = None
        self.open = 0  # subscriptions (open streams) in this process
        # Who hears control messages (sse.security.revocation registers itself here).
        self.on_control: list[Callable[[str], None]] = []
        extra = [import_string(path)(self) for path in setting("SSE_FEEDS", [])]
        self.feeds: list[Feed] = [broker.feed(self), *extra]

    async def subscribe(self, stream: str) -> Subscription:
        return await self.ready(self.add(stream))

    def add(self, stream: str) -> Subscription:
        """A subscription, registered and counted in ``open`` at once, before any await.

        Counted before awaiting, a limit on ``open`` holds under a burst of
        connects: each one sees the others that passed the check before it.
        """
        sub = Subscription(stream, setting("SSE_QUEUE_SIZE", 1000), setting("SSE_MAX_BUFFER", 1_048_576))
        # Registered before the feeds are watched: the first live event may come
        # while we wait, and replay runs after this returns.
        self.subscribers.setdefault(stream, set()).add(sub)
        self.open += 1
        if self._heartbeat is None:
            self._beat(first=True)
        if handle := self._idle.pop(stream, None):
            handle.cancel()
        return sub

    async def ready(self, sub: Subscription) -> Subscription:
        """Once live events of ``sub``'s stream reach this process (unsubscribed on failure)."""
        stream = sub.stream
        ready = self._ready.get(stream)
        if ready is not None and ready.done() and not ready.cancelled() and ready.exception() is None:
            return sub  # the stream is live here already: no future to wait on
        try:
            if ready is None:
                ready = self._ready[stream] = asyncio.ensure_future(self._start(stream))
            await asyncio.shield(ready)
        except BaseException:
            self.unsubscribe(sub)
            raise
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscribers.get(sub.stream)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self.open -= 1
        if not subs and sub.stream not in self._idle:
            # Keep the upstream subscription a little while: clients that reconnect
            # at once (deploys, network blips) then cost no SUBSCRIBE churn.
            delay = setting("SSE_UNWATCH_DELAY", 30.0)
            self._idle[sub.stream] = self.loop.call_later(delay, self._stop_if_idle, sub.stream)

    def deliver(self, stream: str, id: str, event: str, data: str) -> None:
        """A logged event: encode it once, then hand it to every local client."""
        key = parse_id(id)
        if key <= self.last.get(stream, ZERO):
            return  # already delivered (catch-up after a reconnect overlaps)
        self.last[stream] = key
        self._fanout(stream, key, encode(id=id, event=event, data=data))

    def deliver_unlogged(self, stream: str, event: str, data: str) -> None:
        """A live-only event (no log entry): its id extends the last logged id."""
        ms, seq, extra = self.last.get(stream, ZERO)
        key = (ms, seq, extra + 1)
        self.last[stream] = key
        self._fanout(stream, key, encode(id=format_id(key), event=event, data=data))

    def control(self, message: str) -> None:
        """A control message from the broker (any process, this one included)."""
        for handler in list(self.on_control):
            handler(message)

    def close_stream(self, stream: str) -> None:
        """End every local connection of ``stream``; each client reconnects and replays."""
        for sub in tuple(self.subscribers.get(stream, ())):
            sub.close()

    def _fanout(self, stream: str, key: EventKey, frame: bytes) -> None:
        metrics.FANNED_OUT.inc()
        written = 0
        for sub in tuple(self.subscribers.get(stream, ())):
            written += sub.push((key, frame))
        if written:  # the fast path's share; sse.security.access counts what the streams yield
            metrics.EVENTS_SENT.inc(written)
            metrics.BYTES_SENT.inc(written * len(frame))

    def _beat(self, first: bool = False) -> None:
        if not first:
            written = 0
            for subs in self.subscribers.values():
                for sub in subs:
                    written += sub.ping()
            metrics.BYTES_SENT.inc(written)  # the hub wrote these: no stream yields them
        self._heartbeat = self.loop.call_later(setting("SSE_HEARTBEAT", 15.0), self._beat)

    async def _start(self, stream: str) -> None:
        try:
            for feed in self.feeds:
                await feed.watch(stream)
            last = await self.broker.alast_id(stream)
        except BaseException:
            self._ready.pop(stream, None)
            raise
        if last is not None:
            self.last[stream] = max(self.last.get(stream, ZERO), parse_id(last))

    def _stop_if_idle(self, stream: str) -> None:
        self._idle.pop(stream, None)
        if self.subscribers.get(stream) or stream not in self._ready:
            return
        self.subscribers.pop(stream, None)
        self.last.pop(stream, None)
        self._ready.pop(stream)
        self.spawn(self._stop(stream))

    async def _stop(self, stream: str) -> None:
        for feed in self.feeds:
            try:
                await feed.unwatch(stream)
            except Exception:
                log.warning("sse: could not unwatch %s", stream, exc_info=True)

    async def aclose(self) -> None:
        for handle in [*self._idle.values(), self._heartbeat]:
            if handle is not None:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on this hub's loop: now when called from it, else as soon as the loop can.

        Django closes an async view's response from a worker thread (its resource
        closers run in ``sync_to_async``), and nothing of the hub is thread-safe.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn)

    def spawn(self, coro: Any) -> "asyncio.Task[None]":
        """Start a background task and keep a reference, so it is not collected."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sse: background task failed", exc_info=task.exception())


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


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
    await aclose_broker()


def open_streams() -> int:
    """Streams open in this process, over every event loop's hub."""
    return sum(hub.open for hub in list(_hubs.values()))


metrics.OPEN_STREAMS.read = open_streams


def _reset(*, setting: str, **kwargs: Any) -> None:
    """Tests change settings: a new broker needs new hubs."""
    if resets_broker(setting):
        _hubs.clear()


setting_changed.connect(_reset)
