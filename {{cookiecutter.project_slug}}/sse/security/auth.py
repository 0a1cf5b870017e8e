"""Who may read which stream.

``SSE_AUTHORIZE`` names a callable ``(request, stream) -> bool``, sync or async,
called for every stream request before anything is subscribed. The default:

- ``user.<id>`` is readable only by the authenticated user with that primary key,
  even when a public pattern (say ``*``) matches it;
- other streams matching a pattern in ``SSE_PUBLIC_STREAMS`` (``fnmatch`` style) are public;
- everything else is denied (403).

Write your own in any module, for example::

    async def authorize(request, stream):
        if stream.startswith("team."):
            user = await request.auser()
            return await user.teams.filter(slug=stream[5:]).aexists()
        return await default_policy(request, stream)

and set ``SSE_AUTHORIZE = "myapp.sse.authorize"``.
"""

import inspect
from fnmatch import fnmatchcase
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.utils.module_loading import import_string

from sse.conf import setting

PRIVATE_PREFIX = "user."
DEFAULT_POLICY = "sse.security.auth.default_policy"  # SSE_AUTHORIZE's default


async def get_user(request: HttpRequest) -> Any:
    """The session user, in either mode (Django's middleware or Channels' scope)."""
    if hasattr(request, "auser"):
        return await request.auser()
    return getattr(request, "user", None) or AnonymousUser()


def is_private(stream: str) -> bool:
    """A ``user.<id>`` stream: its user's alone, whatever ``SSE_PUBLIC_STREAMS`` says."""
    return stream.startswith(PRIVATE_PREFIX)


def is_public(stream: str) -> bool:
    # Private names are decided first: a pattern like "*" must not open them to everyone.
    return not is_private(stream) and any(fnmatchcase(stream, p) for p in setting("SSE_PUBLIC_STREAMS", []))


async def default_policy(request: HttpRequest, stream: str) -> bool:
    if is_private(stream):
        user = await get_user(request)
        return bool(user.is_authenticated) and stream == f"{PRIVATE_PREFIX}{user.pk}"
    return is_public(stream)


def may_have_used_database(request: HttpRequest) -> bool:
    """Whether opening this stream may have queried the database: a session cookie, or a custom policy."""
    session = getattr(request, "session", None)
    if session is not None and session.accessed and session.session_key is not None:
        return True
    return setting("SSE_AUTHORIZE", DEFAULT_POLICY) != DEFAULT_POLICY


async def authorize(request: HttpRequest, stream: str) -> bool:
    policy = import_string(setting("SSE_AUTHORIZE", DEFAULT_POLICY))
    allowed = policy(request, stream)
    if inspect.isawaitable(allowed):
        allowed = await allowed
    return bool(allowed)
