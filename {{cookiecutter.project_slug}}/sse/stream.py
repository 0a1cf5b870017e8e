"""One client connection, the same for both transports.

Order of work, so that nothing is lost or sent twice on reconnect: subscribe
to live events first, replay from the log second, then pass on only the live
events newer than the last one sent.
"""

import asyncio
import logging
import random
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from sse import access, cors, tokens
from sse.auth import authorize
from sse.backpressure import Writer, direct_writer
from sse.broker import BrokerUnavailable, get_hub
from sse.conf import setting
from sse.encoding import (
    RESET_EVENT,
    EventKey,
    InvalidEvent,
    dumps,
    encode,
    parse_composite,
    parse_id,
    validate_stream,
    writes,
)
from sse.hub import PING, ZERO, Hub, Subscription
from sse.multi import MultiConnection

log = logging.getLogger("sse")


def plain(status: int, message: str, **headers: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def last_event_id(request: HttpRequest) -> str | None:
    # The header wins: the browser keeps the query string on its own reconnects,
    # so the query's id is stale once the header is there.
    return request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or None


def retry_frame() -> bytes:
    # Sent at once: Daphne sends the headers only with the first body chunk.
    # The jitter spreads the reconnect storm after a restart.
    retry = setting("SSE_RETRY_MS", 3000)
    return encode(retry=int(retry * random.uniform(0.8, 1.2)))


async def stream_response(request: HttpRequest, stream: str | None = None) -> HttpResponse:
    """The response for ``GET /sse/<stream>/`` (or, with no ``stream``, ``GET /sse/?stream=a&stream=b``).

    A stream, or a 4xx/503 that says why in one line.
    """
    try:
        origin = cors.check(request)
    except cors.Refused as exc:
        response, origin = plain(403, str(exc)), None  # and no stream opened
    else:
        response = cors.preflight() if request.method == "OPTIONS" else await open_streams(request, stream)
    cors.allow(response, origin)
    return response


async def open_streams(request: HttpRequest, stream: str | None) -> HttpResponse:
    if request.method != "GET":
        return plain(405, "SSE streams are read with GET", Allow="GET, OPTIONS")
    multi = stream is None
    limit = setting("SSE_MAX_STREAMS_PER_CONNECTION", 16)
    if multi:
        streams = list(dict.fromkeys(request.GET.getlist("stream")))  # duplicates collapse, order kept
        if not streams:
            return plain(400, "name at least one stream: /sse/?stream=a&stream=b")
        if len(streams) > limit:
            return plain(400, f"too many streams on one connection: {len(streams)}, at most {limit}")
    else:
        streams = [stream]
    for name in streams:
        try:
            validate_stream(name)
        except InvalidEvent as exc:
            return plain(400 if multi else 404, str(exc))
    try:
        granted = tokens.granted(tokens.from_request(request), streams)
    except tokens.TokenError as exc:
        return plain(exc.status, f"token: {exc}")
    for name in streams:
        if name not in granted and not await authorize(request, name):
            return plain(403, f"you may not read stream {name!r}")
    last_id = last_event_id(request)
    positions = None
    if last_id is not None:
        try:
            if multi:
                positions = parse_composite(last_id, limit)
                if unknown := [name for name in positions if name not in streams]:
                    raise InvalidEvent(f"composite id names {unknown[0]!r}, which this connection does not read")
            else:
                parse_id(last_id)
        except InvalidEvent as exc:
            return plain(400, f"Last-Event-ID: {exc}")
    record = await access.record(request, ",".join(streams), last_id)
    hub = get_hub()
    if hub.open + len(streams) > setting("SSE_MAX_STREAMS", 20_000):
        # Past this a process would run out of file descriptors or memory for everyone.
        return plain(503, "too many open streams on this server, retry shortly", Retry_After="5")
    results = await asyncio.gather(*(hub.subscribe(name) for name in streams), return_exceptions=True)
    subs = [sub for sub in results if isinstance(sub, Subscription)]
    if len(subs) < len(results):
        for sub in subs:
            hub.unsubscribe(sub)
        if error := next((r for r in results if not isinstance(r, BrokerUnavailable | Subscription)), None):
            raise error
        return plain(503, "event broker unavailable, retry shortly", Retry_After="5")
    if multi:
        connection: Connection | MultiConnection = MultiConnection(hub, subs, positions, record)
    else:
        # The transports put Daphne's ASGI send in the scope: live events then skip ASGI.
        writer = direct_writer(getattr(request, "scope", {}).get("sse.send"))
        connection = Connection(hub, subs[0], record, writer)
    response = StreamingHttpResponse(connection.frames(retry_frame()), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx must not buffer the stream, whatever its proxy_buffering says.
    response["X-Accel-Buffering"] = "no"
    response._resource_closers.append(connection.close)
    return response


class Connection:
    __slots__ = ("hub", "last_id", "record", "sub", "writer")  # one per open stream

    def __init__(self, hub: Hub, sub: Subscription, record: access.Record, writer: Writer | None = None) -> None:
        self.hub = hub
        self.sub = sub
        self.record = record
        self.last_id = record.last_id
        self.writer = writer

    def close(self) -> None:
        self.hub.unsubscribe(self.sub)

    async def frames(self, retry: bytes) -> AsyncIterator[bytes]:
        record, sub = self.record, self.sub
        record.opened()
        reason = "server-closed"
        try:
            record.sent(retry, 0)
            yield retry
            sent = ZERO
            if self.last_id is not None:
                sent = parse_id(self.last_id)
                async for chunk, key, events in self.replay():
                    sent = key
                    record.sent(chunk, events)
                    yield chunk
            async for chunk, events in self.live(sent):
                record.sent(chunk, events)
                yield chunk
            if sub.dropped:
                reason = "slow-client"
        except (asyncio.CancelledError, GeneratorExit):
            reason = access.cancelled_reason()
            raise
        except BrokerUnavailable as exc:
            # Redis failed after the 200 (a replay page): end the stream cleanly rather
            # than leave it hanging; the client reconnects with its last id.
            log.warning("sse: ended a stream of %s: %s", record.fields["stream"], exc)
        finally:
            self.close()
            record.closed(reason, [sub])

    async def replay(self) -> AsyncIterator[tuple[bytes, EventKey, int]]:
        first = True
        async for entries in self.hub.broker.pages(self.sub.stream, self.last_id):
            if entries is None and first:
                frame, key = await self.reset()
                yield frame, key, 0  # not an event of the stream
                return
            if entries is None:
                # Trimmed while this client was replaying: end it; it reconnects
                # with the id it has and gets a reset event.
                self.sub.close()
                return
            first = False
            done = 0
            for chunk, count in writes(encode(id=id, event=event, data=data) for id, event, data in entries):
                done += count
                yield chunk, parse_id(entries[done - 1][0]), count

    async def reset(self) -> tuple[bytes, EventKey]:
        """The documented event for an id the log no longer (or never) had."""
        latest = await self.hub.broker.alast_id(self.sub.stream)
        data = dumps({"reason": "unknown-id", "last_event_id": self.last_id})
        # The id moves the client to the newest entry (or clears it when the log is
        # empty), so its next reconnect does not reset again. Live events from there.
        frame = encode(id=latest or "", event=RESET_EVENT, data=data)
        self.record.reset(latest or "")
        return frame, parse_id(latest) if latest else ZERO

    async def live(self, sent: EventKey) -> AsyncIterator[tuple[bytes, int]]:
        sub = self.sub
        while True:
            if sub.write is None and not sub.items and not sub.dropped:
                # Everything before is written: the hub may write the next frames itself.
                sub.write = self.writer
            await sub.wait()
            chunks = []
            for key, frame in sub.take():  # all that is queued goes out in one write
                if key > sent:
                    chunks.append(frame)
                    sent = key
            events = len(chunks)
            if sub.pinged:  # the hub's heartbeat (SSE_HEARTBEAT)
                sub.pinged = False
                chunks = chunks or [PING]
            if chunks:
                yield b"".join(chunks), events
            if sub.dropped:
                return
