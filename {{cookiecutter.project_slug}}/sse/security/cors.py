"""Cross-origin access to the SSE endpoint, for pages served from other origins.

``SSE_CORS_ORIGINS`` lists exact origins (``https://app.example.com``). A request
from one of them gets ``Access-Control-Allow-Origin: <that origin>`` with
``Access-Control-Allow-Credentials: true``, so ``new EventSource(url,
{withCredentials: true})`` sends its cookies. Never ``*``: with credentials it
would let any site read a signed-in user's streams (sse.ops.checks rejects it).

A request with an ``Origin`` that is neither listed nor this site's own gets a
403 and no stream. No ``Origin`` (same-origin GET, curl, servers) is not a
cross-origin request and is left to the stream's own authorization.
"""

from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

from sse.conf import setting

# What fetch()-based clients send besides the safelisted headers.
ALLOW_HEADERS = "Last-Event-ID, Cache-Control, Accept"
MAX_AGE = "600"  # seconds a browser may cache a preflight answer (Chromium caps it at 7200)


def origins() -> list[str]:
    return list(setting("SSE_CORS_ORIGINS", []))


class Refused(ValueError):
    """An origin that may not read; the message is safe to show."""


def check(request: HttpRequest) -> str | None:
    """The listed origin to answer with, or None when no CORS headers are due; Refused (403) else."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if origin in origins():
        return origin
    if origin == f"{request.scheme}://{request.get_host()}":
        return None  # same origin
    raise Refused(f"origin {origin[:100]!r} may not read these streams: it is not in SSE_CORS_ORIGINS")


def preflight() -> HttpResponse:
    """The answer to ``OPTIONS``: which method and headers a cross-origin GET may use."""
    response = HttpResponse(status=204)
    response["Allow"] = "GET, OPTIONS"
    response["Access-Control-Allow-Methods"] = "GET"
    response["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response["Access-Control-Max-Age"] = MAX_AGE
    return response


def allow(response: HttpResponse, origin: str | None) -> None:
    """Add the CORS headers for ``origin`` (a listed one) to any answer, errors included.

    Errors too: a cross-origin client can only read the status of a response
    that carries them, and the JS client stops on 403/404 instead of retrying.
    """
    if origins():
        patch_vary_headers(response, ["Origin"])  # caches must not serve one origin's answer to another
    if origin is not None:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Credentials"] = "true"
