"""channels mode: the consumer as Daphne runs it, through config.asgi's router."""

import asyncio

import pytest
from channels.layers import get_channel_layer
from channels.testing import ApplicationCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient

from config.asgi import application
from sse import apublish
from sse.hub import get_hub
from sse.transports import consumers
from tests.conftest import busy_sync_thread, parse

# Channels closes stale database connections around every handler, as Django does per request.
pytestmark = pytest.mark.django_db(transaction=True)


def scope(path: str, headers=(), query: bytes = b"") -> dict:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def start(path: str, headers=(), query: bytes = b""):
    comm = ApplicationCommunicator(application, scope(path, headers, query))
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await comm.receive_output(5)
    return comm, start, dict(start["headers"])


async def body(comm) -> bytes:
    message = await comm.receive_output(5)
    assert message["type"] == "http.response.body"
    return message["body"]


async def events_until(comm, count: int) -> list[dict]:
    text = ""
    while len([e for e in parse(text) if "data" in e]) < count:
        text += (await body(comm)).decode()
    return [e for e in parse(text) if "data" in e]


async def test_stream_headers_first_chunk_and_events(backend, stream):
    comm, start_msg, headers = await start(f"/sse/{stream}/")
    assert start_msg["status"] == 200
    assert headers[b"Content-Type"] == b"text/event-stream"
    assert headers[b"Cache-Control"] == b"no-cache"
    assert headers[b"X-Accel-Buffering"] == b"no"
    assert headers[b"X-Content-Type-Options"] == b"nosniff"  # SecurityMiddleware applied
    assert b"Connection" not in headers and b"Transfer-Encoding" not in headers
    assert (await body(comm)).startswith(b"retry: ")
    event_id = await apublish(stream, "n", {"x": 1})
    assert (await events_until(comm, 1))[0]["id"] == event_id
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)
    assert not get_hub().subscribers[stream]


async def test_plain_group_send_reaches_clients_once(backend, stream):
    comm, _, _ = await start(f"/sse/{stream}/")
    await body(comm)
    logged = await apublish(stream, "n", 1)
    await events_until(comm, 1)
    await get_channel_layer().group_send(stream, {"type": "sse.event", "event": "chat", "data": {"t": "hey"}})
    (event,) = await events_until(comm, 1)
    assert event == {"id": f"{logged}.1", "event": "chat", "data": '{"t":"hey"}'}
    assert await comm.receive_nothing(0.3)
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)


async def test_group_send_carries_text_as_is_and_refuses_both(backend, stream, caplog):
    comm, _, _ = await start(f"/sse/{stream}/")
    await body(comm)
    layer = get_channel_layer()
    await layer.group_send(stream, {"type": "sse.event", "event": "x", "data": 1, "text": "<p>"})
    await layer.group_send(stream, {"type": "sse.event", "event": "row", "text": "<tr>\n<td>1</td>\n</tr>"})
    (event,) = await events_until(comm, 1)
    assert (event["event"], event["data"]) == ("row", "<tr>\n<td>1</td>\n</tr>")
    assert "either data" in caplog.text, "the one with both was dropped, and said so"
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)


async def test_replay_through_the_consumer(backend, stream):
    ids = [await apublish(stream, "n", i) for i in range(3)]
    comm, _, _ = await start(f"/sse/{stream}/", headers=[(b"last-event-id", ids[0].encode())])
    assert [e["id"] for e in await events_until(comm, 2)] == ids[1:]
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)


async def test_bad_requests_are_4xx_with_a_reason(backend, stream):
    for path, headers, status in [
        ("/sse/bad%20name/", [], 404),
        (f"/sse/{'x' * 65}/", [], 404),
        (f"/sse/{stream}/", [(b"last-event-id", b"nope")], 400),
    ]:
        comm, start_msg, _ = await start(path.replace("%20", " "), headers)
        assert start_msg["status"] == status
        assert (await body(comm)).strip()
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)


async def test_host_validation_and_https_redirect(backend, stream, settings):
    comm, start_msg, _ = await start(f"/sse/{stream}/", headers=[(b"host", b"evil.example")])
    assert start_msg["status"] == 400
    settings.SECURE_SSL_REDIRECT = True
    comm, start_msg, headers = await start(f"/sse/{stream}/")
    assert start_msg["status"] == 301
    assert headers[b"Location"].startswith(b"https://")
    comm, start_msg, _ = await start(f"/sse/{stream}/", headers=[(b"x-forwarded-proto", b"https")])
    assert start_msg["status"] == 200
    await comm.send_input({"type": "http.disconnect"})
    await asyncio.wait_for(comm.wait(), 5)


async def test_the_middleware_is_built_once_and_again_after_a_setting_changes(backend, stream, settings):
    consumers.middleware.cache_clear()
    for _ in range(3):
        comm, start_msg, headers = await start(f"/sse/{stream}/")
        assert start_msg["status"] == 200 and headers[b"X-Content-Type-Options"] == b"nosniff"
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)
    assert consumers.middleware.cache_info()[:2] == (2, 1)  # hits, misses: built once, not per stream
    settings.SECURE_CONTENT_TYPE_NOSNIFF = False  # read when SecurityMiddleware is built
    comm, start_msg, headers = await start(f"/sse/{stream}/")
    assert start_msg["status"] == 200 and b"X-Content-Type-Options" not in headers
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)


async def test_private_streams_use_the_django_session(backend, settings):
    settings.SSE_PUBLIC_STREAMS = []
    alice = await User.objects.acreate_user("alice", password="x")
    bob = await User.objects.acreate_user("bob", password="x")
    client = AsyncClient()
    await client.aforce_login(alice)
    cookie = [
        (b"cookie", f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode())
    ]
    for path, headers, expected in [
        (f"/sse/user.{alice.pk}/", [], 403),
        (f"/sse/user.{bob.pk}/", cookie, 403),
        (f"/sse/user.{alice.pk}/", cookie, 200),
    ]:
        comm, start_msg, _ = await start(path, headers)
        assert start_msg["status"] == expected, path
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)


async def test_several_streams_cors_and_preflight_through_the_router(backend, stream, settings):
    settings.SSE_CORS_ORIGINS = ["https://app.example.com"]
    origin = [(b"origin", b"https://app.example.com")]
    query = f"stream={stream}&stream={stream}-2".encode()
    comm, start_msg, headers = await start("/sse/", origin, query)
    assert start_msg["status"] == 200
    assert headers[b"Access-Control-Allow-Origin"] == b"https://app.example.com"
    assert headers[b"X-Content-Type-Options"] == b"nosniff"
    assert (await body(comm)).startswith(b"retry: ")
    event_id = await apublish(f"{stream}-2", "n", 1)
    assert (await events_until(comm, 1))[0]["id"] == f"{stream}-2:{event_id},{stream}:"
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)
    for path, headers, qs, status in [
        ("/sse/", [(b"origin", b"https://evil.example")], query, 403),
        ("/sse/", [], b"", 400),
    ]:
        comm, start_msg, _ = await start(path, headers, qs)
        assert start_msg["status"] == status
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)
    preflight = scope("/sse/", origin, query)
    preflight["method"] = "OPTIONS"
    comm = ApplicationCommunicator(application, preflight)
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    start_msg = await comm.receive_output(5)
    assert start_msg["status"] == 204
    assert dict(start_msg["headers"])[b"Access-Control-Allow-Methods"] == b"GET"
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)


async def test_a_busy_sync_thread_does_not_hold_up_public_streams(backend, stream):
    # Channels hands every message, and again every disconnect, to Django's one sync
    # thread to close stale database connections; a public stream uses no database.
    # With that thread busy (a slow query elsewhere), streams must still open and close.
    async with busy_sync_thread() as busy:
        comm = ApplicationCommunicator(application, scope(f"/sse/{stream}/"))
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start_msg = await comm.receive_output(2)
        assert start_msg["status"] == 200
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(2)
        assert not busy.done()


async def test_an_open_stream_holds_two_tasks_and_still_ends_on_disconnect(backend, stream):
    # Its own and the pump: Channels' await_many_dispatch would add a task per
    # receive and an asyncio.wait, held for as long as the stream is open.
    async def open_stream():
        comm, start_msg, _ = await start(f"/sse/{stream}/")
        assert start_msg["status"] == 200
        assert (await body(comm)).startswith(b"retry: ")
        return comm

    first = await open_stream()
    before = len(asyncio.all_tasks())
    more = [await open_stream() for _ in range(3)]
    assert (len(asyncio.all_tasks()) - before) / len(more) == 2
    for comm in [first, *more]:
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)
    assert not get_hub().subscribers[stream]
