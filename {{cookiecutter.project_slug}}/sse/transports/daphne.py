"""Daphne's side of a stream: backpressure, and a fast path for live events.

Close clients that stop reading, before their bytes fill the server's memory.

Daphne applies no backpressure: ``send()`` never waits, and what a stalled
client does not read piles up in Twisted's transport buffer (django/daphne#170),
so a queue on our side never fills. :func:`guard` wraps an ASGI ``send`` and
measures that buffer after every body chunk: past ``SSE_MAX_BUFFER`` bytes it
waits for the client to read, which is the backpressure Daphne lacks (meanwhile
the connection's queue fills, and closes it past its own bound). A client that
reads nothing for ``SSE_SEND_TIMEOUT`` seconds is aborted; a plain close would
wait for the buffer to drain. The browser reconnects with its Last-Event-ID and
replay fills the gap.

:func:`direct_writer` is the fast path. Going through ASGI, every live event
to every client costs a task wake-up, Channels' or Django's send stack, and
Twisted's buffered write (a writer registered with the event loop, then a
second loop pass to send): about 50 µs of CPU per delivery, measured with
py-spy (README, Benchmarks). The hub instead calls the writer synchronously
with the frame it encoded once; the writer sends it on the socket at once
when nothing is waiting before it, as asyncio's own transports do. A client
that falls behind leaves the fast path for the queued one above.

Both read Twisted internals (:data:`REQUEST_INTERNALS`, :data:`TRANSPORT_INTERNALS`)
that an upgrade may rename. :func:`internals` checks them once, on the first
stream (some exist only on a live connection); without them the server logs one
warning, live events go through ASGI, and backpressure uses Twisted's public
producer API instead (:func:`producer_guard`): still correct, only slower.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import twisted
from twisted.internet import tcp
from twisted.web.http_headers import Headers

from sse.conf import setting
from sse.security import access

log = logging.getLogger("sse")

Send = Callable[[dict[str, Any]], Awaitable[None]]


def daphne_request(send: Any) -> Any:
    """Daphne's request (a ``twisted.web.http.Request``) behind an ASGI ``send``, or None elsewhere."""
    for _ in range(5):  # through wrappers such as Channels' session middleware
        if isinstance(send, functools.partial) and send.args and hasattr(send.args[0], "channel"):
            return send.args[0]
        send = getattr(getattr(send, "__self__", None), "real_send", None)
        if send is None:
            return None
    return None


def daphne_transport(send: Any) -> Any:
    """The Twisted transport behind an ASGI ``send`` from Daphne, or None elsewhere."""
    request = daphne_request(send)
    return getattr(request.channel, "transport", None) if request is not None else None


def buffered(transport: Any) -> int:
    """Bytes written but not yet taken by the kernel (twisted.internet.abstract.FileDescriptor)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


# What buffered() and direct_writer() read beyond Twisted's public interfaces, on
# Daphne's twisted.web.http.Request and its tcp.Connection.
REQUEST_INTERNALS = ("finished", "chunked", "_disconnected")
TRANSPORT_INTERNALS = ("dataBuffer", "offset", "_tempDataLen", "socket", "TLS", "disconnecting")
TESTED_TWISTED = ">=24.7,<27"  # as in requirements.txt; the internals above were checked in this range
_internals: bool | None = None  # None until a stream is served on a Twisted TCP or unix socket


def internals(request: Any, transport: Any) -> bool:
    """Whether this Twisted has every internal this module reads: checked once per process, then cached."""
    global _internals
    if _internals is None:
        missing = [f"Request.{name}" for name in REQUEST_INTERNALS if not hasattr(request, name)]
        kind = type(transport).__name__
        missing += [f"{kind}.{name}" for name in TRANSPORT_INTERNALS if not hasattr(transport, name)]
        _internals = not missing
        if missing:
            log.warning(
                "sse: Twisted %s has no %s (tested: Twisted%s): live events go through ASGI, "
                "and a client that stops reading is detected by Twisted's producer API",
                twisted.__version__,
                ", ".join(missing),
                TESTED_TWISTED,
            )
    return _internals


_unreachable_warned = False


def unreachable(send: Any) -> None:
    """Warn once when a ``send`` from Daphne no longer leads to its request (a Daphne that changed)."""
    global _unreachable_warned
    module = getattr(getattr(send, "func", send), "__module__", None) or ""
    if not _unreachable_warned and module.startswith("daphne."):
        _unreachable_warned = True
        log.warning(
            "sse: this Daphne's ASGI send does not lead to its Twisted request: no fast path, and a client "
            "that stops reading is not detected (tested: daphne>=4.2,<5)"
        )


def guard(send: Send) -> Send:
    limit = setting("SSE_MAX_BUFFER", 1_048_576)
    request = daphne_request(send)
    transport = getattr(getattr(request, "channel", None), "transport", None)
    access.bind(transport)
    if request is None:
        unreachable(send)
    if not limit or not isinstance(transport, tcp.Connection):
        return send  # not Daphne on a TCP or unix socket (TLS inside Daphne, another server)
    if not internals(request, transport):
        return producer_guard(send, request, transport)

    patience = setting("SSE_SEND_TIMEOUT", 10.0)
    head = True  # the response head is still with Twisted

    async def guarded(message: dict[str, Any]) -> None:
        nonlocal head
        await send(message)
        if message["type"] != "http.response.body":
            return
        if head:
            head = False
            forget_head(request)
        deadline = asyncio.get_running_loop().time() + patience
        while (waiting := buffered(transport)) > limit and transport.connected:
            if asyncio.get_running_loop().time() > deadline:
                log.info("sse: closing a client that stopped reading (%d bytes waiting)", waiting)
                access.mark_slow()
                transport.abortConnection()
                return
            await asyncio.sleep(0.05)

    return guarded


def forget_head(request: Any) -> None:
    """Let go of the response head Twisted keeps after writing it, with the first body chunk.

    ``Request.responseHeaders`` (some 15 objects, about 1 KB) is read only
    until the head is on the wire; a stream keeps its request for hours.
    """
    if request.startedWriting:
        request.responseHeaders = Headers()


class Drain:
    """A push producer (twisted.internet.interfaces.IPushProducer) that only listens.

    Twisted pauses the request's producer when its transport holds more than its
    ``bufferSize`` unsent, and resumes it once that is sent.
    """

    __slots__ = ("resumed",)

    def __init__(self) -> None:
        self.resumed: asyncio.Future[None] | None = None  # while paused

    def pauseProducing(self) -> None:
        if self.resumed is None:
            self.resumed = asyncio.get_running_loop().create_future()

    def resumeProducing(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def stopProducing(self) -> None:
        # The connection is going away: nothing more to wait for.
        self.resumeProducing()


def producer_guard(send: Send, request: Any, transport: Any) -> Send:
    """:func:`guard` through Twisted's public producer API only, for when its internals are missing.

    A paused transport makes ``send`` wait, as :func:`guard` does: the
    stream's queue then fills and closes it at its bound, or the client is aborted
    after ``SSE_SEND_TIMEOUT`` seconds without reading.
    """
    patience = setting("SSE_SEND_TIMEOUT", 10.0)
    # Where Twisted pauses a producer: SSE_MAX_BUFFER, as guard() measures it. A
    # public attribute of its transports; an unknown Twisted keeps its own 64 KiB.
    transport.bufferSize = setting("SSE_MAX_BUFFER", 1_048_576)
    drain: Drain | None = None

    async def guarded(message: dict[str, Any]) -> None:
        nonlocal drain
        if message["type"] == "http.response.body":
            if drain is None and message.get("more_body"):
                drain = Drain()
                request.registerProducer(drain, True)
            elif drain is not None and not message.get("more_body"):
                # Before Daphne finishes the request: Twisted logs an error for a
                # producer still registered then. A lost connection has no channel
                # left, and nothing to unregister from.
                if getattr(request, "channel", None) is not None:
                    request.unregisterProducer()
                drain = None
        await send(message)
        if drain is not None and drain.resumed is not None:
            try:
                async with asyncio.timeout(patience):
                    await asyncio.shield(drain.resumed)
            except TimeoutError:
                log.info("sse: closing a client that stopped reading (Twisted's buffer full for %ss)", patience)
                access.mark_slow()
                transport.abortConnection()

    return guarded


Writer = Callable[[bytes], bool]


@functools.lru_cache(maxsize=4)
def chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing, as twisted.web.http.Request.write does it; once per event, not per client."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def direct_writer(send: Any) -> Writer | None:
    """A synchronous write of body bytes straight to Daphne's socket, or None where there is none.

    Only for a plain TCP or unix socket (TLS goes through ASGI), and only once
    the response has started. The writer returns False when the client has
    ``SSE_MAX_BUFFER`` bytes or more waiting: the caller then queues instead.
    """
    request = daphne_request(send)
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if not isinstance(transport, tcp.Connection) or not internals(request, transport) or transport.TLS:
        return None
    limit = setting("SSE_MAX_BUFFER", 1_048_576) or float("inf")

    def write(data: bytes) -> bool:
        if request.finished or request._disconnected or not transport.connected or transport.disconnecting:
            return True  # Daphne tells the application; nothing to write to
        if request.chunked:
            data = chunk(data)
        if buffered(transport):
            transport.write(data)  # behind what already waits, in order
        else:
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return True  # the reactor sees the broken socket and disconnects it
            if sent == len(data):
                return True  # all of it is with the kernel: nothing waits here
            transport.write(data[sent:])
        return buffered(transport) < limit

    return write
