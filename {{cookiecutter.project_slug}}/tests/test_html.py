"""HTML events: text= payloads, templates and partials, escaping, on commit."""

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import User
from django.db import transaction
from django.template import TemplateDoesNotExist
from django.test import RequestFactory
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from hypothesis import given
from hypothesis import strategies as st

from sse import (
    apublish,
    apublish_fragment,
    apublish_html,
    publish,
    publish_fragment,
    publish_fragment_on_commit,
    publish_html,
    publish_html_on_commit,
    publish_on_commit,
)
from sse.backends import get_broker
from sse.encoding import InvalidEvent, encode, payload
from sse.html import fragment, render
from sse.transports.endpoint import stream_response
from tests.conftest import data_events, parse, read_until

FRAGMENT = '<ul id="list">\n  <li>one</li>\n\n  <li>two</li>\n</ul>'


class Order:
    def __init__(self, pk: int, customer: str, status: str) -> None:
        self.pk, self.customer, self.status = pk, customer, status


async def open_stream(stream: str, last_event_id: str | None = None):
    headers = {"HTTP_LAST_EVENT_ID": last_event_id} if last_event_id else {}
    response = await stream_response(RequestFactory().get(f"/sse/{stream}/", **headers), stream)
    assert response.status_code == 200
    chunks = response.streaming_content
    assert (await anext(chunks)).startswith(b"retry:")
    return chunks


async def received(chunks, count: int) -> list[dict]:
    events = await read_until(chunks, lambda events: len(data_events(events)) >= count)
    await chunks.aclose()
    return data_events(events)


def test_every_line_of_a_fragment_is_its_own_data_line_blank_ones_too():
    # A bare blank line would end the event early; "data: " keeps it inside.
    assert encode(id="1-0", event="list", data=FRAGMENT) == (
        b"id: 1-0\nevent: list\n"
        b'data: <ul id="list">\ndata:   <li>one</li>\ndata: \ndata:   <li>two</li>\ndata: </ul>\n\n'
    )
    assert parse(encode(id="1-0", event="list", data=FRAGMENT).decode()) == [
        {"id": "1-0", "event": "list", "data": FRAGMENT}
    ]


def test_cr_and_crlf_arrive_as_lf_and_edge_newlines_survive():
    assert encode(data="a\rb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"
    for text in ["\n<p>x</p>\n", "", "\n\n"]:
        assert parse(encode(id="1-0", data=text).decode())[0]["data"] == text


@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0")))
def test_property_any_text_reads_back_as_one_event_with_lf_line_ends(text):
    (event,) = parse(encode(id="1-0", event="e", data=payload(text=text)).decode())
    assert event == {"id": "1-0", "event": "e", "data": text.replace("\r\n", "\n").replace("\r", "\n")}


async def test_text_is_published_stored_and_replayed_verbatim(backend, stream):
    chunks = await open_stream(stream)
    first = await apublish(stream, "list", text=FRAGMENT)
    second = publish(stream, "list", text="<p>two</p>")
    live = await received(chunks, 2)
    expected = [(first, "list", FRAGMENT), (second, "list", "<p>two</p>")]
    assert [(e["id"], e["event"], e["data"]) for e in live] == expected
    assert await get_broker().areplay(stream, first, 10) == [(second, "list", "<p>two</p>")]
    (replayed,) = await received(await open_stream(stream, last_event_id=first), 1)
    assert replayed == live[1]


async def test_json_and_text_share_one_log(backend, stream):
    ids = [await apublish(stream, "j", {"n": 1}), await apublish(stream, "h", text="<b>2</b>")]
    assert await get_broker().areplay(stream, "", 10) == [(ids[0], "j", '{"n":1}'), (ids[1], "h", "<b>2</b>")]
    (event,) = await received(await open_stream(stream, last_event_id=ids[0]), 1)
    assert event == {"id": ids[1], "event": "h", "data": "<b>2</b>"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": {"a": 1}, "text": "<p>"}, "either data"),
        ({"text": b"<p>"}, "must be a str"),
        ({"text": "a\0b"}, "NUL"),
        ({"text": "\ud800"}, "lone surrogates"),
    ],
)
async def test_bad_text_is_refused_before_anything_is_written(backend, stream, kwargs, message):
    with pytest.raises(InvalidEvent, match=message):
        await apublish(stream, "e", **kwargs)
    with pytest.raises(InvalidEvent, match=message):
        publish(stream, "e", **kwargs)
    assert await get_broker().alast_id(stream) is None


async def test_text_has_the_same_size_limit(backend, stream, settings):
    settings.SSE_MAX_DATA_BYTES = 10
    await apublish(stream, "e", text="é" * 5)  # 10 bytes
    with pytest.raises(InvalidEvent, match="SSE_MAX_DATA_BYTES"):
        await apublish(stream, "e", text="é" * 5 + "x")


def test_plain_strings_are_escaped_safe_strings_are_not():
    assert fragment("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert fragment(mark_safe("<b>ok</b>")) == "<b>ok</b>"
    assert fragment(format_html("<b>{}</b>", "<i>")) == "<b>&lt;i&gt;</b>"
    assert fragment(render("sse_tests/orders.html#users", {"users": []})) == "<p>0 users</p>", "not escaped twice"


async def test_publish_fragment_escapes_a_plain_string(backend, stream):
    chunks = await open_stream(stream)
    await apublish_fragment(stream, "chat", "<img src=x onerror=alert(1)>")
    await sync_to_async(publish_fragment)(stream, "chat", mark_safe("<em>hi</em>"))
    events = await received(chunks, 2)
    assert [e["data"] for e in events] == ["&lt;img src=x onerror=alert(1)&gt;", "<em>hi</em>"]


def test_a_partial_renders_alone_autoescaped_and_trimmed():
    html = render("sse_tests/orders.html#row", {"order": Order(7, "<Ann & Bob>", "shipped")})
    assert html == '<tr id="order-7">\n  <td>&lt;Ann &amp; Bob&gt;</td>\n\n  <td class="status">shipped</td>\n</tr>'
    assert "<table>" not in html
    with pytest.raises(TemplateDoesNotExist):
        render("sse_tests/missing.html")


@pytest.mark.django_db(transaction=True)
async def test_publish_html_sends_the_partial_as_data_lines(backend, stream):
    chunks = await open_stream(stream)
    order = Order(7, "<Ann>", "paid")
    await sync_to_async(publish_html)(stream, "order", "sse_tests/orders.html#row", {"order": order})
    # Rendered off the event loop: a template may run a query.
    await apublish_html(stream, "users", "sse_tests/orders.html#users", {"users": User.objects.all()})
    events = await received(chunks, 2)
    assert events[0]["data"] == render("sse_tests/orders.html#row", {"order": order})
    assert events[0]["data"].count("\n") == 4 and "&lt;Ann&gt;" in events[0]["data"]
    assert events[1]["data"] == "<p>0 users</p>"


@pytest.mark.django_db(transaction=True)
async def test_html_on_commit_is_rendered_now_published_on_commit_never_on_rollback(backend, stream):
    def rolled_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            publish_html_on_commit(stream, "order", "sse_tests/orders.html#row", {"order": Order(1, "x", "lost")})
            publish_fragment_on_commit(stream, "note", "rolled back")
            raise RuntimeError("roll back")

    def committed() -> None:
        order = Order(2, "y", "paid")
        with transaction.atomic():
            publish_html_on_commit(stream, "order", "sse_tests/orders.html#row", {"order": order})
            order.status = "changed after the call"
            publish_fragment_on_commit(stream, "note", "<b>")
            publish_on_commit(stream, "json", {"n": 1})
            with pytest.raises(TemplateDoesNotExist):
                publish_html_on_commit(stream, "order", "sse_tests/missing.html")
            assert async_to_sync(get_broker().alast_id)(stream) is None, "nothing before the commit"

    chunks = await open_stream(stream)
    await sync_to_async(rolled_back)()
    await sync_to_async(committed)()
    events = await received(chunks, 3)
    assert [e["event"] for e in events] == ["order", "note", "json"]
    assert '<td class="status">paid</td>' in events[0]["data"]
    assert events[1]["data"] == "&lt;b&gt;"
    assert json.loads(events[2]["data"]) == {"n": 1}
    assert len(await get_broker().areplay(stream, "", 10)) == 3
