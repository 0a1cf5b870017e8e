"""The demo page and its publish endpoint: CSRF, DEBUG-or-staff, size limit, no relay."""

import json
import re
import socket
import time

import django
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.template import engines
from django.template.loader import render_to_string
from django.test import AsyncClient, Client

from demo.views import HISTORY, HISTORY_WAIT, event_context
from sse import apublish
from sse.backends import get_broker

pytestmark = pytest.mark.django_db(transaction=True)


def post(client: Client, body: object, **extra):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post("/demo/publish/", data, content_type="application/json", **extra)


def test_page_renders_with_its_streams(settings):
    response = Client().get("/")
    assert response.status_code == 200
    assert b'data-stream="notifications"' in response.content
    assert "csrftoken" in response.cookies


def test_publishing_is_off_for_anonymous_users_in_production(settings):
    settings.SSE_DEMO_PUBLISH = False
    response = post(Client(), {"stream": "notifications", "data": 1})
    assert response.status_code == 403


async def test_staff_may_publish_and_get_the_id(backend, settings):
    settings.SSE_DEMO_PUBLISH = False
    staff = await User.objects.acreate_user("staff", password="x", is_staff=True)
    client = Client()
    await sync_to_async(client.force_login)(staff)
    response = await sync_to_async(post)(client, {"stream": "notifications", "event": "hello", "data": {"a": 1}})
    assert response.status_code == 200, response.content
    event_id = response.json()["id"]
    assert await get_broker().alast_id("notifications") == event_id


def test_csrf_is_enforced(settings):
    settings.SSE_DEMO_PUBLISH = True
    client = Client(enforce_csrf_checks=True)
    assert post(client, {"stream": "notifications", "data": 1}).status_code == 403
    client.get("/")  # sets the csrftoken cookie, as the page does
    token = client.cookies["csrftoken"].value
    assert post(client, {"stream": "notifications", "data": 1}, HTTP_X_CSRFTOKEN=token).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        ({"data": 1}, 400),
        ({"stream": "bad name", "data": 1}, 400),
        ({"stream": "ok", "event": "a\nb", "data": 1}, 400),
        (json.dumps({"stream": "ok", "data": "x" * 70_000}).encode(), 413),
    ],
    ids=["not-json", "no-stream", "bad-stream", "bad-event", "too-large"],
)
def test_bad_publish_requests_are_4xx(settings, body, status):
    settings.SSE_DEMO_PUBLISH = True
    assert post(Client(), body).status_code == status


def feed(page: str, stream: str) -> str:
    match = re.search(rf'<ul class="feed" data-stream="{stream}"[^>]*>(.*?)</ul>', page, re.S)
    assert match, page
    return match.group(0)


async def test_the_page_comes_with_the_newest_events_rendered_by_the_event_partial(backend):
    ids = [await apublish("notifications", "notification", {"n": n, "html": "<b>&"}) for n in range(HISTORY + 2)]
    text_id = await apublish("notifications", "note", "plain <text>")
    ids.append(text_id)
    page = (await AsyncClient().get("/")).content.decode()
    notifications = feed(page, "notifications")
    shown = re.findall(r'<li class="event" data-event-id="([^"]+)"', notifications)
    assert shown == ids[::-1][:HISTORY], "the newest events, newest first, as the live feed adds them"
    assert f'data-last-id="{text_id}"' in notifications, "the client goes live after the newest shown"
    # The same row as the page's, rendered on its own: how a view or a publisher renders one
    # fragment of a template ("template.html#partial") on Django 5.2 and 6.x alike.
    entry = (text_id, "note", json.dumps("plain <text>"))
    row = await sync_to_async(render_to_string)("demo/index.html#event", {"event": event_context(entry)})
    assert row.startswith(f'<li class="event" data-event-id="{text_id}"') and row in notifications
    assert '<pre class="event-data">plain &lt;text&gt;</pre>' in row, "escaped, a string shown as is"
    assert "&lt;b&gt;&amp;" in notifications and "<b>" not in notifications
    assert '<ul class="feed" data-stream="chat" data-last-id=""' in feed(page, "chat")
    assert feed(page, "chat").endswith("></ul>"), "an empty feed is :empty, so the page says it is waiting"


@pytest.mark.parametrize("data", ["\ud800", {"text": "a\udfffb", "n": ["\ud83d"]}], ids=["string", "nested"])
async def test_the_page_shows_events_with_lone_surrogates_as_json_escapes(backend, data):
    """Anyone allowed to publish can send a lone surrogate; the page must still load for all."""
    event_id = await apublish("notifications", "odd", data)
    response = await AsyncClient().get("/")
    assert response.status_code == 200
    row = re.search(rf'<li class="event" data-event-id="{event_id}".*?</li>', response.content.decode(), re.S)
    assert row is not None, "the event is listed"
    assert re.search(r"\\u(d800|dfff)", row[0]), "shown as the JSON escapes it was sent as"


async def test_an_html_event_in_the_history_is_shown_as_escaped_text(backend):
    await apublish("notifications", "row", text="<tr><td>1</td></tr>")
    response = await AsyncClient().get("/")
    assert response.status_code == 200
    assert '<pre class="event-data">&lt;tr&gt;&lt;td&gt;1&lt;/td&gt;&lt;/tr&gt;</pre>' in response.content.decode()


async def test_the_page_loads_without_history_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = await AsyncClient().get("/")
    assert response.status_code == 200
    assert 'data-last-id=""' in feed(response.content.decode(), "notifications")


async def test_the_page_loads_without_history_when_redis_does_not_answer(settings):
    """A Redis that accepts connections and says nothing must not hold the page."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody ever answers
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        response = await AsyncClient().get("/")
        elapsed = time.monotonic() - started
        await get_broker().aclose()
    assert response.status_code == 200
    assert 'data-last-id=""' in feed(response.content.decode(), "notifications")
    assert elapsed < HISTORY_WAIT + 2, f"the page took {elapsed:.1f} s"


def test_template_partials_are_builtins_on_every_django_version():
    """Django 6.0+ has them built in; on 5.2 django-template-partials gives the same tags."""
    builtins = engines["django"].engine.template_builtins
    assert any("partialdef" in library.tags and "partial" in library.tags for library in builtins)
    assert ("template_partials" in django_settings.INSTALLED_APPS) == (django.VERSION < (6, 0))
