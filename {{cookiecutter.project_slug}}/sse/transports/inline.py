"""Django's own middleware on the stream path without a thread hop per hook (async_view mode).

Django runs every ``MiddlewareMixin`` hook of an async request through
``sync_to_async(thread_sensitive=True)``: with the default stack that is a dozen
hand-offs to one shared thread per stream opened, and the GIL hand-off between that
thread and the event loop made opening streams about ten times slower than the
request itself. The hooks of the Django middleware listed here do no I/O on a
stream request (they read headers and settings, and set lazy objects), so they run
inline; where one could touch the database (a session to save, the CSRF secret kept
in the session) it still goes to the thread. Any other middleware, subclasses
included, runs exactly as Django runs it. The messages storage is built on first
use (:data:`DEFERRED`): a stream never reads it.

The request signals go to the thread only for receivers other than Django's own
(:data:`OWN_RECEIVERS`): those two hand-offs were a quarter of the CPU of opening and
closing a stream. What they did there, closing the thread's database connections, is
done once the stream has opened, when it used that thread. On the loop's thread the
database ones are skipped (:data:`LOOP_NOOPS`).

:meth:`StreamHandler.handle` is Django's ``ASGIHandler.handle`` in the stream's
one task: Django's runs two more (one waiting for the disconnect, one for the
response) and an ``asyncio.wait``, about 3 KB for as long as the stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import types
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponseBase
from django.http.response import ResponseHeaders
from django.urls import set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.functional import SimpleLazyObject, empty

from sse.security.auth import may_have_used_database
from sse.transports.daphne_server import Inbox

# Django's receivers of request_started and request_finished. On the event loop's thread
# the database ones find no connection (connections are per thread, and this one may not
# open any); reset_urlconf and close_caches act on the request's context, as in the thread.
OWN_RECEIVERS = frozenset({reset_queries, close_old_connections, reset_urlconf, close_caches})


def _session_response_is_pure(request: HttpRequest) -> bool:
    # SessionMiddleware saves only a modified session (or every one, if asked to).
    session = getattr(request, "session", None)
    return not settings.SESSION_SAVE_EVERY_REQUEST and not getattr(session, "modified", False)


def _always(request: HttpRequest) -> bool:
    return True


def _csrf_not_in_session(request: HttpRequest) -> bool:
    return not settings.CSRF_USE_SESSIONS  # else reading the secret loads the session


# Exact classes (a subclass may add I/O): which hooks may run inline, and when.
INLINE: dict[str, dict[str, Callable[[HttpRequest], bool]]] = {
    "django.middleware.security.SecurityMiddleware": {"process_request": _always, "process_response": _always},
    "django.middleware.common.CommonMiddleware": {"process_request": _always, "process_response": _always},
    "django.middleware.clickjacking.XFrameOptionsMiddleware": {"process_response": _always},
    "django.middleware.csrf.CsrfViewMiddleware": {
        "process_request": _csrf_not_in_session,
        "process_view": _csrf_not_in_session,
        "process_response": _csrf_not_in_session,
    },
    "django.contrib.sessions.middleware.SessionMiddleware": {
        "process_request": _always,  # the store loads lazily, on first access
        "process_response": _session_response_is_pure,
    },
    "django.contrib.auth.middleware.AuthenticationMiddleware": {"process_request": _always},  # a lazy user
    "django.contrib.messages.middleware.MessageMiddleware": {
        "process_request": _always,
        "process_response": _session_response_is_pure,  # messages may go to the session
    },
}


def _messages_on_first_use(self: MessageMiddleware, request: HttpRequest) -> None:
    # MessageMiddleware builds the storage at once: two storages and a cookie signer,
    # ~35 µs of the ~0.8 ms of CPU of opening a stream, which never reads a message.
    request._messages = SimpleLazyObject(functools.partial(default_storage, request))


def _store_messages_if_used(self: MessageMiddleware, request: HttpRequest, response: HttpResponseBase) -> Any:
    messages = getattr(request, "_messages", None)
    if type(messages) is SimpleLazyObject and messages._wrapped is empty:
        return response  # never built: nothing added or read, so Django's update() would store nothing
    return MessageMiddleware.process_response(self, request, response)


# Exact classes: hooks replaced on the stream handler's own instances, same outcome, less work.
DEFERRED: dict[type, dict[str, Callable]] = {
    MessageMiddleware: {"process_request": _messages_on_first_use, "process_response": _store_messages_if_used},
}


# Django opens no database connection on the event loop's thread (connecting is
# async-unsafe: SynchronousOnlyOperation) unless DJANGO_ALLOW_ASYNC_UNSAFE is set, so
# there these find none to reset or close. Finding that out went through every database
# alias and asgiref's Local three times per stream, ~4 % of the CPU of a reconnect storm.
LOOP_NOOPS = frozenset({reset_queries, close_old_connections})


def inline_receivers(signal: Signal, sender: type) -> list[Callable] | None:
    """The receivers of ``signal`` to call on the loop's thread; None if one is not Django's own."""
    sync, asynchronous = signal._live_receivers(sender)  # what Signal.asend reads
    if asynchronous or not all(receiver in OWN_RECEIVERS for receiver in sync):
        return None
    if os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        return sync
    return [receiver for receiver in sync if receiver not in LOOP_NOOPS]


def send_inline(signal: Signal, sender: type, receivers: list[Callable], **named: Any) -> None:
    for receiver in receivers:
        receiver(signal=signal, sender=sender, **named)  # as Signal.send calls them


async def send_signal(signal: Signal, sender: type, **named: Any) -> None:
    """``signal.asend``, without the hand-off to the sync thread when only Django's receivers listen."""
    receivers = inline_receivers(signal, sender)
    if receivers is None:
        await signal.asend(sender=sender, **named)
    else:
        send_inline(signal, sender, receivers, **named)


def close_inline(response: HttpResponseBase, receivers: list[Callable]) -> None:
    """``HttpResponseBase.close()``, its request_finished sent to ``receivers`` on this thread."""
    if type(response).close is not HttpResponseBase.close:
        response.close()  # a close() of its own: as it is
        return
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):  # as Django's close()
            closer()
    response._resource_closers.clear()
    response.closed = True
    send_inline(signals.request_finished, response._handler_class, receivers)


@functools.cache
def _class_rules(cls: type) -> dict[str, Callable[[HttpRequest], bool]] | None:
    return INLINE.get(f"{cls.__module__}.{cls.__qualname__}")


def _rules(instance: object) -> dict[str, Callable[[HttpRequest], bool]] | None:
    return _class_rules(type(instance))  # for every hook of every stream: the name once per class


async def _call_hook(rules: dict, name: str, hook: Callable, request: HttpRequest, *args: Any) -> Any:
    allowed = rules.get(name)
    if allowed is not None and allowed(request):
        return hook(request, *args)
    return await sync_to_async(hook, thread_sensitive=True)(request, *args)


async def _acall(self: Any, request: HttpRequest) -> HttpResponseBase:
    # MiddlewareMixin.__acall__, with each hook inline where its rule allows.
    rules = _rules(self)
    response = None
    if hasattr(self, "process_request"):
        response = await _call_hook(rules, "process_request", self.process_request, request)
    response = response or await self.get_response(request)
    if hasattr(self, "process_response"):
        response = await _call_hook(rules, "process_response", self.process_response, request, response)
    return response


class Disconnect:
    """Cancels a stream's task when the client's disconnect arrives, until disarmed."""

    __slots__ = ("armed", "fired", "task")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.armed = True
        self.fired = False

    def __call__(self, message: asyncio.Future) -> None:
        if self.armed and not message.cancelled():
            self.fired = True
            self.task.cancel()


class StreamHandler(ASGIHandler):
    """Django's ASGI handler with the listed middleware hooks inline, in one task per request."""

    threaded = False  # whether a middleware outside INLINE runs its hooks in the sync thread

    async def handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        """``ASGIHandler.handle``, the same steps and signals, without its two extra tasks.

        Django races the response against a task waiting for the disconnect.
        Here the disconnect cancels this task instead, from a callback: a view
        sees the same ``CancelledError`` at the same point, a response already
        started is closed the same way. A cancellation from the server (its
        shutdown) is handled as a disconnect too, then raised on.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        await send_signal(signals.request_started, self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return
        disconnect = Disconnect(asyncio.current_task())
        inbox = getattr(receive, "__self__", None)
        # Under Daphne, the connection's Inbox says when the disconnect arrives without a task.
        message = inbox.watch() if isinstance(inbox, Inbox) else asyncio.ensure_future(receive())
        message.add_done_callback(disconnect)
        response = None
        try:
            response = await self.run_get_response(request)
            if self.threaded or may_have_used_database(request):
                # What request_finished does in the thread, now rather than in hours.
                await sync_to_async(close_old_connections)()
            if response.streaming and request.close in response._resource_closers:
                # Django closes the request (its uploaded files) with the response,
                # which keeps it (META, session, messages, body file: some 7 KB)
                # for as long as a stream is open. An event stream reads no upload.
                response._resource_closers.remove(request.close)
                request.close()
            del request
            body_file.close()
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not disconnect.fired:
                raise
            asyncio.current_task().uncancel()  # the client left: handled, as Django does
        finally:
            disconnect.armed = False
            message.cancel()
            if response is None:
                await send_signal(signals.request_finished, self.__class__)
            elif (receivers := inline_receivers(signals.request_finished, self.__class__)) is not None:
                close_inline(response, receivers)  # the request's closers (files of no upload) and the signal
            else:
                await sync_to_async(response.close)()
            body_file.close()

    async def send_response(self, response: HttpResponseBase, send: Callable) -> None:
        if not response.streaming:
            await super().send_response(response, send)
            return

        async def send_then_forget_head(message: dict) -> None:
            if message["type"] != "http.response.start":
                await send(message)
                return
            # The head goes out, and the response stays for hours only to be streamed and
            # closed: Django's send_response would keep both copies of its headers (~2 KB),
            # its list until the stream ends. The server gets a list of its own.
            headers = message["headers"]
            await send({**message, "headers": headers[:]})
            headers.clear()
            response.headers = ResponseHeaders({})

        await super().send_response(response, send_then_forget_head)

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async)
        if not is_async:
            return
        # Django builds the chain as convert_exception_to_response(instance), each
        # wrapper keeping its instance in __wrapped__ and the instance the next
        # wrapper in get_response: follow it and give the listed ones an inline __acall__.
        handler = self._middleware_chain
        self.threaded = False
        while (instance := getattr(handler, "__wrapped__", None)) is not None:
            if _rules(instance) is not None and getattr(instance, "async_mode", False):
                instance.__acall__ = types.MethodType(_acall, instance)
                for name, hook in DEFERRED.get(type(instance), {}).items():
                    setattr(instance, name, types.MethodType(hook, instance))
            elif instance != self._get_response_async and (
                isinstance(instance, MiddlewareMixin)
                or not iscoroutinefunction(instance)
                or not hasattr(instance, "get_response")  # the walk ends here: what follows is unknown
            ):
                self.threaded = True  # Django runs its hooks, or all of it, in the sync thread
            handler = getattr(instance, "get_response", None)

    def adapt_method_mode(
        self,
        is_async: bool,
        method: Callable,
        method_is_async: bool | None = None,
        debug: bool = False,
        name: str | None = None,
    ) -> Callable:
        instance = getattr(method, "__self__", None)
        rules = _rules(instance) if instance is not None else None
        if is_async and rules is not None and getattr(method, "__name__", "") == "process_view":
            hook = method

            async def process_view(request: HttpRequest, *args: Any) -> Any:
                return await _call_hook(rules, "process_view", hook, request, *args)

            return process_view
        return super().adapt_method_mode(is_async, method, method_is_async, debug, name)
