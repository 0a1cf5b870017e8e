"""channels mode: plain ``group_send`` messages reach SSE clients too.

Any code can do what most Channels tutorials do::

    await channel_layer.group_send("notifications", {"type": "sse.event", "event": "notification", "data": {...}})

Each process joins the group of a stream once (not once per client) and hands
the message to its hub. Such messages bypass the event log: they are live
only, and a reconnecting client does not get them again. ``publish()`` is the
path with ids and replay.
"""

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer

from sse.encoding import InvalidEvent, dumps, validate_event_name
from sse.hub import Hub

log = logging.getLogger("sse")


class LayerFeed:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.layer = get_channel_layer()
        self.channels: dict[str, str] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.refresher: asyncio.Task[None] | None = None
        self.failing = False

    async def watch(self, stream: str) -> None:
        if stream in self.channels:
            return
        channel = await self.layer.new_channel()
        await self.layer.group_add(stream, channel)
        self.channels[stream] = channel
        self.tasks[stream] = self.hub.spawn(self.receive(stream, channel))
        if self.refresher is None:
            self.refresher = self.hub.spawn(self.refresh())

    async def unwatch(self, stream: str) -> None:
        channel = self.channels.pop(stream, None)
        if channel is not None:
            self.tasks.pop(stream).cancel()
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
            data = dumps(message.get("data"))
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
