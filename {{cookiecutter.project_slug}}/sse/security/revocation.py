"""Open streams that are not public stay readable only while their reader may read them.

Access is decided when a stream opens (``SSE_AUTHORIZE``, tokens); afterwards:

- at logout, password change, deactivation or deletion of a user, every process
  closes that user's open non-public streams at once. The processes share only the
  broker, so the notice travels through it: a pub/sub channel outside the stream
  namespace with Redis, the hubs directly in memory mode. The client reconnects
  and its new request is authorized again (a 403 then ends it for good);
- every ``SSE_RECHECK_INTERVAL`` seconds (0: never), each open non-public stream is
  authorized again with a fresh session and user, and closed if no longer allowed.
  That also covers what no signal tells (a session deleted from the store, a
  notice lost during a Redis outage, a custom policy's own rules).

Public streams (``SSE_PUBLIC_STREAMS``) are never registered here: they cost nothing,
and nothing here runs per event.
"""

import asyncio
import logging
from typing import Any

from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from sse.conf import setting
from sse.hub import Hub, Subscription
from sse.security import access, tokens
from sse.security.auth import authorize

log = logging.getLogger("sse")

REVOKE = "revoke"  # control message: "revoke\n<user pk>"


class Guarded:
    """One connection's non-public streams, and how it was allowed to read them."""

    __slots__ = ("by_policy", "record", "request", "session_user", "subs", "token_user")

    def __init__(
        self,
        request: HttpRequest,
        subs: list[Subscription],
        record: access.Record,
        by_policy: list[str],
        session_user: str | None,
        token_user: str | None,
    ) -> None:
        self.request = request
        self.subs = subs
        self.record = record
        self.by_policy = by_policy  # re-authorized with SSE_AUTHORIZE
        self.session_user = session_user
        self.token_user = token_user  # a token's user must still exist and be active

    def users(self) -> set[str]:
        return {pk for pk in (self.session_user, self.token_user) if pk is not None}

    def end(self, why: str) -> None:
        log.info("sse: closing %s of user %s: %s", self.record.fields["stream"], ",".join(self.users()) or "-", why)
        self.record.ended = "revoked"
        for sub in self.subs:
            sub.close()


class Registry:
    """The guarded connections of one hub (one event loop)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.guarded: set[Guarded] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, guarded: Guarded) -> None:
        self.guarded.add(guarded)
        interval = setting("SSE_RECHECK_INTERVAL", 300.0)
        if interval and (self.task is None or self.task.done()):
            self.task = self.hub.spawn(self.recheck_every(interval))

    def discard(self, guarded: Guarded) -> None:
        self.guarded.discard(guarded)

    def revoke(self, user: str, why: str) -> None:
        for guarded in [g for g in self.guarded if user in g.users()]:
            self.guarded.discard(guarded)
            guarded.end(why)

    async def recheck_every(self, interval: float) -> None:
        while self.guarded:
            await asyncio.sleep(interval)
            for guarded in list(self.guarded):
                if guarded in self.guarded and not await allowed(guarded):
                    self.guarded.discard(guarded)
                    guarded.end("no longer allowed (re-check)")

    def received(self, message: str) -> None:
        """A control message from the broker (any process, this one included)."""
        kind, _, user = message.partition("\n")
        if kind == REVOKE and user:
            self.revoke(user, "access revoked (logout, password change, deactivated or deleted)")


def registry(hub: Hub) -> Registry:
    """The hub's registry, kept on the hub: it lives and goes with that event loop.

    It hears the hub's control messages from when it exists: before, this hub
    had no guarded stream to close.
    """
    found = getattr(hub, "revocations", None)
    if found is None:
        found = hub.revocations = Registry(hub)  # type: ignore[attr-defined]
        hub.on_control.append(found.received)
    return found


def no_response(request: HttpRequest) -> HttpResponse:
    return HttpResponse()  # the middleware below only process the request


def refresh(request: HttpRequest) -> None:
    """Forget the session and user this request loaded: the next read sees the store as it is now."""
    for cached in ("_cached_user", "_acached_user"):
        request.__dict__.pop(cached, None)
    SessionMiddleware(no_response).process_request(request)
    AuthenticationMiddleware(no_response).process_request(request)


async def allowed(guarded: Guarded) -> bool:
    try:
        if guarded.token_user is not None and not await tokens.user_active(guarded.token_user):
            return False
        if guarded.by_policy:
            refresh(guarded.request)
            for stream in guarded.by_policy:
                if not await authorize(guarded.request, stream):
                    return False
    except Exception:
        # A database hiccup must not end every private stream at once: try again next time.
        log.warning("sse: could not re-check access to %s", guarded.record.fields["stream"], exc_info=True)
    return True


def guard(
    hub: Hub,
    request: HttpRequest,
    subs: list[Subscription],
    record: access.Record,
    by_policy: list[str],
    session_user: str | None,
    token_user: str | None,
) -> Guarded | None:
    """Register a connection's non-public streams; None when there is nothing to watch."""
    if not by_policy and token_user is None:
        return None
    guarded = Guarded(request, subs, record, by_policy, session_user, token_user)
    registry(hub).add(guarded)
    return guarded


def release(hub: Hub, guarded: Guarded | None) -> None:
    if guarded is not None:
        registry(hub).discard(guarded)


def revoke_user(pk: Any) -> None:
    """Close ``pk``'s open non-public streams in every process (sync: signal handlers)."""
    from sse.backends import BrokerUnavailable, get_broker

    try:
        get_broker().publish_control(f"{REVOKE}\n{pk}")
    except BrokerUnavailable as exc:
        # Logging out must not fail for it: the periodic re-check closes them later.
        log.error("sse: could not close the open streams of user %s now: %s", pk, exc)


def _on_logout(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    pk = getattr(user, "pk", None)
    if pk is None and request is not None and hasattr(request, "session"):
        # alogout() names no user when the request has no auser() (Django's test client, scripts);
        # the session, not yet flushed, still does.
        pk = request.session.get(SESSION_KEY)
    if pk is not None:
        revoke_user(pk)


def _on_user_save(sender: Any, instance: Any, created: bool = False, raw: bool = False, **kwargs: Any) -> None:
    # set_password() keeps the new raw password in _password until save() has written
    # it (post_save comes first): a password change, which invalidates the user's other
    # sessions. After the commit, so that reconnects see the change.
    if raw or created:
        return
    if getattr(instance, "_password", None) is not None or not getattr(instance, "is_active", True):
        pk = instance.pk
        transaction.on_commit(lambda: revoke_user(pk))  # reconnects then see the change


def _on_user_delete(sender: Any, instance: Any, **kwargs: Any) -> None:
    pk = instance.pk
    transaction.on_commit(lambda: revoke_user(pk))


def connect_signals() -> None:
    from django.contrib.auth.signals import user_logged_out
    from django.db.models.signals import post_delete, post_save

    user_model = get_user_model()
    user_logged_out.connect(_on_logout, dispatch_uid="sse.revocation.logout")
    post_save.connect(_on_user_save, sender=user_model, dispatch_uid="sse.revocation.save")
    post_delete.connect(_on_user_delete, sender=user_model, dispatch_uid="sse.revocation.delete")
