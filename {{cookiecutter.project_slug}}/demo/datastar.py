"""The Datastar demo page: a list, a status line and a signal, patched live from one stream."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from demo.views import PROJECT_NAME, can_publish
from sse.backends import BrokerUnavailable, get_broker
from sse.datastar import apublish_elements, apublish_signals

STREAM = "datastar"
TEMPLATE = "demo/datastar.html"
MAX_MESSAGE = 500


@require_GET
@ensure_csrf_cookie
async def page(request: HttpRequest) -> HttpResponse:
    try:
        # The page goes live from the newest event, so nothing published after it was rendered is missed.
        last_id = await get_broker().alast_id(STREAM)
    except BrokerUnavailable:
        last_id = None
    context = {
        "project_name": PROJECT_NAME,
        "stream": STREAM,
        "last_id": last_id or "",
        "can_publish": await can_publish(request),
        "max_message": MAX_MESSAGE,
    }
    return render(request, TEMPLATE, context)


@require_POST
async def publish(request: HttpRequest) -> HttpResponse:
    """Datastar's ``@post`` sends the page's signals as JSON; ``message`` is the one used."""
    from datastar_py.django import read_signals

    if not await can_publish(request):
        return JsonResponse({"error": "publishing from the browser is off (DEBUG or staff only)"}, status=403)
    try:
        signals = read_signals(request) or {}
    except ValueError:
        return JsonResponse({"error": "expected Datastar's JSON signals"}, status=400)
    message = signals.get("message") if isinstance(signals, dict) else None
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE:
        return JsonResponse({"error": f"message must be 1-{MAX_MESSAGE} characters"}, status=400)
    context = {"text": message, "at": timezone.now()}
    try:
        # The template autoescapes the message: every reader of the stream gets this HTML.
        await apublish_elements(
            STREAM, template=f"{TEMPLATE}#item", context=context, selector="#ds-items", mode="append"
        )
        await apublish_elements(STREAM, template=f"{TEMPLATE}#status", context=context)
        await apublish_signals(STREAM, {"last": message})
    except BrokerUnavailable:
        return JsonResponse({"error": "event broker unavailable"}, status=503)
    # A JSON answer to @post is a signals patch for this page alone: it clears the input.
    return JsonResponse({"message": ""})
