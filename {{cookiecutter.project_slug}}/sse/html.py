"""HTML for ``text=`` events: templates and partials rendered, plain strings escaped.

An event goes to every reader of its stream, so HTML built from user input must be
escaped once, here, rather than trusted to each page: templates autoescape, and a
plain ``str`` fragment is escaped unless it is marked safe (``SafeString``).
"""

from typing import Any

from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.html import conditional_escape
from django.utils.safestring import SafeString, mark_safe


def render(template_name: str, context: dict[str, Any] | None = None, request: HttpRequest | None = None) -> SafeString:
    """Render a template, or one partial of it with ``"page.html#name"``, autoescaped.

    Surrounding whitespace is dropped: a template file's last newline, or the line
    breaks around a ``partialdef`` body, would otherwise be an empty ``data:`` line
    in every event. The result stays marked safe, so :func:`fragment` keeps it as is.
    """
    return mark_safe(render_to_string(template_name, context, request).strip())


def fragment(html: str) -> SafeString:
    """``html`` escaped, unless it is already safe (``SafeString``, ``format_html``, a rendered template)."""
    return conditional_escape(html)
