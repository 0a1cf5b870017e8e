"""``GET /health/``: is this process able to serve streams? For load balancers and probes.

It opens no stream. 200 when the broker is reachable, 503 when Redis is not.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from sse.hub import get_hub

PATH = "/health/"  # as in config/urls.py


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    hub = get_hub()
    body = {
        "broker": hub.broker.name,
        "redis": await hub.broker.ahealth(),  # None: nothing to reach (memory)
        "streams": hub.open,  # open streams in this process
        "stream_names": sum(1 for subs in hub.subscribers.values() if subs),
        # Streams the hub writes straight to the socket (Daphne, client keeping up).
        "direct": sum(1 for subs in hub.subscribers.values() for sub in subs if sub.write is not None),
        "tasks": len(asyncio.all_tasks()),
    }
    for feed in hub.feeds:  # channels mode: the channel layer's Redis, which streams need too
        if hasattr(feed, "health"):
            body["channel_layer"] = await feed.health()
    ok = "unavailable" not in (body["redis"], body.get("channel_layer"))
    return JsonResponse({"status": "ok" if ok else "unavailable", **body}, status=200 if ok else 503)


class HealthProbe:
    """Middleware that answers ``/health/`` before Django's Host check (put it right after SecurityMiddleware).

    A load balancer probes each instance at its own address (``127.0.0.1:9095``),
    which is not one of ``ALLOWED_HOSTS``. Host validation protects the URLs a
    response builds from the Host header; this one builds none, so it may answer
    whatever the Host. Every other path is validated as before.
    ``SECURE_REDIRECT_EXEMPT`` spares it the HTTPS redirect.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.acall(request)
        if request.path_info == PATH:
            return async_to_sync(health)(request)  # as Django runs an async view without ASGI
        return self.get_response(request)

    async def acall(self, request: HttpRequest) -> HttpResponse:
        if request.path_info == PATH:
            return await health(request)
        return await self.get_response(request)
