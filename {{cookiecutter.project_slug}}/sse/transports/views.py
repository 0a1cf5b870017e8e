"""async_view mode: the SSE endpoint is a plain Django async view.

It runs under the full middleware stack, so it gets host validation, the
session user, SecurityMiddleware headers and HTTPS redirects like any view.
``config.asgi`` serves it without a per-request thread.
"""

from django.http import HttpRequest, HttpResponse

from sse.transports.endpoint import stream_response


async def stream(request: HttpRequest, stream: str) -> HttpResponse:
    return await stream_response(request, stream)


async def streams(request: HttpRequest) -> HttpResponse:
    return await stream_response(request)
