"""One connection that reads several streams: ``GET /sse/?stream=a&stream=b``.

The same order of work as a single stream (subscribe to every stream, replay
each from its own position, then live events newer than what was sent), with a
composite id on every event (see sse.encoding) so that one Last-Event-ID brings
each stream back to its own position.

The hub encodes each event once, with its plain id; here the frame is only
re-labelled with this connection's composite id, which no other connection
shares.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator

from sse.backends import Entry
from sse.encoding import (
    RESET_EVENT,
    EventKey,
    Writes,
    dumps,
    encode,
    format_composite,
    format_id,
    parse_id,
    with_id,
)
from sse.hub import PING, ZERO, Hub, Subscription
from sse.security import access

UNSET = object()


class MultiConnection:
    def __init__(
        self, hub: Hub, subs: list[Subscription], given: dict[str, EventKey | None] | None, record: access.Record
    ) -> None:
        self.hub = hub
        self.subs = subs
        self.record = record
        self.given = given or {}  # positions from the client's composite id
        self.ids: dict[str, str] = {}  # position per stream, as id text ("" = start of the log)
        self.sent: dict[str, EventKey] = {}  # newest key sent per stream, for dedupe

    def close(self) -> None:
        for sub in self.subs:
            self.hub.unsubscribe(sub)

    def composite(self, first: str) -> str:
        return format_composite(first, self.ids)

    async def frames(self, retry: bytes) -> AsyncIterator[bytes]:
        record = self.record
        record.opened()
        reason = "server-closed"
        try:
            record.sent(retry, 0)
            yield retry
            for sub in self.subs:
                stream = sub.stream
                given = self.given.get(stream, UNSET)
                if given is UNSET:
                    # Subscribed already, so everything after the hub's newest id reaches
                    # this connection live: that is where a reconnect must resume.
                    latest = self.hub.last.get(stream)
                    self.ids[stream] = format_id(latest) if latest else ""
                    self.sent[stream] = ZERO
                else:
                    self.ids[stream] = format_id(given) if given else ""
                    self.sent[stream] = given or ZERO
            for sub in self.subs:
                if sub.stream in self.given:
                    async for chunk, events in self.replay(sub):
                        record.sent(chunk, events)
                        yield chunk
            async for chunk, events in self.live():
                record.sent(chunk, events)
                yield chunk
            if any(sub.dropped for sub in self.subs):
                reason = record.ended or "slow-client"
        except (asyncio.CancelledError, GeneratorExit):
            reason = access.cancelled_reason()
            raise
        except Exception as exc:  # ends this response cleanly; nothing reaches the server
            reason = access.failed(record, exc)
        finally:
            self.close()
            record.closed(reason, self.subs)

    async def replay(self, sub: Subscription) -> AsyncIterator[tuple[bytes, int]]:
        stream = sub.stream
        first = True
        batch = Writes()  # across pages, as Connection.replay
        try:
            async for entries in self.hub.broker.pages(stream, self.ids[stream]):
                if entries is None and first:
                    yield await self.reset(stream), 0
                    return
                if entries is None:
                    sub.close()  # trimmed meanwhile: the reconnect gets the reset event
                    break
                first = False
                for frame in self.relabelled(stream, entries):
                    if write := batch.add(frame):
                        yield write
        except Exception:
            if write := batch.take():
                yield write  # what was read, before the error ends the stream
            raise
        if write := batch.take():
            yield write

    def relabelled(self, stream: str, entries: list[Entry]) -> Iterator[bytes]:
        """Replayed entries framed with this connection's composite id, advancing its position."""
        for id, event, data in entries:
            self.ids[stream] = id
            self.sent[stream] = parse_id(id)
            yield encode(id=self.composite(stream), event=event, data=data)

    async def reset(self, stream: str) -> bytes:
        """The reset event of one stream: the others replay normally."""
        latest = await self.hub.broker.alast_id(stream)
        data = dumps({"reason": "unknown-id", "stream": stream, "last_event_id": self.ids[stream]})
        self.ids[stream] = latest or ""
        self.sent[stream] = parse_id(latest) if latest else ZERO
        self.record.reset(self.composite(stream))
        return encode(id=self.composite(stream), event=RESET_EVENT, data=data)

    async def live(self) -> AsyncIterator[tuple[bytes, int]]:
        # Relabelled per connection, these frames never take the hub's fast path.
        loop = asyncio.get_running_loop()
        while True:
            if not any(sub.items or sub.dropped or sub.pinged for sub in self.subs):
                woken = loop.create_future()  # one future, set by whichever stream has news
                for sub in self.subs:
                    sub.waiter = woken
                try:
                    await woken
                finally:
                    for sub in self.subs:
                        sub.waiter = None
            items: list[tuple[EventKey, str, bytes]] = []
            pinged = False
            for sub in self.subs:
                items += [(key, sub.stream, frame) for key, frame in sub.take()]
                pinged, sub.pinged = pinged or sub.pinged, False
            # Ids are times: sorted, the streams' events come in about the order they were published.
            items.sort(key=lambda item: item[0])
            chunks = []
            for key, stream, frame in items:
                if key > self.sent[stream]:
                    self.sent[stream] = key
                    self.ids[stream] = format_id(key)
                    chunks.append(with_id(frame, self.composite(stream)))
            events = len(chunks)
            if pinged and not chunks:
                chunks = [PING]  # the hub's heartbeat (SSE_HEARTBEAT)
            if chunks:
                yield b"".join(chunks), events
            if any(sub.dropped for sub in self.subs):
                return  # one stream closed (slow client): the client reconnects and replays
