"""Short-lived signed tokens, for clients that can't send the session cookie.

Mint one in a view the client can reach with its own credentials, and hand it over::

    from sse.security import tokens

    token = tokens.mint(["notifications", f"user.{request.user.pk}"], user=request.user, ttl=60)
    # the client opens /sse/?stream=notifications&stream=user.42&token=<token>

or from a shell: ``python manage.py sse_token notifications --ttl 300``.

A token is Django's ``TimestampSigner`` (salt ``sse.tokens``, the project's
``SECRET_KEY``) over ``{"s": streams, "u": user pk or null, "t": ttl}``: no new
dependency, and nobody without the secret key can forge or widen one.

How it combines with ``SSE_AUTHORIZE``:

- minting is the authorization decision: the token grants exactly the streams it
  names, without asking ``SSE_AUTHORIZE`` again;
- any other stream on the same connection still needs ``SSE_AUTHORIZE`` with the
  request's own session, as if there were no token;
- a ``user.<id>`` stream is granted only to a token naming that user (``mint``
  refuses anything else), so a token never reaches another user's stream;
- a token is checked when a connection opens: an open stream outlives its expiry,
  a reconnect after it expired gets 403;
- a token naming a user who no longer exists or is inactive is refused (403), and
  open streams it granted are closed then (sse.security.revocation).

An expired, forged or malformed token is a 403 with the reason, even for
public streams: the client meant to use it and should know it failed.

Only the literal query parameter ``token`` is read (no percent-encoded name),
so that log masking (sse.ops.logmask, deploy/nginx) catches every token.
"""

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from django.core import signing
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from sse.encoding import validate_stream

SALT = "sse.tokens"
MAX_TTL = 86_400


class TokenError(ValueError):
    """A token that grants nothing; the message is safe to show."""

    status = 403


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def mint(streams: Iterable[str], user: Any = None, ttl: int = 60) -> str:
    """A token granting ``streams`` (as ``user``, a user or a primary key) for ``ttl`` seconds."""
    if isinstance(streams, str):
        streams = [streams]
    names = sorted({validate_stream(name) for name in streams})
    if not names:
        raise ValueError("a token needs at least one stream")
    if not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be 1 to {MAX_TTL} seconds")
    pk = None if user is None else str(getattr(user, "pk", user))
    for name in names:
        if name.startswith("user.") and name != f"user.{pk}":
            raise ValueError(f"a token for {name} must name that user (user={pk!r})")
    return _signer().sign_object({"s": names, "u": pk, "t": ttl})


def read(token: str) -> tuple[set[str], str | None]:
    """The streams and user pk a token grants, or TokenError."""
    signer = _signer()
    try:
        payload = signer.unsign_object(token)  # the signature first: the ttl inside is then trusted
        signer.unsign_object(token, max_age=payload["t"])
        streams, user = set(payload["s"]), payload["u"]
    except signing.SignatureExpired:
        raise TokenError("expired: ask for a new one") from None
    except (signing.BadSignature, ValueError, KeyError, TypeError):
        raise TokenError("invalid (forged, damaged or for another site)") from None
    return streams, user


def from_request(request: HttpRequest) -> str | None:
    """The ``token`` query parameter, read from the raw query string (see the module doc)."""
    found = [part[6:] for part in request.META.get("QUERY_STRING", "").split("&") if part.startswith("token=")]
    if len(found) > 1:
        raise TokenError("give one token, not several")
    return unquote_plus(found[0]) if found else None


async def user_active(pk: str) -> bool:
    """Whether the user a token names still exists and may log in."""
    from django.contrib.auth import get_user_model

    try:
        user = await get_user_model()._default_manager.filter(pk=pk).afirst()
    except (ValueError, TypeError, ValidationError):  # not a primary key of this user model
        return False
    return user is not None and getattr(user, "is_active", True)


async def agranted(token: str | None, streams: list[str]) -> tuple[set[str], str | None]:
    """Which of ``streams`` the token grants, and the user it names (checked: active and existing)."""
    if token is None:
        return set(), None
    names, user = read(token)
    if user is not None and not await user_active(user):
        # A signed grant outlives its user otherwise: deleted or deactivated users read nothing.
        raise TokenError("its user no longer exists or is inactive")
    granted = {
        name
        for name in streams
        if name in names and (not name.startswith("user.") or (user is not None and name == f"user.{user}"))
    }
    return granted, user
