"""Publish, subscribe and replay, over Redis or, with no ``REDIS_URL``, in memory.

Every event is appended to a capped log per stream (a Redis Stream, or a ring
buffer); the log entry id is the SSE id, so ids are unique, increasing, and
survive restarts. Live delivery is one upstream subscription per process and
stream, fanned out locally by the :class:`Hub` to every open connection as
bytes encoded once per event.

Ordering: one Lua script does the XADD and the PUBLISH, so Redis publishes in
log order even with concurrent publishers, and every client sees one order.
"""

import asyncio
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel
import redis.sentinel
from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string
from redis.backoff import NoBackoff
from redis.retry import Retry

from sse import metrics
from sse.encoding import (
    RESET_EVENT,
    EventKey,
    InvalidEvent,
    dumps,
    encode,
    format_id,
    parse_id,
    validate_event_name,
    validate_stream,
)

log = logging.getLogger("sse")

Entry = tuple[str, str, str]  # id, event name, data as JSON text
REPLAY_PAGE = 500  # entries per Redis round trip, at most
SENTINEL_KWARGS = {"socket_timeout": 5.0}  # how long to wait for a Sentinel to answer
ZERO: EventKey = (0, 0, 0)
PING = encode(comment="ping")

# ARGV: maxlen, event, data, key TTL (s), max age (ms). Age trimming is exact, so that
# an entry past SSE_MAX_AGE is never replayed; length trimming removes whole nodes.
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2], 'data', ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if tonumber(ARGV[5]) > 0 then
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', ms - tonumber(ARGV[5])))
end
redis.call('PUBLISH', KEYS[1], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


class BrokerUnavailable(RuntimeError):
    """Redis could not be reached; the message says where (without the password)."""


def setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def prepare(stream: str, event: str, data: Any) -> tuple[str, str, str]:
    """Validate a publish call and serialize its data, before anything is written."""
    validate_stream(stream)
    validate_event_name(event)
    if event == RESET_EVENT:
        raise InvalidEvent(f"event name {RESET_EVENT!r} is reserved for replay resets")
    payload = dumps(data)
    limit = setting("SSE_MAX_DATA_BYTES", 1_048_576)
    if len(payload.encode()) > limit:
        raise InvalidEvent(f"data is larger than SSE_MAX_DATA_BYTES ({limit} bytes)")
    return stream, event, payload


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
        self.sent_events = self.sent_bytes = 0  # written on the fast path (sse.access adds the rest)
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
            metrics.SLOW_CLIENTS.inc()
            self.close()
            return False
        self.bytes += size
        self.items.append(item)
        self._wake()
        return False

    def ping(self) -> None:
        """A heartbeat: written at once on the fast path, else the reader sends one."""
        if self.write is not None:
            if not self.write(PING):
                self.write = None
            self.sent_bytes += len(PING)
        elif not self.dropped:
            self.pinged = True
            self._wake()

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


class Feed(Protocol):
    """A live source of events for a hub, watched per stream."""

    async def watch(self, stream: str) -> None: ...

    async def unwatch(self, stream: str) -> None: ...


class Hub:
    """The fan-out of one event loop (one per Daphne process)."""

    def __init__(self, broker: "Broker") -> None:
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
        extra = [import_string(path)(self) for path in setting("SSE_FEEDS", [])]
        self.feeds: list[Feed] = [broker.feed(self), *extra]

    async def subscribe(self, stream: str) -> Subscription:
        sub = Subscription(stream, setting("SSE_QUEUE_SIZE", 1000), setting("SSE_MAX_BUFFER", 1_048_576))
        # Registered before the feeds are watched: the first live event may come
        # while we wait, and replay runs after this returns.
        self.subscribers.setdefault(stream, set()).add(sub)
        self.open += 1
        if self._heartbeat is None:
            self._beat(first=True)
        if handle := self._idle.pop(stream, None):
            handle.cancel()
        try:
            ready = self._ready.get(stream)
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

    def _fanout(self, stream: str, key: EventKey, frame: bytes) -> None:
        metrics.FANNED_OUT.inc()
        written = 0
        for sub in tuple(self.subscribers.get(stream, ())):
            written += sub.push((key, frame))
        if written:  # the fast path's share; sse.access counts what the streams yield
            metrics.EVENTS_SENT.inc(written)
            metrics.BYTES_SENT.inc(written * len(frame))

    def _beat(self, first: bool = False) -> None:
        if not first:
            for subs in self.subscribers.values():
                for sub in subs:
                    sub.ping()
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


class NullFeed:
    """Memory mode: publish() hands events to the hubs directly."""

    def __init__(self, hub: Hub) -> None:
        pass

    async def watch(self, stream: str) -> None:
        pass

    async def unwatch(self, stream: str) -> None:
        pass


class Broker:
    """The interface both backends implement."""

    def publish(self, stream: str, event: str, data: Any) -> str:
        raise NotImplementedError

    async def apublish(self, stream: str, event: str, data: Any) -> str:
        raise NotImplementedError

    async def areplay(self, stream: str, after: str, count: int) -> list[Entry] | None:
        """Up to ``count`` entries after ``after``; None when ``after`` is not in the log.

        An empty ``after`` means from the start of the log (a multi-stream client
        whose stream had no events yet when it connected).
        """
        raise NotImplementedError

    async def alast_id(self, stream: str) -> str | None:
        raise NotImplementedError

    async def pages(self, stream: str, after: str) -> AsyncIterator[list[Entry] | None]:
        """Every entry after ``after``, in order, in pages of about 256 KB.

        Yields None (and stops) when ``after``, or a later page's start, is no
        longer in the log. Small events come in few round trips, large ones
        without a memory spike.
        """
        cursor, count = after, 10
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
            size = sum(len(data) for _id, _event, data in entries)
            count = max(1, min(REPLAY_PAGE, count * 262_144 // max(size, 1)))

    def feed(self, hub: Hub) -> Feed:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the connections of the running event loop."""


class MemoryBroker(Broker):
    """One process, no Redis: a ring buffer per stream, ids in Redis' format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, deque[Entry]] = {}
        self._last = (0, 0)
        self.hubs: weakref.WeakSet[Hub] = weakref.WeakSet()

    def publish(self, stream: str, event: str, data: Any) -> str:
        stream, event, payload = prepare(stream, event, data)
        with self._lock:
            ms = max(int(time.time() * 1000), self._last[0])
            self._last = (ms, self._last[1] + 1 if ms == self._last[0] else 0)
            id = f"{self._last[0]}-{self._last[1]}"
            entries = self._logs.setdefault(stream, deque(maxlen=setting("SSE_MAXLEN", 10_000)))
            entries.append((id, event, payload))
            max_age_ms = setting("SSE_MAX_AGE", 86_400) * 1000
            while max_age_ms > 0 and parse_id(entries[0][0])[0] < ms - max_age_ms:
                entries.popleft()
            # Always through the loop's queue, under the lock: deliveries keep id order
            # whichever thread publishes.
            for hub in list(self.hubs):
                try:
                    hub.loop.call_soon_threadsafe(hub.deliver, stream, id, event, payload)
                except RuntimeError:  # that loop is closed
                    self.hubs.discard(hub)
        return id

    async def apublish(self, stream: str, event: str, data: Any) -> str:
        return self.publish(stream, event, data)

    async def areplay(self, stream: str, after: str, count: int) -> list[Entry] | None:
        if not after:
            with self._lock:
                return list(itertools.islice(self._logs.get(stream, ()), count))
        ms, seq, _ = parse_id(after)
        base = f"{ms}-{seq}"
        with self._lock:  # no copy of the whole log for each page
            entries = self._logs.get(stream, ())
            for index, (id, _event, _data) in enumerate(entries):
                if id == base:
                    return list(itertools.islice(entries, index + 1, index + 1 + count))
        return None

    async def alast_id(self, stream: str) -> str | None:
        with self._lock:
            entries = self._logs.get(stream)
            return entries[-1][0] if entries else None

    def feed(self, hub: Hub) -> Feed:
        self.hubs.add(hub)
        return NullFeed(hub)


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBroker(Broker):
    """Redis Streams for the log, pub/sub (fed by the same Lua script) for live events."""

    def __init__(self, url: str | None, sentinels: list[tuple[str, int]] | None = None) -> None:
        self.url = url
        self.sentinels = sentinels or []
        self.master = setting("REDIS_SENTINEL_MASTER", "mymaster")
        self.prefix = setting("SSE_KEY_PREFIX", "sse")
        # Longer than every blocking read in play (the pub/sub poll, channels-redis'
        # 5 s BZPOPMIN): redis-py 8's default would time out idle connections.
        self.options = {
            "socket_timeout": setting("SSE_REDIS_SOCKET_TIMEOUT", 30.0),
            "socket_connect_timeout": setting("SSE_REDIS_CONNECT_TIMEOUT", 5.0),
            "health_check_interval": 15,
        }
        self._sync: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = weakref.WeakKeyDictionary()

    @property
    def where(self) -> str:
        if self.sentinels:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"Redis (Sentinel master {self.master!r} via {hosts})"
        return f"Redis at {redacted(self.url or '')}"

    def _sentinel_options(self, **extra: Any) -> dict[str, Any]:
        options = {k: v for k, v in setting("REDIS_SENTINEL_OPTIONS", {}).items() if v is not None}
        return {**self.options, **options, **extra}

    def key(self, stream: str) -> str:
        return f"{self.prefix}:{stream}"

    def client(self) -> redis.Redis:
        with self._sync_lock:
            if self._sync is None:
                if self.sentinels:
                    sentinel = redis.sentinel.Sentinel(self.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
                    self._sync = sentinel.master_for(self.master, **self._sentinel_options())
                else:
                    self._sync = redis.Redis.from_url(self.url, **self.options)
            return self._sync

    def aclient(self) -> aredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            # Blocking pool: a burst of reconnecting clients waits for a connection
            # instead of failing with MaxConnectionsError.
            size = setting("SSE_REDIS_MAX_CONNECTIONS", 50)
            client = self._async[loop] = self.new_aclient(max_connections=size, timeout=10)
        return client

    def new_aclient(self, **extra: Any) -> aredis.Redis:
        if self.sentinels:
            sentinel = aredis.sentinel.Sentinel(self.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
            extra.pop("timeout", None)  # the Sentinel pool does not block
            return sentinel.master_for(self.master, **self._sentinel_options(**extra))
        if "max_connections" in extra:
            pool = aredis.BlockingConnectionPool.from_url(self.url, **self.options, **extra)
            return aredis.Redis(connection_pool=pool)
        return aredis.Redis.from_url(self.url, **self.options, **extra)

    async def aclose(self) -> None:
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    def unavailable(self, exc: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"{self.where} is unavailable: {exc}")

    def _args(self, stream: str, event: str, data: Any) -> tuple[list[str], list[Any]]:
        stream, event, payload = prepare(stream, event, data)
        ttl = setting("SSE_STREAM_TTL", 86_400)
        max_age_ms = int(setting("SSE_MAX_AGE", 86_400) * 1000)
        return [self.key(stream)], [setting("SSE_MAXLEN", 10_000), event, payload, ttl, max_age_ms]

    def publish(self, stream: str, event: str, data: Any) -> str:
        keys, args = self._args(stream, event, data)
        client = self.client()
        try:
            return client.register_script(PUBLISH_SCRIPT)(keys, args).decode()
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None

    async def apublish(self, stream: str, event: str, data: Any) -> str:
        keys, args = self._args(stream, event, data)
        client = self.aclient()
        try:
            return (await client.register_script(PUBLISH_SCRIPT)(keys, args)).decode()
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None

    async def areplay(self, stream: str, after: str, count: int) -> list[Entry] | None:
        if not after:
            try:
                rows = await self.aclient().xrange(self.key(stream), min="-", count=count)
            except redis.RedisError as exc:
                raise self.unavailable(exc) from None
            return [self._entry(row) for row in rows]
        ms, seq, _ = parse_id(after)
        base = f"{ms}-{seq}"
        try:
            # Inclusive range: the first entry proves `after` is still in the log.
            rows = await self.aclient().xrange(self.key(stream), min=base, count=count + 1)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None
        if not rows or rows[0][0].decode() != base:
            return None
        return [self._entry(row) for row in rows[1:]]

    async def alast_id(self, stream: str) -> str | None:
        try:
            rows = await self.aclient().xrevrange(self.key(stream), count=1)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from None
        return rows[0][0].decode() if rows else None

    @staticmethod
    def _entry(row: Any) -> Entry:
        id, fields = row
        return id.decode(), fields[b"event"].decode(), fields[b"data"].decode()

    def feed(self, hub: Hub) -> Feed:
        return RedisFeed(self, hub)


class RedisFeed:
    """One pub/sub connection per process, with catch-up from the log after outages."""

    def __init__(self, broker: RedisBroker, hub: Hub) -> None:
        self.broker = broker
        self.hub = hub
        self.streams: dict[bytes, str] = {}
        self.pubsub: aredis.client.PubSub | None = None
        self.confirmed: dict[bytes, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0

    async def watch(self, stream: str) -> None:
        channel = self.broker.key(stream).encode()
        async with self.lock:  # SUBSCRIBE and UNSUBSCRIBE leave in call order
            self.streams[channel] = stream
            if self.task is None:
                self.task = self.hub.spawn(self.run())
            confirmed = self.confirmed[channel] = self.hub.loop.create_future()
            if self.pubsub is not None:
                try:
                    await self.pubsub.subscribe(channel)
                except redis.RedisError:
                    pass  # run() notices, reconnects and subscribes again
        # Until Redis confirms, a PUBLISH could still miss us; replay comes after this.
        try:
            async with asyncio.timeout(self.broker.options["socket_connect_timeout"] * 2):
                await asyncio.shield(confirmed)
        except TimeoutError:
            raise self.broker.unavailable(TimeoutError("no SUBSCRIBE confirmation")) from None

    async def unwatch(self, stream: str) -> None:
        channel = self.broker.key(stream).encode()
        async with self.lock:
            self.streams.pop(channel, None)
            self.confirmed.pop(channel, None)
            if self.pubsub is not None:
                try:
                    await self.pubsub.unsubscribe(channel)
                except redis.RedisError:
                    pass

    async def run(self) -> None:
        while True:
            try:
                await self.listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.failures == 0:  # once per outage, not once per client or retry
                    expected = isinstance(exc, redis.RedisError | OSError)
                    log.error(
                        "sse: live events paused: %s; reconnecting", self.broker.unavailable(exc), exc_info=not expected
                    )
                self.failures += 1
                await asyncio.sleep(min(0.05 * 2**self.failures, 2.0))

    async def listen(self) -> None:
        # No silent retries inside redis-py: a reconnect it hid from us would skip
        # the catch-up below and lose what was published meanwhile.
        client = self.broker.new_aclient(retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub()
        pending: list[dict[str, Any]] = []
        try:
            async with self.lock:
                channels = list(self.streams)
                self.confirmed = {ch: self.confirmed.get(ch) or self.hub.loop.create_future() for ch in channels}
                if channels:
                    await pubsub.subscribe(*channels)
                else:
                    await pubsub.ping()
                self.pubsub = pubsub
            waiting = set(channels)
            while waiting:  # messages held back until the catch-up below is done
                message = await pubsub.get_message(timeout=1.0)
                if message and message["type"] == "subscribe":
                    if message["channel"] in waiting:
                        waiting.discard(message["channel"])
                    else:  # watched since we connected: nothing to catch up
                        self.confirm(message["channel"])
                elif message and message["type"] == "message":
                    pending.append(message)
            await self.catch_up(channels)
            for channel in channels:
                self.confirm(channel)
            if self.failures:
                log.warning("sse: live events resumed after %d failed attempts", self.failures)
                self.failures = 0
            for message in pending:
                self.handle(message)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self.handle(message)
        finally:
            self.pubsub = None
            await pubsub.aclose()
            await client.aclose()

    def confirm(self, channel: bytes) -> None:
        future = self.confirmed.get(channel)
        if future is not None and not future.done():
            future.set_result(None)

    def handle(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if message["type"] == "subscribe":
            self.confirm(channel)
        elif message["type"] == "message" and channel in self.streams:
            id, event, data = message["data"].decode().split("\n", 2)
            self.hub.deliver(self.streams[channel], id, event, data)

    async def catch_up(self, channels: list[bytes]) -> None:
        """Deliver what was logged while this process was not subscribed."""
        for channel in channels:
            stream = self.streams.get(channel)
            last = self.hub.last.get(stream or "")
            if stream is None or last is None:
                continue
            async for entries in self.broker.pages(stream, format_id(last)):
                if entries is None:
                    # The log moved past us: end these connections so that each client
                    # reconnects and is told (reset event) instead of silently missing events.
                    log.warning("sse: %s was trimmed past this process's position during an outage", stream)
                    for sub in tuple(self.hub.subscribers.get(stream, ())):
                        sub.close()
                    break
                for id, event, data in entries:
                    self.hub.deliver(stream, id, event, data)


_broker: Broker | None = None
_broker_lock = threading.Lock()
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_broker() -> Broker:
    """The process's broker: Redis when ``REDIS_URL`` or ``REDIS_SENTINELS`` is set, else memory."""
    global _broker
    with _broker_lock:
        if _broker is None:
            url, sentinels = setting("REDIS_URL", None), setting("REDIS_SENTINELS", [])
            _broker = RedisBroker(url, sentinels) if url or sentinels else MemoryBroker()
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
            if isinstance(_broker, RedisBroker) and _broker._sync is not None:
                _broker._sync.close()
            _broker = None
        _hubs.clear()


setting_changed.connect(_reset)
