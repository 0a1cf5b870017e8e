"""sse-starlette on uvicorn, fanned out the way its broadcasting example does.

One Redis pub/sub subscription per process (pattern ``starlette:*``, fed by a plain Redis
``PUBLISH`` from bench/publisher.py); each message becomes one ``ServerSentEvent`` put into
every client's bounded asyncio queue; each client's ``EventSourceResponse`` reads its queue.
No replay. bench.py starts it as a user would:

    REDIS_URL=redis://... uvicorn app:app --loop uvloop --http httptools --workers 1 --no-access-log
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator

import redis.asyncio as redis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

PREFIX = "starlette:"
STREAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
HEARTBEAT_S = 15.0  # the generated project's SSE_HEARTBEAT default, so both send as many comments
RETRY_MS = 3_000  # the generated project's SSE_RETRY_MS default
QUEUE_SIZE = 100  # sse-starlette's broadcasting example bounds each client's queue at 100

log = logging.getLogger("uvicorn.error")


class Hub:
    """Per-process fan-out: one queue per open stream, grouped by stream name."""

    def __init__(self) -> None:
        self.queues: dict[str, set[asyncio.Queue[ServerSentEvent | None]]] = {}
        self.last_id = 0

    def add(self, stream: str) -> asyncio.Queue[ServerSentEvent | None]:
        queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self.queues.setdefault(stream, set()).add(queue)
        return queue

    def remove(self, stream: str, queue: asyncio.Queue[ServerSentEvent | None]) -> None:
        queues = self.queues.get(stream)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.queues[stream]

    def broadcast(self, stream: str, event: ServerSentEvent) -> None:
        for queue in list(self.queues.get(stream, ())):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # As the example does: a client this far behind is closed rather than silently
                # skipped, so the gap shows (and with no replay, it is lost for that client).
                self.remove(stream, queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    async def follow(self, pubsub: redis.client.PubSub) -> None:
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            # Ids count per process, like the ceiling's: unique and increasing, not replayable.
            self.last_id += 1
            event = ServerSentEvent(message["data"].decode(), event="tick", id=str(self.last_id))
            self.broadcast(message["channel"].decode().removeprefix(PREFIX), event)


hub = Hub()


async def events(stream: str) -> AsyncIterator[ServerSentEvent]:
    # Registered when the response starts iterating, so a HEAD request (never iterated by
    # sse-starlette) leaves no queue behind.
    queue = hub.add(stream)
    try:
        yield ServerSentEvent(retry=RETRY_MS)
        while (event := await queue.get()) is not None:
            yield event
    finally:
        hub.remove(stream, queue)


async def sse(request: Request) -> Response:
    stream = request.path_params["stream"]
    if not STREAM_NAME.fullmatch(stream):
        return PlainTextResponse("invalid stream name", status_code=400)
    return EventSourceResponse(events(stream), ping=HEARTBEAT_S)


def report_end(task: asyncio.Task) -> None:
    # Without this, a lost Redis connection would stop every stream's events without a word.
    if not task.cancelled() and task.exception() is not None:
        log.error("Redis subscription ended: %r", task.exception())


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub()
    # Subscribed before uvicorn opens its port: no client can connect before events flow.
    await pubsub.psubscribe(PREFIX + "*")
    task = asyncio.create_task(hub.follow(pubsub))
    task.add_done_callback(report_end)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await client.aclose()


app = Starlette(routes=[Route("/sse/{stream}/", sse)], lifespan=lifespan)
