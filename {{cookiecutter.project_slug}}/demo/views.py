"""The demo page, and the small publish endpoint its form posts to."""

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from sse import apublish
from sse.auth import is_public
from sse.broker import BrokerUnavailable
from sse.encoding import InvalidEvent, validate_stream

PROJECT_NAME = {{ cookiecutter.project_name|tojson|replace('\\"', '\\u0022') }}
STREAMS = ["notifications", "chat"]
MAX_BODY = 64 * 1024


def can_publish(request: HttpRequest) -> bool:
    """Only in development, or for staff: the demo endpoint is never an open relay."""
    return settings.SSE_DEMO_PUBLISH or (request.user.is_authenticated and request.user.is_staff)


@require_GET
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    context = {
        "project_name": PROJECT_NAME,
        "streams": STREAMS,
        "can_publish": can_publish(request),
        "debug": settings.DEBUG,
    }
    return render(request, "demo/index.html", context)


@require_POST
async def publish_view(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    if not (settings.SSE_DEMO_PUBLISH or (user.is_authenticated and user.is_staff)):
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
