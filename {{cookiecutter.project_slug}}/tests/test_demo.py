"""The demo page and its publish endpoint: CSRF, DEBUG-or-staff, size limit, no relay."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client

from sse.broker import get_broker

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
