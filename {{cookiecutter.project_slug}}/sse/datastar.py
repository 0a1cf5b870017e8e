"""Datastar events (``datastar-patch-elements``, ``datastar-patch-signals``) on the one publish path.

datastar-py writes each event's name and data lines; they are published with
``text=``, so this project's encoder writes the bytes, with its ids, retention and
replay. HTML follows :mod:`sse.html`: templates autoescape, a plain ``str`` is escaped.

    from sse.datastar import publish_elements, publish_signals

    publish_elements("orders", template="orders/table.html#row", context={"order": order})
    publish_elements("chat", format_html("<li>{}</li>", text), selector="#lines", mode="append")
    publish_signals("orders", {"open": 3})
"""

import re
from collections.abc import Mapping
from typing import Any

from asgiref.sync import sync_to_async
from datastar_py import ServerSentEventGenerator
from datastar_py.consts import ElementPatchMode, ElementPatchNamespace
from django.http import HttpRequest

from sse import apublish, publish, publish_on_commit
from sse.encoding import InvalidEvent, dumps
from sse.html import fragment, render

MODES = tuple(mode.value for mode in ElementPatchMode)
NAMESPACES = tuple(namespace.value for namespace in ElementPatchNamespace)
# datastar-py writes a selector as one data line, as given: a line break would end it early.
_LINE_BREAK = re.compile(r"[\r\n\0]")
_DATA = "data: "


def elements_event(
    elements: str = "",
    *,
    selector: str | None = None,
    mode: str = "outer",
    view_transition: bool = False,
    namespace: str = "html",
) -> tuple[str, str]:
    """The ``(event name, data text)`` of a patch-elements event; ``elements`` is final HTML."""
    if mode not in MODES:
        raise InvalidEvent(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if namespace not in NAMESPACES:
        raise InvalidEvent(f"namespace must be one of {', '.join(NAMESPACES)}, not {namespace!r}")
    if selector is not None and (not isinstance(selector, str) or not selector or _LINE_BREAK.search(selector)):
        raise InvalidEvent("selector must be a non-empty CSS selector on one line")
    if mode == "remove":
        if not selector and not elements:
            raise InvalidEvent("mode 'remove' needs a selector, or elements whose ids name what to remove")
    elif not elements:
        raise InvalidEvent("no elements to patch: pass html or a template")
    event = ServerSentEventGenerator.patch_elements(
        elements,
        selector=selector,
        mode=ElementPatchMode(mode),
        use_view_transition=view_transition,
        namespace=ElementPatchNamespace(namespace),
    )
    return _split(event)


def signals_event(signals: Mapping[str, Any], *, only_if_missing: bool = False) -> tuple[str, str]:
    """The ``(event name, data text)`` of a patch-signals event (a JSON merge patch)."""
    if not isinstance(signals, Mapping):
        raise InvalidEvent(f"signals must be a dict of signal names to values, not {type(signals).__name__}")
    # datastar-py would write NaN or fail on a set; check with the project's own JSON rules first.
    dumps(signals)
    event = ServerSentEventGenerator.patch_signals(dict(signals), only_if_missing=only_if_missing)
    return _split(event)


def _split(event: str) -> tuple[str, str]:
    """Event name and data text of one event as datastar-py writes it (no id, no retry)."""
    head, *lines = event.removesuffix("\n\n").split("\n")
    if not head.startswith("event: ") or not all(line.startswith(_DATA) for line in lines):
        raise ValueError(f"unexpected datastar-py output: {event[:200]!r}")
    return head.removeprefix("event: "), "\n".join(line.removeprefix(_DATA) for line in lines)


def _html(html: str | None, template: str | None, context: dict[str, Any] | None, request: HttpRequest | None) -> str:
    if html is not None and template is not None:
        raise InvalidEvent("pass html or template, not both")
    if template is not None:
        return render(template, context, request)
    if html is None:
        return ""
    if not isinstance(html, str):
        raise InvalidEvent(f"html must be a str, not {type(html).__name__}")
    return fragment(html)


def publish_elements(
    stream: str,
    html: str | None = None,
    *,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    selector: str | None = None,
    mode: str = "outer",
    view_transition: bool = False,
    namespace: str = "html",
) -> str:
    """Publish a ``datastar-patch-elements`` event; return its id.

    The elements are ``html`` (a plain ``str`` is escaped, a ``SafeString`` or
    ``format_html`` result is sent as is) or ``template`` rendered with ``context``
    (``"page.html#row"`` for one partial). ``mode`` is Datastar's: ``outer``
    (morph the elements with the same ids, the default), ``inner``, ``replace``,
    ``prepend``, ``append``, ``before``, ``after`` or ``remove``; ``selector``
    picks the target instead of the elements' ids.
    """
    elements = _html(html, template, context, request)
    event, text = elements_event(
        elements, selector=selector, mode=mode, view_transition=view_transition, namespace=namespace
    )
    return publish(stream, event, text=text)


async def apublish_elements(
    stream: str,
    html: str | None = None,
    *,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    selector: str | None = None,
    mode: str = "outer",
    view_transition: bool = False,
    namespace: str = "html",
) -> str:
    """Async twin of :func:`publish_elements`; a template renders in a thread (it may query the database)."""
    if template is None:
        elements = _html(html, None, None, None)
    else:
        elements = await sync_to_async(_html)(html, template, context, request)
    event, text = elements_event(
        elements, selector=selector, mode=mode, view_transition=view_transition, namespace=namespace
    )
    return await apublish(stream, event, text=text)


def publish_elements_on_commit(
    stream: str,
    html: str | None = None,
    *,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    selector: str | None = None,
    mode: str = "outer",
    view_transition: bool = False,
    namespace: str = "html",
    using: str | None = None,
) -> None:
    """Render now (inside the transaction, so errors raise here), publish when it commits, never on rollback."""
    elements = _html(html, template, context, request)
    event, text = elements_event(
        elements, selector=selector, mode=mode, view_transition=view_transition, namespace=namespace
    )
    publish_on_commit(stream, event, using=using, text=text)


def publish_signals(stream: str, signals: Mapping[str, Any], *, only_if_missing: bool = False) -> str:
    """Publish a ``datastar-patch-signals`` event; return its id.

    ``signals`` is merged into the page's signals (a ``None`` value removes one).
    With ``only_if_missing``, signals the page already has keep their values.
    """
    event, text = signals_event(signals, only_if_missing=only_if_missing)
    return publish(stream, event, text=text)


async def apublish_signals(stream: str, signals: Mapping[str, Any], *, only_if_missing: bool = False) -> str:
    """Async twin of :func:`publish_signals`."""
    event, text = signals_event(signals, only_if_missing=only_if_missing)
    return await apublish(stream, event, text=text)


def publish_signals_on_commit(
    stream: str, signals: Mapping[str, Any], *, only_if_missing: bool = False, using: str | None = None
) -> None:
    """:func:`publish_signals` when the current transaction commits; never on rollback."""
    event, text = signals_event(signals, only_if_missing=only_if_missing)
    publish_on_commit(stream, event, using=using, text=text)


__all__ = [
    "apublish_elements",
    "apublish_signals",
    "elements_event",
    "publish_elements",
    "publish_elements_on_commit",
    "publish_signals",
    "publish_signals_on_commit",
    "signals_event",
]
