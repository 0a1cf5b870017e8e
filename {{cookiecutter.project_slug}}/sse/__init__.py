"""Server-Sent Events: encoding, publishing and replay.

Publish from anywhere in the project::

    from sse import publish, apublish, publish_on_commit, publish_html, publish_fragment

    event_id = publish("notifications", "notification", {"msg": "hi"})
    event_id = await apublish("notifications", "notification", {"msg": "hi"})
    publish_on_commit("orders", "order.created", {"id": order.pk})  # in a transaction

    # HTML for htmx or Datastar: a template or one partial, autoescaped
    publish_html("orders", "order", "orders/list.html#row", {"order": order})
    publish_fragment("chat", "line", user_text)  # a plain str is escaped

``data`` is sent as JSON; ``text=`` sends a str as is. Both get ids, replay and
the same size limit: they are one pipeline.
"""

import functools
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest

log = logging.getLogger("sse")


def publish(stream: str, event: str = "message", data: Any = None, *, text: str | None = None) -> str:
    """Append an event to ``stream`` and deliver it live; return its id.

    The event's data is ``data`` as JSON, or ``text`` sent as is (one ``data:``
    line per line), never both. HTML in ``text`` is not escaped here: use
    :func:`publish_html` or :func:`publish_fragment` for that.

    Sync code: Celery tasks, cron jobs, scripts, sync views; no event loop needed.
    Called from a coroutine it works too, but blocks that loop for one Redis round
    trip: use :func:`apublish` there.
    """
    from sse.backends import BrokerUnavailable, get_broker
    from sse.ops import metrics

    try:
        event_id = get_broker().publish(stream, event, data, text)
    except BrokerUnavailable:
        metrics.PUBLISH_FAILURES.inc()
        raise
    metrics.PUBLISHED.inc()
    return event_id


async def apublish(stream: str, event: str = "message", data: Any = None, *, text: str | None = None) -> str:
    """Async twin of :func:`publish`, for views, consumers and tasks on an event loop."""
    from sse.backends import BrokerUnavailable, get_broker
    from sse.ops import metrics

    try:
        event_id = await get_broker().apublish(stream, event, data, text)
    except BrokerUnavailable:
        metrics.PUBLISH_FAILURES.inc()
        raise
    metrics.PUBLISHED.inc()
    return event_id


def publish_on_commit(
    stream: str, event: str = "message", data: Any = None, using: str | None = None, *, text: str | None = None
) -> None:
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

    from sse.backends import prepare

    stream, event, payload = prepare(stream, event, data, text)
    transaction.on_commit(functools.partial(_publish_committed, stream, event, payload), using=using, robust=True)


def _publish_committed(stream: str, event: str, payload: str) -> None:
    from sse.backends import BrokerUnavailable

    try:
        # The payload is final text (JSON already serialized): it goes out verbatim.
        publish(stream, event, text=payload)
    except BrokerUnavailable as exc:
        log.error(
            "sse: event lost after commit: stream=%s event=%s bytes=%d: %s",
            stream,
            event,
            len(payload.encode()),
            exc,
        )


def publish_html(
    stream: str,
    event: str,
    template_name: str,
    context: dict[str, Any] | None = None,
    *,
    request: HttpRequest | None = None,
) -> str:
    """Render ``template_name`` (``"page.html#partial"`` for one partial) and publish it as text."""
    from sse.html import render

    return publish(stream, event, text=render(template_name, context, request))


async def apublish_html(
    stream: str,
    event: str,
    template_name: str,
    context: dict[str, Any] | None = None,
    *,
    request: HttpRequest | None = None,
) -> str:
    """Async twin of :func:`publish_html`.

    Rendering runs in a thread: a template may evaluate a queryset, which Django
    refuses on the event loop.
    """
    from sse.html import render

    html = await sync_to_async(render)(template_name, context, request)
    return await apublish(stream, event, text=html)


def publish_html_on_commit(
    stream: str,
    event: str,
    template_name: str,
    context: dict[str, Any] | None = None,
    *,
    request: HttpRequest | None = None,
    using: str | None = None,
) -> None:
    """Render now (inside the transaction, so template errors raise here), publish on commit."""
    from sse.html import render

    publish_on_commit(stream, event, text=render(template_name, context, request), using=using)


def publish_fragment(stream: str, event: str, html: str) -> str:
    """Publish a ready HTML fragment; a plain ``str`` is escaped, a ``SafeString`` sent as is."""
    from sse.html import fragment

    return publish(stream, event, text=fragment(html))


async def apublish_fragment(stream: str, event: str, html: str) -> str:
    """Async twin of :func:`publish_fragment`."""
    from sse.html import fragment

    return await apublish(stream, event, text=fragment(html))


def publish_fragment_on_commit(stream: str, event: str, html: str, *, using: str | None = None) -> None:
    """:func:`publish_fragment` once the transaction of database ``using`` commits."""
    from sse.html import fragment

    publish_on_commit(stream, event, text=fragment(html), using=using)


__all__ = [
    "apublish",
    "apublish_fragment",
    "apublish_html",
    "publish",
    "publish_fragment",
    "publish_fragment_on_commit",
    "publish_html",
    "publish_html_on_commit",
    "publish_on_commit",
]
