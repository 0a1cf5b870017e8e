"""The demo page, and the small publish endpoint its form posts to."""

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from sse import apublish
from sse.backends import BrokerUnavailable, Entry, get_broker
from sse.encoding import InvalidEvent, validate_stream
from sse.security.auth import is_public

PROJECT_NAME = {{ cookiecutter.project_name|tojson|replace('\\"', '\\u0022') }}
STREAMS = ["notifications", "chat"]
MAX_BODY = 64 * 1024
HISTORY = 20  # events per stream rendered with the page, before it goes live
HISTORY_WAIT = 1.0  # seconds the page waits for that history


def shown(data: str) -> str:
    """An event's data as the page shows it: a JSON string as is, other JSON indented."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return data  # not JSON (a text event): its text, which the template escapes
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        # Anyone who may publish can send a lone surrogate (valid JSON: "\ud800"). A page is
        # UTF-8, which has no such character: show the JSON escapes instead of failing the page.
        return json.dumps(value, indent=2)
    return text


def event_context(entry: Entry) -> dict[str, Any]:
    """One logged event as the ``demo/index.html#event`` partial shows it."""
    event_id, name, data = entry
    return {
        "id": event_id,
        "name": name,
        # A Redis Stream id starts with the publish time in milliseconds.
        "time": datetime.fromtimestamp(int(event_id.split("-")[0]) / 1000, tz=UTC),
        "data": shown(data),
    }


async def recent(stream: str) -> list[Entry]:
    try:
        return await get_broker().arecent(stream, HISTORY)
    except BrokerUnavailable:
        return []  # the page still loads; its streams show the outage


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # read, so asyncio does not log it as never retrieved


async def histories(streams: list[str]) -> list[dict[str, Any]]:
    """Each stream's newest events, newest first as the page lists them.

    A Redis that accepts connections but does not answer would hold the page for the
    socket time-out: past HISTORY_WAIT the page comes without history instead.
    """
    fetch = asyncio.ensure_future(asyncio.gather(*(recent(stream) for stream in streams)))
    done, _ = await asyncio.wait({fetch}, timeout=HISTORY_WAIT)
    if done:
        found = fetch.result()
    else:
        fetch.cancel()
        fetch.add_done_callback(_retrieve)  # it ends later, maybe with the cancellation
        found = [[] for _ in streams]
    return [
        {
            "stream": stream,
            "events": [event_context(entry) for entry in reversed(entries)],
            "last_id": entries[-1][0] if entries else "",
        }
        for stream, entries in zip(streams, found, strict=True)
    ]


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
        "feeds": await histories(STREAMS),
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
