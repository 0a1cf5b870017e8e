"""Server-Sent Events: encoding, publishing and replay.

Publish from anywhere in the project::

    from sse import publish, apublish, publish_on_commit

    event_id = publish("notifications", "notification", {"msg": "hi"})
    event_id = await apublish("notifications", "notification", {"msg": "hi"})
    publish_on_commit("orders", "order.created", {"id": order.pk})  # in a transaction
"""

import functools
import json
import logging
from typing import Any

log = logging.getLogger("sse")


def publish(stream: str, event: str = "message", data: Any = None) -> str:
    """Append an event to ``stream`` and deliver it live; return its id.

    Sync code: Celery tasks, cron jobs, scripts, sync views; no event loop needed.
    Called from a coroutine it works too, but blocks that loop for one Redis round
    trip: use :func:`apublish` there.
    """
    from sse import metrics
    from sse.broker import BrokerUnavailable, get_broker

    try:
        event_id = get_broker().publish(stream, event, data)
    except BrokerUnavailable:
        metrics.PUBLISH_FAILURES.inc()
        raise
    metrics.PUBLISHED.inc()
    return event_id


async def apublish(stream: str, event: str = "message", data: Any = None) -> str:
    """Async twin of :func:`publish`, for views, consumers and tasks on an event loop."""
    from sse import metrics
    from sse.broker import BrokerUnavailable, get_broker

    try:
        event_id = await get_broker().apublish(stream, event, data)
    except BrokerUnavailable:
        metrics.PUBLISH_FAILURES.inc()
        raise
    metrics.PUBLISHED.inc()
    return event_id


def publish_on_commit(stream: str, event: str = "message", data: Any = None, using: str | None = None) -> None:
    """Publish once the current transaction of database ``using`` commits; never on rollback.

    Bad input raises :class:`~sse.encoding.InvalidEvent` now, not at commit, and
    ``data`` is serialized now, so later changes to it are not published. Outside
    a transaction the event is published at once, as Django's ``on_commit`` does.
    Call it from sync code (transactions are sync in Django).

    If the broker is down at commit time the data is committed but the event is
    not: that is logged as an error naming the stream and the event (and counted in
    ``sse_publish_failures_total``), and the commit itself still succeeds.
    """
    from django.db import transaction

    from sse.broker import prepare

    stream, event, payload = prepare(stream, event, data)
    transaction.on_commit(functools.partial(_publish_committed, stream, event, payload), using=using, robust=True)


def _publish_committed(stream: str, event: str, payload: str) -> None:
    from sse.broker import BrokerUnavailable

    try:
        # Serialized at call time; parsing it back gives the same JSON text again.
        publish(stream, event, json.loads(payload))
    except BrokerUnavailable as exc:
        log.error(
            "sse: event lost after commit: stream=%s event=%s bytes=%d: %s",
            stream,
            event,
            len(payload.encode()),
            exc,
        )


__all__ = ["apublish", "publish", "publish_on_commit"]
