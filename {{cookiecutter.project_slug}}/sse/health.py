"""``GET /health/``: is this process able to serve streams? For load balancers and probes.

It opens no stream. 200 when the broker is reachable, 503 when Redis is not.
"""

import asyncio

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from sse.broker import get_broker, get_hub
from sse.redis_backend import RedisBroker


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    broker, hub = get_broker(), get_hub()
    body = {
        "broker": "redis" if isinstance(broker, RedisBroker) else "memory",
        "redis": None,
        "streams": hub.open,  # open streams in this process
        "stream_names": sum(1 for subs in hub.subscribers.values() if subs),
        # Streams the hub writes straight to the socket (Daphne, client keeping up).
        "direct": sum(1 for subs in hub.subscribers.values() for sub in subs if sub.write is not None),
        "tasks": len(asyncio.all_tasks()),
    }
    if isinstance(broker, RedisBroker):
        try:
            async with asyncio.timeout(2):
                await broker.aclient().ping()
            body["redis"] = "ok"
        except Exception:  # any failure means: not serving events now
            body["redis"] = "unavailable"
    for feed in hub.feeds:  # channels mode: the channel layer's Redis, which streams need too
        if hasattr(feed, "health"):
            body["channel_layer"] = await feed.health()
    ok = "unavailable" not in (body["redis"], body.get("channel_layer"))
    return JsonResponse({"status": "ok" if ok else "unavailable", **body}, status=200 if ok else 503)
