"""async_view mode: the endpoint as Django serves it, middleware included."""

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient

from sse import apublish
from sse.hub import get_hub
from tests.conftest import data_events, read_until


async def test_stream_headers_and_events(backend, stream):
    client = AsyncClient()
    response = await client.get(f"/sse/{stream}/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    assert response["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware ran
    assert "Connection" not in response and "Transfer-Encoding" not in response
    chunks = response.streaming_content
    assert (await anext(chunks)).startswith(b"retry: ")
    event_id = await apublish(stream, "n", {"x": 1})
    events = await read_until(chunks, data_events)
    assert data_events(events)[0]["id"] == event_id
    await chunks.aclose()


@pytest.mark.django_db(transaction=True)  # closing a response sends request_finished
async def test_a_response_closed_on_djangos_worker_thread_unsubscribes_on_the_loop(backend, stream):
    # Django's ASGI handler closes a response with sync_to_async: its closers run on
    # a worker thread, and the hub (sets, timers) belongs to the event loop's thread.
    response = await AsyncClient().get(f"/sse/{stream}/")
    await anext(response.streaming_content)
    hub = get_hub()
    assert hub.open == 1
    threads = []
    unsubscribe = hub.unsubscribe

    def recorded(sub):  # a spy on the real method, which still runs
        threads.append(threading.get_ident())
        unsubscribe(sub)

    hub.unsubscribe = recorded
    await sync_to_async(response.close, thread_sensitive=True)()
    await asyncio.sleep(0.01)
    assert threads == [threading.get_ident()], "unsubscribed on the loop's thread"
    assert hub.open == 0


async def test_bad_names_and_ids_are_4xx(backend, stream):
    client = AsyncClient()
    assert (await client.get("/sse/bad%20name/")).status_code == 404
    assert (await client.get(f"/sse/{'x' * 65}/")).status_code == 404
    assert (await client.get("/sse/a/b/")).status_code == 404
    assert (await client.get(f"/sse/{stream}/", headers={"Last-Event-ID": "nope"})).status_code == 400


async def test_host_validation(backend, stream):
    response = await AsyncClient().get(f"/sse/{stream}/", headers={"Host": "evil.example"})
    assert response.status_code == 400


async def test_https_redirect(backend, stream, settings):
    settings.SECURE_SSL_REDIRECT = True
    response = await AsyncClient().get(f"/sse/{stream}/")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
    secure = await AsyncClient().get(f"/sse/{stream}/", headers={"X-Forwarded-Proto": "https"})
    assert secure.status_code == 200
    await asyncio.wait_for(anext(secure.streaming_content), 5)
    await secure.streaming_content.aclose()


@pytest.mark.django_db(transaction=True)
async def test_private_streams_use_the_django_session(backend, settings):
    settings.SSE_PUBLIC_STREAMS = []
    alice = await User.objects.acreate_user("alice", password="x")
    bob = await User.objects.acreate_user("bob", password="x")
    client = AsyncClient()
    assert (await client.get(f"/sse/user.{alice.pk}/")).status_code == 403
    await client.aforce_login(alice)
    assert (await client.get(f"/sse/user.{bob.pk}/")).status_code == 403
    mine = await client.get(f"/sse/user.{alice.pk}/")
    assert mine.status_code == 200
    assert (await anext(mine.streaming_content)).startswith(b"retry:")
    await mine.streaming_content.aclose()


async def test_several_streams_cors_and_preflight_through_django(backend, stream, settings):
    settings.SSE_CORS_ORIGINS = ["https://app.example.com"]
    origin = {"Origin": "https://app.example.com"}
    client = AsyncClient()
    response = await client.get(f"/sse/?stream={stream}&stream={stream}-2", headers=origin)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware ran
    chunks = response.streaming_content
    await anext(chunks)
    event_id = await apublish(f"{stream}-2", "n", 1)
    events = await read_until(chunks, data_events)
    assert data_events(events)[0]["id"] == f"{stream}-2:{event_id},{stream}:"
    await chunks.aclose()
    preflight = await client.options(f"/sse/?stream={stream}", headers=origin)
    assert preflight.status_code == 204 and preflight["Access-Control-Allow-Methods"] == "GET"
    assert (await client.get(f"/sse/{stream}/", headers={"Origin": "https://evil.example"})).status_code == 403
    assert (await client.get("/sse/")).status_code == 400
