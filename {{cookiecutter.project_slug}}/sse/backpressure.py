"""Close clients that stop reading, before their bytes fill the server's memory.

Daphne applies no backpressure: ``send()`` never waits, and what a stalled
client does not read piles up in Twisted's transport buffer (django/daphne#170),
so a queue on our side never fills. :func:`guard` wraps an ASGI ``send`` and
measures that buffer after every body chunk: past ``SSE_MAX_BUFFER`` bytes it
waits for the client to read, which is the backpressure Daphne lacks (meanwhile
the connection's queue fills, and closes it past its own bound). A client that
reads nothing for ``SSE_SEND_TIMEOUT`` seconds is aborted; a plain close would
wait for the buffer to drain. The browser reconnects with its Last-Event-ID and
replay fills the gap.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sse import access
from sse.broker import setting

log = logging.getLogger("sse")

Send = Callable[[dict[str, Any]], Awaitable[None]]


def daphne_transport(send: Any) -> Any:
    """The Twisted transport behind an ASGI ``send`` from Daphne, or None elsewhere."""
    for _ in range(5):  # through wrappers such as Channels' session middleware
        if isinstance(send, functools.partial) and send.args and hasattr(send.args[0], "channel"):
            return getattr(send.args[0].channel, "transport", None)
        send = getattr(getattr(send, "__self__", None), "real_send", None)
        if send is None:
            return None
    return None


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
