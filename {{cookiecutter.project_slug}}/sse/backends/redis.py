"""The Redis broker: a capped Redis Stream per stream for the log, pub/sub for live events.

One Lua script does the XADD and the PUBLISH, so Redis publishes in log order
even with concurrent publishers, and every client sees one order. Each process
has one pub/sub connection (:class:`RedisFeed`) and catches up from the log
after an outage.
"""

import asyncio
import logging
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from sse.backends.base import (
    Broker,
    BrokerFull,
    BrokerUnavailable,
    Entry,
    Feed,
    Sink,
    backstop,
    prepare,
    within,
)
from sse.conf import setting
from sse.encoding import (
    format_id,
    parse_id,
)

log = logging.getLogger("sse")

SENTINEL_KWARGS = {"socket_timeout": 5.0}  # how long to wait for a Sentinel to answer
# How long a new stream waits for Redis to confirm its subscription once connected: a
# Redis that accepted the connection but stopped answering (overloaded, frozen).
SUBSCRIBE_TIMEOUT = 5.0

# KEYS: the stream, its byte counter. ARGV: maxlen, event, data, key TTL (s), max age (ms),
# max bytes. The log keeps at most maxlen entries and max bytes of event names and data
# (the newest entry always stays), none older than max age. The counter makes the byte
# bound exact without reading the whole log: an entry's size is added when it is
# appended and subtracted when it is trimmed, and trimming is one oldest entry at a time,
# so no bound is overshot by a whole node as with MAXLEN ~. A counter that is missing
# (a log written before it existed, or one key evicted without the other) is rebuilt once.
PUBLISH_SCRIPT = """
local key, counter = KEYS[1], KEYS[2]
local maxlen, ttl, max_age, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function size(fields)
  local n = 0
  for i = 2, #fields, 2 do n = n + #fields[i] end
  return n
end
local id = redis.call('XADD', key, '*', 'event', ARGV[2], 'data', ARGV[3])
local bytes
if redis.call('EXISTS', counter) == 1 then
  bytes = redis.call('INCRBY', counter, #ARGV[2] + #ARGV[3])
else
  bytes = 0
  local start = '-'
  while true do
    local page = redis.call('XRANGE', key, start, '+', 'COUNT', 100)
    for _, entry in ipairs(page) do bytes = bytes + size(entry[2]) end
    if #page < 100 then break end
    start = '(' .. page[#page][1]
  end
  redis.call('SET', counter, bytes)
end
local len = redis.call('XLEN', key)
local cutoff = '(' .. string.format('%d', tonumber(string.match(id, '^(%d+)')) - max_age) .. '-0'
local trimmed = 0
while len > 1 do
  local oldest
  if len > maxlen or (max_bytes > 0 and bytes > max_bytes) then
    oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  elseif max_age > 0 then
    oldest = redis.call('XRANGE', key, '-', cutoff, 'COUNT', 1)[1]
  end
  if not oldest then break end
  redis.call('XDEL', key, oldest[1])
  len, bytes, trimmed = len - 1, bytes - size(oldest[2]), trimmed + size(oldest[2])
end
if trimmed > 0 then redis.call('DECRBY', counter, trimmed) end
if ttl > 0 then
  redis.call('EXPIRE', key, ttl)
  redis.call('EXPIRE', counter, ttl)
end
redis.call('PUBLISH', key, id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


# KEYS: the stream. ARGV: after ('' for the log's start), count, max bytes (0: no bound).
# At most count entries after `after`, stopping once their event names and data reach max
# bytes: the entry that reaches it is the page's last. So a page is one round trip sized in
# bytes from the start, where XRANGE alone can only count entries. Inside Redis the log is
# read a chunk at a time, each chunk sized by the largest entry seen so far. False (nil)
# when `after` is no longer in the log.
REPLAY_SCRIPT = """
local key, after, count, max_bytes = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local start = '-'
if after ~= '' then
  if #redis.call('XRANGE', key, after, after) == 0 then return false end
  start = '(' .. after
end
local page, bytes, largest = {}, 0, 0
while #page < count do
  local want = count - #page
  if max_bytes > 0 then
    want = math.min(want, largest == 0 and 1 or math.max(1, math.ceil((max_bytes - bytes) / largest)))
  end
  local chunk = redis.call('XRANGE', key, start, '+', 'COUNT', want)
  for _, entry in ipairs(chunk) do
    local size = 0
    for i = 2, #entry[2], 2 do size = size + #entry[2][i] end
    page[#page + 1] = entry
    bytes, largest = bytes + size, math.max(largest, size)
    if max_bytes > 0 and bytes >= max_bytes then return page end
  end
  if #chunk < want then break end
  start = '(' .. chunk[#chunk][1]
end
return page
"""


def raise_swallowed_cancel() -> None:
    """Raise the cancellation of the current task if a Redis call swallowed it.

    redis-py writes every command under ``asyncio.wait_for``, which on Python
    3.11 returns the result instead of raising when its task is cancelled just
    as the write completes (fixed in 3.12). The task stays marked as cancelling
    but carries on: a stream whose client had left went on replaying, then
    waited for live events for good, holding its memory.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBroker(Broker):
    """Redis Streams for the log, pub/sub (fed by the same Lua script) for live events."""

    name = "redis"
    script = PUBLISH_SCRIPT
    errors: tuple[type[Exception], ...] = (redis.RedisError,)  # what unavailable() turns into a 503

    def __init__(self, url: str | None = None, sentinels: list[tuple[str, int]] | None = None) -> None:
        # From the settings unless given: SSE_BROKER makes backends with no arguments.
        self.url = url if url is not None else setting("REDIS_URL", None)
        self.sentinels = (sentinels if sentinels is not None else setting("REDIS_SENTINELS", [])) or []
        self.master = setting("REDIS_SENTINEL_MASTER", "mymaster")
        self.prefix = setting("SSE_KEY_PREFIX", "sse")
        # Longer than every blocking read in play (the pub/sub poll, channels-redis'
        # 5 s BZPOPMIN): redis-py 8's default would time out idle connections.
        self.options = {
            "socket_timeout": setting("SSE_REDIS_SOCKET_TIMEOUT", 30.0),
            # Also bounds the handshake (see RedisFeed.listen): a new stream waits this
            # long, not redis-py's 5 s per attempt, before it gets its 503.
            "socket_connect_timeout": setting("SSE_REDIS_CONNECT_TIMEOUT", 1.0),
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

    @property
    def aoptions(self) -> dict[str, Any]:
        """The async clients' options: their connect timeout is only :func:`within`'s backstop.

        A connect on a loop busy with a burst of new streams resumes late, and redis-py's
        wall-clock timeout then failed it: the feed's connection first, and with it every
        stream waiting for its subscription (3,000 of 3,000 streams opened at once on a
        Daphne given a tenth of a core got a 503). The feed bounds its connect by the
        loop's free time instead (:meth:`RedisFeed.listen`); new streams wait on the feed,
        so with Redis down they still get their 503 after ``SSE_REDIS_CONNECT_TIMEOUT``.
        """
        return {**self.options, "socket_connect_timeout": backstop(self.options["socket_connect_timeout"])}

    def _sentinel_options(self, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
        given = {k: v for k, v in setting("REDIS_SENTINEL_OPTIONS", {}).items() if v is not None}
        return {**options, **given, **extra}

    def key(self, stream: str) -> str:
        return f"{self.prefix}:{stream}"

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    def client(self) -> redis.Redis:
        with self._sync_lock:
            if self._sync is None:
                if self.sentinels:
                    sentinel = redis.sentinel.Sentinel(self.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
                    options = self._sentinel_options(self.options, retry=Retry(NoBackoff(), 1))
                    self._sync = sentinel.master_for(self.master, **options)
                else:
                    self._sync = redis.Redis.from_url(self.url, **self.options, retry=Retry(NoBackoff(), 1))
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
        # One immediate retry: after a Redis restart each pooled connection is stale, and
        # its first command would fail (a replay cut short, a 503) though Redis is back.
        extra = {"retry": AsyncRetry(NoBackoff(), 1), **extra}
        if self.sentinels:
            sentinel = aredis.sentinel.Sentinel(self.sentinels, sentinel_kwargs=SENTINEL_KWARGS)
            extra.pop("timeout", None)  # the Sentinel pool does not block
            return sentinel.master_for(self.master, **self._sentinel_options(self.aoptions, **extra))
        options = {**self.aoptions, **extra}
        if "max_connections" in extra:
            return aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(self.url, **options))
        return aredis.Redis.from_url(self.url, **options)

    async def aclose(self) -> None:
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    def unavailable(self, exc: Exception) -> BrokerUnavailable:
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            # Not an outage: Redis answers but refuses writes until memory is freed.
            return BrokerFull(f"{self.where} is out of memory (maxmemory reached, writes refused): {exc}")
        return BrokerUnavailable(f"{self.where} is unavailable: {exc}")

    def _args(self, stream: str, event: str, data: Any, text: str | None) -> tuple[list[str], list[Any]]:
        stream, event, payload = prepare(stream, event, data, text)
        ttl = setting("SSE_STREAM_TTL", 86_400)
        max_age_ms = int(setting("SSE_MAX_AGE", 86_400) * 1000)
        max_bytes = setting("SSE_MAX_STREAM_BYTES", 16_777_216)
        key = self.key(stream)
        return [key, key + ":bytes"], [setting("SSE_MAXLEN", 10_000), event, payload, ttl, max_age_ms, max_bytes]

    def publish(self, stream: str, event: str, data: Any, text: str | None = None) -> str:
        keys, args = self._args(stream, event, data, text)
        client = self.client()
        try:
            return client.register_script(self.script)(keys, args).decode()
        except self.errors as exc:
            raise self.unavailable(exc) from None

    async def apublish(self, stream: str, event: str, data: Any, text: str | None = None) -> str:
        keys, args = self._args(stream, event, data, text)
        client = self.aclient()
        try:
            return (await client.register_script(self.script)(keys, args)).decode()
        except self.errors as exc:
            raise self.unavailable(exc) from None

    async def areplay(self, stream: str, after: str, count: int, max_bytes: int = 0) -> list[Entry] | None:
        if after:
            ms, seq, _ = parse_id(after)
            after = f"{ms}-{seq}"
        try:
            rows = await self.aclient().register_script(REPLAY_SCRIPT)([self.key(stream)], [after, count, max_bytes])
        except self.errors as exc:
            raise self.unavailable(exc) from None
        raise_swallowed_cancel()
        if rows is None:
            return None
        return [self._entry(row) for row in rows]

    async def alast_id(self, stream: str) -> str | None:
        try:
            rows = await self.aclient().xrevrange(self.key(stream), count=1)
        except self.errors as exc:
            raise self.unavailable(exc) from None
        raise_swallowed_cancel()
        return rows[0][0].decode() if rows else None

    async def arecent(self, stream: str, count: int) -> list[Entry]:
        try:
            rows = await self.aclient().xrevrange(self.key(stream), count=count)
        except self.errors as exc:
            raise self.unavailable(exc) from None
        raise_swallowed_cancel()
        return [self._entry(row) for row in reversed(rows)]

    @staticmethod
    def _entry(row: Any) -> Entry:
        id, fields = row
        if isinstance(fields, list):  # from a script: the field-value pairs, as Redis sends them
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        return id.decode(), fields[b"event"].decode(), fields[b"data"].decode()

    def feed(self, hub: Sink) -> Feed:
        return RedisFeed(self, hub)

    async def ahealth(self) -> str | None:
        try:
            async with asyncio.timeout(2):
                await self.aclient().ping()
        except Exception:  # any failure means: not serving events now
            return "unavailable"
        return "ok"

    @property
    def control_channel(self) -> bytes:
        # "!" is no stream name character: no stream's channel can be this one.
        return f"{self.prefix}:!control".encode()

    def publish_control(self, message: str) -> None:
        try:
            self.client().publish(self.control_channel, message)
        except self.errors as exc:
            raise self.unavailable(exc) from None


class RedisFeed:
    """One pub/sub connection per process, with catch-up from the log after outages."""

    def __init__(self, broker: RedisBroker, hub: Sink) -> None:
        self.broker = broker
        self.hub = hub
        self.streams: dict[bytes, str] = {}
        self.pubsub: aredis.client.PubSub | None = None
        self.confirmed: dict[bytes, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0
        # Subscribed with the streams, on every (re)connection; never unwatched.
        self.streams[broker.control_channel] = ""
        self.error: BrokerUnavailable | None = None  # set while Redis can't be reached

    async def watch(self, stream: str) -> None:
        channel = self.broker.key(stream).encode()
        if self.error is not None:
            # Redis is known to be down: answer now rather than after another attempt.
            raise self.error
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
        # run() fails this future at once when it cannot connect.
        await wait_confirmed(self.broker, confirmed, "SUBSCRIBE")

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
                self.error = self.broker.unavailable(exc)
                if self.failures == 0:  # once per outage, not once per client or retry
                    expected = isinstance(exc, redis.RedisError | OSError | TimeoutError)
                    log.error("sse: live events paused: %s; reconnecting", self.error, exc_info=not expected)
                self.failures += 1
                # New streams waiting for their subscription get their 503 now, not
                # after the SUBSCRIBE_TIMEOUT.
                for future in self.confirmed.values():
                    if not future.done():
                        future.set_exception(self.error)
                        future.exception()  # retrieved: a future nobody awaits logs nothing
                await asyncio.sleep(min(0.05 * 2**self.failures, 2.0))

    async def listen(self) -> None:
        # No silent retries inside redis-py: a reconnect it hid from us would skip
        # the catch-up below and lose what was published meanwhile.
        client = self.broker.new_aclient(retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub()
        pending: list[dict[str, Any]] = []
        try:
            # Connecting includes redis-py's handshake, which waits the socket timeout
            # (30 s) for an answer: a listener that accepts and never answers would
            # hold every new stream that long.
            timeout = self.broker.options["socket_connect_timeout"]
            try:
                await within(pubsub.connect(), timeout)  # the loop's own delays not counted
            except TimeoutError:
                raise redis.TimeoutError(f"no answer within {timeout} s") from None
            async with self.lock:
                channels = list(self.streams)
                self.confirmed = {ch: self._pending(ch) for ch in channels}
                if channels:
                    await pubsub.subscribe(*channels)
                else:
                    await pubsub.ping()
                self.pubsub = pubsub
            self.error = None
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

    def _pending(self, channel: bytes) -> asyncio.Future[None]:
        future = self.confirmed.get(channel)
        if future is None or future.done():
            future = self.hub.loop.create_future()
        return future

    def confirm(self, channel: bytes) -> None:
        future = self.confirmed.get(channel)
        if future is not None and not future.done():
            future.set_result(None)

    def handle(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if message["type"] == "subscribe":
            self.confirm(channel)
        elif message["type"] == "message" and channel == self.broker.control_channel:
            self.hub.control(message["data"].decode())
        elif message["type"] == "message" and channel in self.streams:
            id, event, data = message["data"].decode().split("\n", 2)
            self.hub.deliver(self.streams[channel], id, event, data)

    async def catch_up(self, channels: list[bytes]) -> None:
        """Deliver what was logged while this process was not subscribed."""
        for channel in channels:
            stream = self.streams.get(channel)
            if stream and stream in self.hub.last:
                await catch_up(self.broker, self.hub, stream)


async def wait_confirmed(broker: RedisBroker, confirmed: "asyncio.Future[None]", command: str) -> None:
    """Until the feed says Redis confirmed the subscription: a 503 after SUBSCRIBE_TIMEOUT.

    Of the loop's free time (:func:`within`): the first streams of a process arrive in a
    burst, and a wall-clock timeout failed all of them (a thousand 503s per process in
    the capacity run) while the loop was too busy to read Redis's confirmation.
    """
    try:
        await within(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
    except TimeoutError:
        raise broker.unavailable(TimeoutError(f"no {command} confirmation")) from None


async def catch_up(broker: RedisBroker, hub: Sink, stream: str) -> None:
    """Deliver to ``hub`` what ``stream``'s log holds after the last id the hub delivered.

    With none delivered yet, the whole log: the caller knows that all of it is new here.
    """
    last = hub.last.get(stream)
    async for entries in broker.pages(stream, format_id(last) if last is not None else ""):
        if entries is None:
            # The log moved past us: end these connections so that each client
            # reconnects and is told (reset event) instead of silently missing events.
            log.warning("sse: %s was trimmed past this process's position during an outage", stream)
            hub.close_stream(stream)
            break
        for id, event, data in entries:
            hub.deliver(stream, id, event, data)
