"""One client connection, the same for both transports.

Order of work, so that nothing is lost or sent twice on reconnect: subscribe
to live events first, replay from the log second, then pass on only the live
events newer than the last one sent.
"""

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.cache import patch_vary_headers

from sse.backends import BrokerUnavailable
from sse.conf import setting
from sse.encoding import (
    RESET_EVENT,
    EventKey,
    InvalidEvent,
    Writes,
    dumps,
    encode,
    parse_composite,
    parse_id,
    validate_stream,
)
from sse.hub import PING, ZERO, Hub, Subscription, get_hub
from sse.security import access, cors, revocation, tokens
from sse.security.auth import authorize, get_user, is_public
from sse.transports.daphne import Writer, direct_writer
from sse.transports.multi import MultiConnection

log = logging.getLogger("sse")
UNAVAILABLE_REPORT_INTERVAL = 10.0  # seconds between two warnings about 503s for new streams


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
    # Who may read a stream depends on the session: no cache may share one user's answer
    # with another. (Django's session middleware adds this in async_view mode, not for consumers.)
    patch_vary_headers(response, ("Cookie",))
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
        granted, token_user = await tokens.agranted(tokens.from_request(request), streams)
    except tokens.TokenError as exc:
        return plain(exc.status, f"token: {exc}")
    by_policy = []  # allowed now, re-checked while open (sse.security.revocation); public ones never
    for name in streams:
        if name in granted:
            continue
        if not await authorize(request, name):
            return plain(403, f"you may not read stream {name!r}")
        if not is_public(name):
            by_policy.append(name)
    if not any(not is_public(name) for name in granted):
        token_user = None  # a token's public streams need no watching
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
    # Counted before the first await, so that a burst of connects cannot all pass the check above.
    added = [hub.add(name) for name in streams]
    results: list[Subscription | BaseException]
    if len(added) == 1:  # the usual case, without gather's task and future per stream
        try:
            results = [await hub.ready(added[0])]
        except Exception as exc:  # as gather(return_exceptions=True) would hand it back
            results = [exc]
    else:
        results = await asyncio.gather(*(hub.ready(sub) for sub in added), return_exceptions=True)
    subs = [sub for sub in results if isinstance(sub, Subscription)]
    if len(subs) < len(results):
        for sub in subs:
            hub.unsubscribe(sub)
        if error := next((r for r in results if not isinstance(r, BrokerUnavailable | Subscription)), None):
            raise error
        report_unavailable(next(r for r in results if isinstance(r, BrokerUnavailable)))
        return plain(503, "event broker unavailable, retry shortly", Retry_After="5")
    if multi:
        connection: Connection | MultiConnection = MultiConnection(hub, subs, positions, record)
    else:
        # The transports put Daphne's ASGI send in the scope: live events then skip ASGI.
        writer = direct_writer(getattr(request, "scope", {}).get("sse.send"))
        connection = Connection(hub, subs[0], record, writer)
    frames = connection.frames(retry_frame())
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    if (scope := getattr(request, "scope", None)) is not None:
        # For the transport to close when the response ends (see close_frames).
        scope["sse.frames"] = frames
    response["Cache-Control"] = "no-cache"
    # nginx must not buffer the stream, whatever its proxy_buffering says.
    response["X-Accel-Buffering"] = "no"
    response._resource_closers.append(functools.partial(hub.call, connection.close))
    user = await get_user(request)
    session_user = str(user.pk) if user.is_authenticated else None
    guarded = revocation.guard(hub, request, subs, record, by_policy, session_user, token_user)
    if guarded is not None:
        release = functools.partial(revocation.release, hub, guarded)
        response._resource_closers.append(functools.partial(hub.call, release))
    return response


_unavailable_reported = -UNAVAILABLE_REPORT_INTERVAL


def report_unavailable(exc: BaseException) -> None:
    """Say why new streams get 503s: once, then at most every UNAVAILABLE_REPORT_INTERVAL seconds.

    A burst of refusals has one cause; one line per refused stream would bury it.
    """
    global _unavailable_reported
    now = time.monotonic()
    if now - _unavailable_reported >= UNAVAILABLE_REPORT_INTERVAL:
        _unavailable_reported = now
        log.warning("sse: new streams get 503: %s", exc)


async def close_frames(scope: dict) -> None:
    """Close the stream's generator of ``scope``, for the transport when its response has ended.

    Django calls ``close()`` on a streaming response's iterator, which async
    generators lack, and closes only its own wrapper around it. A client gone
    while a write waited (a slow client) would leave the generator suspended
    until garbage collection: its disconnect neither logged nor counted, its
    subscription open. Closing it here runs its ``finally`` at once.
    """
    frames = scope.pop("sse.frames", None)
    if frames is not None:
        await frames.aclose()


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
                reason = record.ended or "slow-client"
        except (asyncio.CancelledError, GeneratorExit):
            reason = access.cancelled_reason()
            raise
        except Exception as exc:  # ends this response cleanly; nothing reaches the server
            reason = access.failed(record, exc)
        finally:
            self.close()
            record.closed(reason, [sub])

    async def replay(self) -> AsyncIterator[tuple[bytes, EventKey, int]]:
        first = True
        batch, last = Writes(), ""
        try:
            async for entries in self.hub.broker.pages(self.sub.stream, self.last_id):
                if entries is None and first:
                    frame, key = await self.reset()
                    yield frame, key, 0  # not an event of the stream
                    return
                if entries is None:
                    # Trimmed while this client was replaying: end it after what it has read; it
                    # reconnects with the id it has and gets a reset event.
                    self.sub.close()
                    break
                first = False
                for last, event, data in entries:
                    if write := batch.add(encode(id=last, event=event, data=data)):
                        yield write[0], parse_id(last), write[1]
        except Exception:
            # A later page failed (Redis gone): what was read still goes out, and the
            # client's reconnect resumes after it.
            if write := batch.take():
                yield write[0], parse_id(last), write[1]
            raise
        if write := batch.take():
            yield write[0], parse_id(last), write[1]

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
