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
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import tcp

from sse import access
from sse.conf import setting

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


def guard(send: Send) -> Send:
    limit = setting("SSE_MAX_BUFFER", 1_048_576)
    transport = daphne_transport(send)
    access.bind(transport)
    if not limit or transport is None or not hasattr(transport, "dataBuffer"):
        return send

    patience = setting("SSE_SEND_TIMEOUT", 10.0)

    async def guarded(message: dict[str, Any]) -> None:
        await send(message)
        if message["type"] != "http.response.body":
            return
        deadline = asyncio.get_running_loop().time() + patience
        while (waiting := buffered(transport)) > limit and transport.connected:
            if asyncio.get_running_loop().time() > deadline:
                log.info("sse: closing a client that stopped reading (%d bytes waiting)", waiting)
                access.mark_slow()
                transport.abortConnection()
                return
            await asyncio.sleep(0.05)

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
    if not isinstance(transport, tcp.Connection) or transport.TLS:
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
