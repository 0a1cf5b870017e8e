"""channels mode: plain ``group_send`` messages reach SSE clients too.

Any code can do what most Channels tutorials do::

    await channel_layer.group_send("notifications", {"type": "sse.event", "event": "notification", "data": {...}})
    await channel_layer.group_send("orders", {"type": "sse.event", "event": "order", "text": "<tr>...</tr>"})

``data`` is sent as JSON, ``text`` as is (HTML: escape it first, see ``sse.html``).

Each process joins the group of a stream once (not once per client) and hands
the message to its hub. Such messages bypass the event log: they are live
only, and a reconnecting client does not get them again. ``publish()`` is the
path with ids and replay.
"""

import asyncio
import logging
from typing import Any

import redis
from channels.layers import get_channel_layer

from sse.backends.base import BrokerFull, BrokerUnavailable, Sink, within
from sse.conf import setting
from sse.encoding import InvalidEvent, payload, validate_event_name

HEALTH_GROUP = "sse-health"
# At most this many group_add / group_discard at once per process. channels-redis' pool
# refuses a connection beyond its max_connections (100 in settings) instead of waiting
# for one: 3,000 new streams opened at once, each its own (users' private streams after
# a restart), got 2,900 503s "Too many connections". The rest of the pool stays free
# for the project's own group_send.
JOINS = 20

log = logging.getLogger("sse")


class LayerFeed:
    def __init__(self, hub: Sink) -> None:
        self.hub = hub
        self.layer = get_channel_layer()
        self.channels: dict[str, str] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.refresher: asyncio.Task[None] | None = None
        self.failing = False
        self.joining = asyncio.Semaphore(JOINS)

    async def watch(self, stream: str) -> None:
        if stream in self.channels:
            return
        channel = await self.layer.new_channel()
        await self.join(stream, channel)
        self.channels[stream] = channel
        self.tasks[stream] = self.hub.spawn(self.receive(stream, channel))
        if self.refresher is None:
            self.refresher = self.hub.spawn(self.refresh())

    async def join(self, stream: str, channel: str) -> None:
        """``group_add``, with the layer's Redis errors as the broker's: the stream gets a 503."""
        # redis-py retries a failed connection and waits its socket timeout for an
        # answer: bounded like the broker's connection, so the client is not kept waiting;
        # by the loop's free time, as a burst of new streams keeps the loop busy.
        try:
            async with self.joining:
                await within(self.layer.group_add(stream, channel), setting("SSE_REDIS_CONNECT_TIMEOUT", 1.0) * 2)
        except redis.exceptions.OutOfMemoryError as exc:
            full = "the channel layer's Redis is out of memory (maxmemory reached, writes refused)"
            raise BrokerFull(f"{full}: {exc}") from None
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"the channel layer's Redis is unavailable: {exc or type(exc).__name__}") from None

    async def health(self) -> str | None:
        """Whether a stream could join its group now: "ok" or "unavailable"; None without Redis."""
        if not hasattr(self.layer, "group_expiry") or not hasattr(self.layer, "connection"):
            return None  # the in-memory layer: nothing that can fail
        channel = await self.layer.new_channel()
        try:
            await self.join(HEALTH_GROUP, channel)  # the very write a new stream needs
            await self.layer.group_discard(HEALTH_GROUP, channel)
        except (BrokerUnavailable, redis.RedisError, OSError):
            return "unavailable"
        return "ok"

    async def unwatch(self, stream: str) -> None:
        channel = self.channels.pop(stream, None)
        if channel is not None:
            self.tasks.pop(stream).cancel()
            async with self.joining:
                await self.layer.group_discard(stream, channel)

    async def receive(self, stream: str, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the layer's Redis is down: retry, say so once
                if not self.failing:
                    log.error("sse: channel layer unavailable (%s); group_send paused", exc)
                self.failing = True
                await asyncio.sleep(1.0)
                continue
            if self.failing:
                log.warning("sse: channel layer back; group_send resumed")
                self.failing = False
            if message.get("type") == "sse.event":
                self.deliver(stream, message)

    def deliver(self, stream: str, message: dict[str, Any]) -> None:
        try:
            event = validate_event_name(message.get("event", "message"))
            data = payload(message.get("data"), message.get("text"))
        except InvalidEvent as exc:
            log.warning("sse: dropped a group_send to %s: %s", stream, exc)
            return
        self.hub.deliver_unlogged(stream, event, data)

    async def refresh(self) -> None:
        # channels-redis forgets group members after group_expiry; long-lived
        # streams would silently stop receiving. Re-join well before that.
        expiry = getattr(self.layer, "group_expiry", 86_400)
        while True:
            await asyncio.sleep(max(expiry / 3, 0.5))
            for stream, channel in list(self.channels.items()):
                try:
                    await self.layer.group_add(stream, channel)
                except Exception as exc:
                    log.warning("sse: could not renew group %s: %s", stream, exc)
