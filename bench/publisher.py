"""Publishes numbered events for the benchmark, from its own process, with each system's own API.

Run by the system's virtualenv (cwd: the system's project), driven by lines on stdin:
    pub TAG N RATE   publish N events at RATE events/s; replies "done TAG SECONDS"
    quit
Each event's data is JSON {"p": TAG, "s": seq, "t": time.time()} and each is its own publish
call (several calls per tick when the rate asks for it).

    python publisher.py ours|naive|eventstream|starlette|ceiling STREAM [REDIS_URL]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable


def make_emitter(kind: str, stream: str) -> Callable[[list[dict]], Awaitable[None]]:
    if kind in ("ceiling", "starlette"):  # both follow a Redis pub/sub pattern, <kind>:*
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        channel = f"{kind}:{stream}"

        async def emit(batch: list[dict]) -> None:
            pipe = client.pipeline(transaction=False)
            for data in batch:
                pipe.publish(channel, json.dumps(data))
            pipe.execute()

        return emit

    import django

    sys.path.insert(0, os.getcwd())  # the system's project, not this script's folder
    django.setup()
    if kind == "ours":
        from sse import publish

        async def emit(batch: list[dict]) -> None:
            for data in batch:
                publish(stream, "tick", data)

    elif kind == "naive":
        from channels.layers import get_channel_layer

        layer = get_channel_layer()

        async def emit(batch: list[dict]) -> None:
            for data in batch:
                await layer.group_send(stream, {"type": "sse.event", "event": "tick", "data": json.dumps(data)})

    elif kind == "eventstream":
        from django_eventstream import send_event

        async def emit(batch: list[dict]) -> None:
            for data in batch:
                send_event(stream, "tick", data)

    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return emit


async def main() -> None:
    kind, stream = sys.argv[1], sys.argv[2]
    emit = make_emitter(kind, stream)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            return
        _, tag, n, rate = words
        count, per_second = int(n), float(rate)
        started = time.monotonic()
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic() - started) * per_second) + 1)
            if due > sent:
                await emit([{"p": tag, "s": seq, "t": time.time()} for seq in range(sent, due)])
                sent = due
            if sent < count:
                await asyncio.sleep(max(0.0, started + sent / per_second - time.monotonic()))
        print(f"done {tag} {time.monotonic() - started:.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
