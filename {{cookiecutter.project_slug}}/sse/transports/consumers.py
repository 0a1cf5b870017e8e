"""channels mode: the SSE endpoint is a Channels ``AsyncHttpConsumer``.

Routed before Django, a consumer skips Django's middleware, so this one applies
what a view would get: ``ALLOWED_HOSTS`` validation, ``SecurityMiddleware``
(HTTPS redirect, security headers), and the session user from Django's own
session and authentication middleware. Those are lazy: a public stream never
reads the session store. (Channels' ``AuthMiddlewareStack`` would load both for
every connection and keep three wrappers and scope copies alive per stream.)
The response itself comes from the same code as in async_view mode.
"""

import asyncio
import functools
import logging
from http import HTTPStatus
from io import BytesIO
from typing import Any

from channels.db import aclose_old_connections
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.http import Http404, HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.http.response import ResponseHeaders
from django.middleware.security import SecurityMiddleware
from django.utils.log import log_response

from sse.security.auth import may_have_used_database
from sse.transports.daphne import guard
from sse.transports.endpoint import close_frames, plain, stream_response


def no_response(request: HttpRequest) -> HttpResponse:
    return HttpResponse()  # the middleware above only process requests; nothing to wrap


@functools.cache
def middleware() -> tuple[SessionMiddleware, AuthenticationMiddleware, SecurityMiddleware]:
    """The three middleware a stream goes through, built once: each reads settings when built.

    Building them per stream (importing the session engine, reading a dozen settings)
    was 4 % of the CPU of opening one.
    """
    return SessionMiddleware(no_response), AuthenticationMiddleware(no_response), SecurityMiddleware(no_response)


def _rebuild(**kwargs: Any) -> None:
    middleware.cache_clear()  # a test changed a setting


setting_changed.connect(_rebuild)


def refusal(request: HttpRequest, exc: Exception) -> HttpResponse | None:
    """What Django's handler answers to ``exc`` (a 4xx), as a short plain response; None for a bug.

    Django's handler is not in front of a consumer, so a bad request (too many
    query fields, a bad Host, ...) would otherwise be a 500 with a traceback.
    One log line on the logger Django would use, without the traceback: the
    client's mistake, not the server's.
    """
    logger = logging.getLogger("django.request")
    if isinstance(exc, Http404):
        status = 404
    elif isinstance(exc, PermissionDenied):
        status = 403
    elif isinstance(exc, BadRequest | MultiPartParserError | SuspiciousOperation):
        status = 400
        if isinstance(exc, SuspiciousOperation):
            logger = logging.getLogger(f"django.security.{type(exc).__name__}")
    else:
        return None
    response = plain(status, HTTPStatus(status).phrase)
    message = str(exc) or response.reason_phrase
    log_response("%s: %s", message, request.path, response=response, request=request, logger=logger)
    return response


class SSEConsumer(AsyncHttpConsumer):
    # No channel-layer channel per connection: the hub reads the layer once per
    # process (sse.backends.channel_layer). An alias with no layer makes AsyncConsumer skip its own.
    channel_layer_alias = None
    task: asyncio.Task[None] | None = None

    async def http_request(self, message: dict) -> None:
        # Not AsyncHttpConsumer.handle(): a handle() that returns ends the consumer,
        # and one that loops never sees http.disconnect.
        if message.get("more_body"):
            return
        request = ASGIRequest(self.scope, BytesIO())
        try:
            response = await self.respond(request)
        except Exception as exc:
            response = refusal(request, exc)
            if response is None:
                raise
        if may_have_used_database(request):
            # What Django does after a request, for the connection the session or
            # policy opened in its one sync thread (see dispatch).
            await aclose_old_connections()
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()]
        await self.send_headers(status=response.status_code, headers=headers)
        if response.streaming:
            # The head is sent: the response stays, for hours, only to be closed.
            response.headers = ResponseHeaders({})
            self.task = asyncio.create_task(self.pump(response))
        else:
            await self.send_body(response.content)

    async def respond(self, request: HttpRequest) -> HttpResponse:
        session, authentication, security = middleware()
        session.process_request(request)
        authentication.process_request(request)
        request.get_host()  # DisallowedHost: a 400, as in Django
        stream = self.scope["url_route"]["kwargs"].get("stream")  # none for /sse/?stream=a&stream=b
        response = security.process_request(request) or await stream_response(request, stream)
        return security.process_response(request, response)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            scope["sse.send"] = send  # Daphne's own, for sse.transports.daphne.direct_writer
            if self.channel_layer_alias is not None:  # a subclass that wants a channel of its own
                await super().__call__(scope, receive, guard(send))
                return
            # AsyncConsumer.__call__ without a channel layer: it would wrap every
            # receive in a task and an asyncio.wait, about 2 KB for as long as the
            # stream is open. One message at a time, in order, as there.
            self.scope, self.channel_layer, self.base_send = scope, None, guard(send)
            try:
                while True:
                    await self.dispatch(await receive())
            except StopConsumer:
                pass
        finally:
            # On shutdown Daphne cancels the consumer, not its tasks. Let go of the task:
            # its cancellation's traceback holds this consumer, a cycle that would keep the
            # whole request until a full pass of the garbage collector.
            task, self.task = self.task, None
            if task is not None:
                task.cancel()

    async def pump(self, response: HttpResponse) -> None:
        try:
            async for chunk in response.streaming_content:
                await self.send_body(chunk, more_body=True)
            await self.send_body(b"")  # the server ended it (slow client): clean close
        finally:
            await close_frames(self.scope)
            response.close()

    async def dispatch(self, message: dict) -> None:
        # AsyncConsumer.dispatch (for every message) and, since Channels 4.2,
        # AsyncHttpConsumer.http_disconnect each hop to Django's one sync thread to
        # close old database connections: two hand-offs per stream, the largest part
        # of opening one, and 10,000 clients leaving at once queue there for seconds.
        # A stream needs the database only when it reads a session or runs a custom
        # policy, and http_request closes connections after that.
        if message["type"] == "http.request":
            await self.http_request(message)
        elif message["type"] == "http.disconnect":
            await self.disconnect()
            raise StopConsumer
        else:
            await super().dispatch(message)

    async def disconnect(self) -> None:
        if self.task is not None:
            self.task.cancel()
