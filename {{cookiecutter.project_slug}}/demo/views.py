"""The demo page, and the small publish endpoint its form posts to."""

import json
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from sse import apublish
from sse.auth import is_public
from sse.broker import BrokerUnavailable, Entry, get_broker
from sse.encoding import InvalidEvent, validate_stream

PROJECT_NAME = {{ cookiecutter.project_name|tojson|replace('\\"', '\\u0022') }}
STREAMS = ["notifications", "chat"]
MAX_BODY = 64 * 1024
HISTORY = 20  # events per stream rendered with the page, before it goes live


def event_context(entry: Entry) -> dict[str, Any]:
    """One logged event as the ``demo/index.html#event`` partial shows it."""
    event_id, name, data = entry
    try:
        value = json.loads(data)
    except ValueError:  # a text= event (HTML): shown as its text, escaped like any string
        value = data
    return {
        "id": event_id,
        "name": name,
        # A Redis Stream id starts with the publish time in milliseconds.
        "time": datetime.fromtimestamp(int(event_id.split("-")[0]) / 1000, tz=UTC),
        "data": value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False),
    }


async def history(stream: str) -> dict[str, Any]:
    """The newest events of ``stream``, newest first as the page lists them."""
    try:
        entries = await get_broker().arecent(stream, HISTORY)
    except BrokerUnavailable:
        entries = []  # the page still loads; its streams show the outage
    return {
        "stream": stream,
        "events": [event_context(entry) for entry in reversed(entries)],
        "last_id": entries[-1][0] if entries else "",
    }


async def can_publish(request: HttpRequest) -> bool:
    """Only in development, or for staff: the demo endpoint is never an open relay."""
    if settings.SSE_DEMO_PUBLISH:
        return True
    user = await request.auser()
    return user.is_authenticated and user.is_staff


@require_GET
@ensure_csrf_cookie
async def index(request: HttpRequest) -> HttpResponse:
    context = {
        "project_name": PROJECT_NAME,
        "streams": STREAMS,
        "feeds": [await history(stream) for stream in STREAMS],
        "can_publish": await can_publish(request),
        "debug": settings.DEBUG,
    }
    return render(request, "demo/index.html", context)


@require_POST
async def publish_view(request: HttpRequest) -> HttpResponse:
    if not await can_publish(request):
        return JsonResponse({"error": "publishing from the browser is off (DEBUG or staff only)"}, status=403)
    if len(request.body) > MAX_BODY:
        return JsonResponse({"error": f"request larger than {MAX_BODY} bytes"}, status=413)
    try:
        body = json.loads(request.body)
        stream, event, data = body["stream"], body.get("event") or "message", body.get("data")
        validate_stream(stream)
        if not is_public(stream):
            # Anyone may use this form in development: private (user.<id>) and other
            # non-public streams are not for it, or a visitor could forge their events.
            return JsonResponse({"error": f"the demo publishes to public streams only, not {stream!r}"}, status=403)
        event_id = await apublish(stream, event, data)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, InvalidEvent) else "expected JSON {stream, event, data}"
        return JsonResponse({"error": message}, status=400)
    except BrokerUnavailable:
        return JsonResponse({"error": "event broker unavailable"}, status=503)
    return JsonResponse({"id": event_id})
