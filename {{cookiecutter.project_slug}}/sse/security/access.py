"""One log line per stream connect, disconnect and reset, on the ``sse.access`` logger.

Lines are ``key=value`` pairs, for example::

    event=connect stream=notifications client=203.0.113.7 user=42 last_event_id=yes
    event=reset stream=notifications client=203.0.113.7 user=42 last_event_id=1732190000000-0 id=1732190400000-3
    event=disconnect stream=notifications client=203.0.113.7 user=42 duration=81.532 bytes=5120 events=12 \
reason=client-gone

``reason`` is ``client-gone``, ``slow-client`` (closed for falling behind: it
reconnects and replays), ``revoked`` (its reader may no longer read it: see
sse.security.revocation), ``server-shutdown``, ``server-closed`` or ``error`` (an error
ended the stream, logged on the ``sse`` logger: the client reconnects and
replays). Built only from the stream name, the peer address and the user's
id: never the query string (which may carry a token), headers, cookies or
session ids.

The same records feed the counters of :mod:`sse.ops.metrics`.
"""

import contextvars
import logging
import re
import time
from typing import Any

from django.http import HttpRequest

from sse.backends import BrokerUnavailable
from sse.ops import metrics

log = logging.getLogger("sse.access")
errors = logging.getLogger("sse")
# With --proxy-headers Daphne takes the address from X-Forwarded-For, which a
# client reaching Daphne directly controls: anything but an address is not logged.
ADDRESS = re.compile(r"[0-9A-Fa-f.:\[\]]{1,64}")

# What the server side knows about this ASGI connection (see sse.transports.daphne.guard).
_peer: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("sse_peer")


def bind(transport: Any) -> None:
    """Remember this connection's transport, to tell a gone client from a server shutdown."""
    _peer.set({"transport": transport, "slow": False})


def mark_slow() -> None:
    """The server is closing this connection because its client stopped reading."""
    peer = _peer.get(None)
    if peer is not None:
        peer["slow"] = True


def line(**fields: object) -> str:
    # Every value here is a stream name, an address, a number or an event id:
    # none holds a space, a quote or a line break, so no quoting is needed.
    return " ".join(f"{key}={value}" for key, value in fields.items())


class Record:
    """One connection's line fields and running totals."""

    __slots__ = ("bytes", "ended", "events", "fields", "last_id", "started")  # one per open stream

    def __init__(self, request: HttpRequest, stream: str, last_id: str | None, user_id: object) -> None:
        address = request.META.get("REMOTE_ADDR") or "-"
        self.fields = {
            "stream": stream,
            "client": address if ADDRESS.fullmatch(address) else "invalid",
            "user": user_id if user_id is not None else "-",
        }
        self.last_id = last_id
        self.started = time.monotonic()
        self.bytes = 0
        self.events = 0
        self.ended: str | None = None  # why the server closed it, when not for falling behind

    def opened(self) -> None:
        metrics.CONNECTIONS.inc()
        if self.last_id is not None:
            metrics.REPLAYS.inc()
        log.info(line(event="connect", **self.fields, last_event_id="yes" if self.last_id else "no"))

    def sent(self, chunk: bytes, events: int) -> None:
        self.bytes += len(chunk)
        self.events += events
        metrics.BYTES_SENT.inc(len(chunk))
        if events:
            metrics.EVENTS_SENT.inc(events)

    def reset(self, new_id: str) -> None:
        metrics.RESETS.inc()
        log.info(line(event="reset", **self.fields, last_event_id=self.last_id, id=new_id or "-"))

    def closed(self, reason: str, subs: list) -> None:
        for sub in subs:  # what the hub wrote itself (the fast path)
            self.bytes += sub.sent_bytes
            self.events += sub.sent_events
        metrics.DISCONNECTS.inc(reason=reason)
        if reason == "slow-client":
            # Here, not where it is detected: the queue's bound and the send timeout
            # may both fire for one client, and a multi-stream one has several queues.
            metrics.SLOW_CLIENTS.inc()
        duration = f"{time.monotonic() - self.started:.3f}"
        log.info(
            line(
                event="disconnect",
                **self.fields,
                duration=duration,
                bytes=self.bytes,
                events=self.events,
                reason=reason,
            )
        )


def failed(record: Record, exc: Exception) -> str:
    """An error inside an open stream: logged once with its stream, counted; the disconnect reason.

    The stream then ends like any other (last chunk sent), so the client
    reconnects within its ``retry:`` and replays. Raised further, the error
    would reach Daphne instead, which leaves the response open (the client
    waits for nginx's read timeout) and, in async_view mode, stops Daphne's
    application checker for good (no more reaping of closed connections).
    """
    metrics.STREAM_ERRORS.inc()
    # An outage is expected and says what failed in one line; anything else is a bug.
    expected = isinstance(exc, BrokerUnavailable)
    errors.error("sse: stream %s ended by an error: %s", record.fields["stream"], exc, exc_info=not expected)
    return "error"


def cancelled_reason() -> str:
    """Why a stream the server did not end itself was cancelled."""
    peer = _peer.get(None) or {}
    transport = peer.get("transport")
    if peer.get("slow"):
        return "slow-client"
    if transport is not None and getattr(transport, "connected", False):
        return "server-shutdown"  # Daphne cancels every open stream when it stops
    return "client-gone"


async def record(request: HttpRequest, stream: str, last_id: str | None) -> Record:
    """What the lines of a stream about to be served will say (looked up before subscribing)."""
    from sse.security.auth import get_user  # needs the app registry: not at import time (config.asgi)

    user = await get_user(request)
    return Record(request, stream, last_id, user.pk if user.is_authenticated else None)
