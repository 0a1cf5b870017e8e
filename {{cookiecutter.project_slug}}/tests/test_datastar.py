"""Datastar events: datastar-py's format, this project's ids, replay, escaping and the demo page."""

import json

import pytest
from asgiref.sync import sync_to_async
from datastar_py import ServerSentEventGenerator as Datastar
from django.contrib.auth.models import User
from django.db import transaction
from django.test import RequestFactory
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from sse import apublish
from sse.backends import get_broker
from sse.datastar import (
    apublish_elements,
    apublish_signals,
    publish_elements,
    publish_elements_on_commit,
    publish_signals,
    publish_signals_on_commit,
)
from sse.encoding import InvalidEvent
from sse.transports.endpoint import stream_response
from tests.conftest import data_events, read_until

rf = RequestFactory()
ITEM = "demo/datastar.html#item"


async def open_stream(stream: str, **headers):
    response = await stream_response(rf.get(f"/sse/{stream}/", **headers), stream)
    assert response.status_code == 200
    chunks = response.streaming_content
    assert (await anext(chunks)).startswith(b"retry:")
    return chunks


async def read_frames(chunks, count: int) -> list[str]:
    """The next ``count`` event frames, as the raw text the client reads (heartbeats left out)."""
    text = ""
    async for chunk in chunks:
        text += chunk.decode()
        frames = [f + "\n\n" for f in text.split("\n\n")[:-1] if f.startswith("id: ")]
        if len(frames) >= count:
            return frames
    raise AssertionError(f"stream ended early: {text!r}")


def without_id(frame: str) -> tuple[str, str]:
    """The id and the rest of a frame: ours writes the id first."""
    head, rest = frame.split("\n", 1)
    return head.removeprefix("id: "), rest


async def test_elements_and_signals_are_datastar_py_events_with_our_ids(backend, stream):
    chunks = await open_stream(stream)
    html = format_html("<li id='x'>{}</li>\n<li>two \u2028 lines</li>", "<script>alert(1)</script>")
    ids = [
        await apublish_elements(stream, html, selector="#list", mode="append"),
        await apublish_elements(stream, mark_safe('<p id="status">ok</p>')),
        await apublish_elements(stream, selector="#gone", mode="remove"),
        await apublish_elements(
            stream, mark_safe("<circle id='c'/>"), mode="inner", selector="svg", namespace="svg", view_transition=True
        ),
        await apublish_signals(stream, {"last": "é \u2028 ✓", "nested": {"n": [1, None]}}),
        await apublish_signals(stream, {"count": 0}, only_if_missing=True),
    ]
    expected = [
        Datastar.patch_elements(html, selector="#list", mode="append"),
        Datastar.patch_elements('<p id="status">ok</p>'),
        Datastar.remove_elements("#gone"),
        Datastar.patch_elements(
            "<circle id='c'/>", mode="inner", selector="svg", namespace="svg", use_view_transition=True
        ),
        Datastar.patch_signals({"last": "é \u2028 ✓", "nested": {"n": [1, None]}}),
        Datastar.patch_signals({"count": 0}, only_if_missing=True),
    ]
    frames = await read_frames(chunks, len(expected))
    await chunks.aclose()
    assert [without_id(f) for f in frames] == [(i, str(e)) for i, e in zip(ids, expected, strict=True)]
    assert "&lt;script&gt;" in frames[0] and "<script>" not in frames[0]

    again = await open_stream(stream, HTTP_LAST_EVENT_ID=ids[0])
    replayed = await read_frames(again, len(expected) - 1)
    await again.aclose()
    assert replayed == frames[1:], "replay sends the same bytes"


async def test_sync_publish_and_templates_render_one_autoescaped_partial(backend, stream):
    def publish_all() -> list[str]:
        context = {"text": "<img src=x onerror=alert(1)>", "at": None}
        return [
            publish_elements(stream, template=ITEM, context=context, selector="#ds-items", mode="append"),
            publish_elements(stream, "<p id='raw'>not trusted</p>", selector="#log", mode="append"),
            publish_signals(stream, {"last": "x"}),
        ]

    event_id, plain, signals = await sync_to_async(publish_all)()
    entries = await get_broker().arecent(stream, 3)
    assert [e[0] for e in entries] == [event_id, plain, signals]
    assert [e[1] for e in entries] == ["datastar-patch-elements", "datastar-patch-elements", "datastar-patch-signals"]
    item = entries[0][2]
    assert item.startswith("mode append\nselector #ds-items\nelements <li")
    assert "&lt;img src=x onerror=alert(1)&gt;" in item and "<img" not in item
    assert "<p" not in entries[1][2] and "&lt;p id=&#x27;raw&#x27;&gt;" in entries[1][2]
    assert entries[2][2] == 'signals {"last":"x"}'


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: publish_elements(s, "<p>x</p>", mode="sideways"), "mode must be one of"),
        (lambda s: publish_elements(s, "<p>x</p>", namespace="xml"), "namespace must be one of"),
        (lambda s: publish_elements(s, "<p>x</p>", selector="#a\ndata: evil"), "selector must be"),
        (lambda s: publish_elements(s, "<p>x</p>", selector=""), "selector must be"),
        (lambda s: publish_elements(s, "<p>x</p>", template=ITEM), "not both"),
        (lambda s: publish_elements(s), "no elements to patch"),
        (lambda s: publish_elements(s, mode="remove"), "needs a selector"),
        (lambda s: publish_elements(s, b"<p>x</p>"), "html must be a str"),
        (lambda s: publish_signals(s, ["a"]), "signals must be a dict"),
        (lambda s: publish_signals(s, {"x": float("nan")}), "not JSON-serializable"),
        (lambda s: publish_signals(s, {"x": {1, 2}}), "not JSON-serializable"),
        (lambda s: publish_elements("bad name!", "<p>x</p>"), "invalid stream name"),
    ],
)
def test_bad_input_is_one_clear_error(call, message, stream):
    with pytest.raises(InvalidEvent, match=message) as info:
        call(stream)
    assert "\n" not in str(info.value)


@pytest.mark.django_db(transaction=True)
async def test_on_commit_variants_publish_after_commit_and_never_on_rollback(backend, stream):
    chunks = await open_stream(stream)

    def rolled_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            User.objects.create_user("ghost")
            publish_elements_on_commit(stream, mark_safe("<p id='ghost'>x</p>"))
            publish_signals_on_commit(stream, {"ghost": True})
            raise RuntimeError("roll back")

    def committed() -> None:
        with transaction.atomic():
            user = User.objects.create_user("alice")
            publish_elements_on_commit(stream, template=ITEM, context={"text": user.username, "at": None})
            publish_signals_on_commit(stream, {"users": 1})

    await sync_to_async(rolled_back)()
    await sync_to_async(committed)()
    await apublish(stream, "end", "end")
    events = await read_until(chunks, lambda ev: any(e.get("event") == "end" for e in ev))
    await chunks.aclose()
    assert [e["event"] for e in data_events(events)] == ["datastar-patch-elements", "datastar-patch-signals", "end"]
    assert "alice" in data_events(events)[0]["data"]
    assert data_events(events)[1]["data"] == 'signals {"users":1}'


def test_the_size_limit_applies(settings, stream):
    settings.SSE_MAX_DATA_BYTES = 100
    with pytest.raises(InvalidEvent):
        publish_elements(stream, mark_safe(f"<p id='big'>{'x' * 200}</p>"))


@pytest.mark.django_db
async def test_demo_page_and_its_publish_endpoint(backend, async_client, settings):
    settings.SSE_DEMO_PUBLISH = True
    page = await async_client.get("/datastar/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "demo/datastar/datastar.js" in body and "@get(&#x27;/sse/datastar/" not in body
    assert "@get('/sse/datastar/" in body
    chunks = await open_stream("datastar")
    headers = {"Datastar-Request": "true"}
    answer = await async_client.post(
        "/datastar/publish/",
        {"message": "<script>x()</script>", "last": ""},
        content_type="application/json",
        headers=headers,
    )
    assert answer.status_code == 200 and answer.json() == {"message": ""}, answer.content
    frames = await read_frames(chunks, 3)
    await chunks.aclose()
    item, status, signals = (without_id(f)[1] for f in frames)
    assert item.startswith("event: datastar-patch-elements\ndata: mode append\ndata: selector #ds-items\n")
    assert "&lt;script&gt;x()&lt;/script&gt;" in item and "<script>" not in item
    assert 'id="ds-status"' in status
    assert signals == str(Datastar.patch_signals({"last": "<script>x()</script>"}))
    for bad, status_code in [
        ({"message": ""}, 400),
        ({"message": "x" * 501}, 400),
        ({"other": 1}, 400),
    ]:
        answer = await async_client.post("/datastar/publish/", bad, content_type="application/json", headers=headers)
        assert answer.status_code == status_code, answer.content
    no_header = await async_client.post("/datastar/publish/", {"message": "hi"}, content_type="application/json")
    assert no_header.status_code == 400
    settings.SSE_DEMO_PUBLISH = False
    refused = await async_client.post(
        "/datastar/publish/", {"message": "hi"}, content_type="application/json", headers=headers
    )
    assert refused.status_code == 403
    assert json.loads(refused.content)["error"]
