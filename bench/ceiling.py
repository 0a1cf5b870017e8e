"""The ceiling: a bare asyncio SSE server, about as little Python per delivery as it gets.

One Redis pub/sub subscription (pattern ``ceiling:*``) for the whole process; each message
is encoded once into frame bytes and written to every open response of its stream. No
framework, no replay, no backpressure: a reference for what one Python core can push. A
heartbeat comment goes to every stream as often as the project's default (15 s), so an idle
ceiling costs what an idle server must.

    python ceiling.py PORT|unix:PATH REDIS_URL
"""

from __future__ import annotations

import asyncio
import os
import sys

import redis.asyncio as redis

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\nretry: 3000\n\n"
)
PING = b": ping\n\n"
HEARTBEAT = float(os.environ.get("SSE_HEARTBEAT", "15"))
streams: dict[str, set[asyncio.Transport]] = {}


class SSE(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.stream: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.stream is not None:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        path = self.buf.split(b" ", 2)[1].decode("latin-1")
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "sse":
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        self.stream = parts[1]
        streams.setdefault(self.stream, set()).add(self.transport)
        self.transport.write(HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            streams[self.stream].discard(self.transport)


async def fan_out(url: str) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.psubscribe("ceiling:*")
    counter = 0
    async for message in pubsub.listen():
        if message["type"] != "pmessage":
            continue
        counter += 1
        frame = b"id: %d\nevent: tick\ndata: %s\n\n" % (counter, message["data"])
        for transport in streams.get(message["channel"][8:].decode(), ()):
            transport.write(frame)


async def heartbeat() -> None:
    while True:
        await asyncio.sleep(HEARTBEAT)
        for transports in streams.values():
            for transport in transports:
                transport.write(PING)


async def main() -> None:
    where, url = sys.argv[1], sys.argv[2]
    loop = asyncio.get_running_loop()
    if where.startswith("unix:"):
        server = await loop.create_unix_server(SSE, where.removeprefix("unix:"), backlog=4096)
    else:
        server = await loop.create_server(SSE, "127.0.0.1", int(where), backlog=4096)
    async with server:
        beats = asyncio.create_task(heartbeat())
        await fan_out(url)
        beats.cancel()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
