"""async_view mode: the endpoint as Django serves it, middleware included."""

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.conf import settings as django_settings
from django.contrib import messages
from django.contrib.auth.models import User
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import request_finished, request_started
from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import AsyncClient, RequestFactory
from django.utils.deprecation import MiddlewareMixin

from sse import apublish
from sse.hub import get_hub
from tests.conftest import busy_sync_thread, data_events, read_until


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


# Django never closes SQLite's in-memory test database (closing would drop it).
IN_MEMORY = "needs a database whose connections Django closes, not SQLite's in-memory test database"


class CountingExecutor(ThreadPoolExecutor):
    """Django's one sync thread, counting what is handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.calls = 0

    def submit(self, *args, **kwargs):
        self.calls += 1  # a spy: the real executor still runs the job
        return super().submit(*args, **kwargs)


async def asgi_get(path: str, headers=(), wait: float = 5) -> tuple[ApplicationCommunicator, dict, dict]:
    """A GET through config.asgi, as Daphne calls it (not Django's test handler)."""
    from config.asgi import application

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers) or [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    comm = ApplicationCommunicator(application, scope)
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await comm.receive_output(wait)
    return comm, start, {k.decode().lower(): v.decode() for k, v in start["headers"]}


@pytest.mark.django_db(transaction=True)
async def test_a_public_stream_hands_djangos_sync_thread_no_job_from_open_to_close(backend, stream, monkeypatch):
    # Django runs each MiddlewareMixin hook of an async request in its one sync
    # thread (a dozen hand-offs per stream with the default stack), and the request
    # signals' receivers too: with only Django's own listening, a public stream needs none.
    executor = CountingExecutor()
    monkeypatch.setattr(SyncToAsync, "single_thread_executor", executor)
    comm, start, headers = await asgi_get(f"/sse/{stream}/")
    assert start["status"] == 200
    assert headers["x-content-type-options"] == "nosniff"  # SecurityMiddleware still ran
    assert headers["x-frame-options"] == "DENY"  # and XFrameOptionsMiddleware
    assert "cookie" in headers["vary"].lower()  # and SessionMiddleware's response hook
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)
    assert executor.calls == 0, f"{executor.calls} hand-offs to the sync thread"


@pytest.mark.django_db(transaction=True)
async def test_a_busy_sync_thread_does_not_hold_up_public_streams(backend, stream):
    # A slow query elsewhere holds Django's one sync thread: streams still open and close.
    async with busy_sync_thread() as busy:
        comm, start, _ = await asgi_get(f"/sse/{stream}/", wait=2)
        assert start["status"] == 200
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(2)
        assert not busy.done()


@pytest.mark.django_db(transaction=True)
async def test_the_projects_own_request_signal_receivers_still_run_in_the_sync_thread(backend, stream):
    # A receiver may query the database, which Django refuses on the event loop's thread.
    seen = []

    def receiver(sender, **kwargs):
        seen.append(threading.get_ident())

    request_started.connect(receiver)
    request_finished.connect(receiver)
    try:
        comm, start, _ = await asgi_get(f"/sse/{stream}/")
        assert start["status"] == 200
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)
    finally:
        request_started.disconnect(receiver)
        request_finished.disconnect(receiver)
    assert len(seen) == 2 and threading.get_ident() not in seen


def test_on_the_loops_thread_djangos_database_receivers_are_skipped(monkeypatch):
    # They would find no connection there: Django opens none on the loop's thread.
    from django.core.cache import close_caches
    from django.core.handlers.base import reset_urlconf
    from django.db import close_old_connections, reset_queries

    from sse.transports.inline import StreamHandler, inline_receivers

    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    assert inline_receivers(request_started, StreamHandler) == []
    assert set(inline_receivers(request_finished, StreamHandler)) == {reset_urlconf, close_caches}
    # Unless the project lets sync database code run on the loop: then all of Django's run.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert set(inline_receivers(request_started, StreamHandler)) == {reset_queries, close_old_connections}
    everything = {close_old_connections, reset_urlconf, close_caches}
    assert set(inline_receivers(request_finished, StreamHandler)) == everything


class CountingStorage(FallbackStorage):
    built: ClassVar[int] = 0

    def __init__(self, *args, **kwargs) -> None:
        type(self).built += 1
        super().__init__(*args, **kwargs)


@pytest.mark.django_db(transaction=True)
async def test_a_stream_never_builds_the_message_storage(backend, stream, settings):
    settings.MESSAGE_STORAGE = f"{__name__}.CountingStorage"
    CountingStorage.built = 0
    comm, start, _ = await asgi_get(f"/sse/{stream}/")
    assert start["status"] == 200
    assert (await comm.receive_output(5))["body"].startswith(b"retry: ")
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)
    assert CountingStorage.built == 0
    # The same middleware for a page builds it, as Django does.
    assert (await AsyncClient().get("/")).status_code == 200
    assert CountingStorage.built == 1


def test_a_message_added_on_the_stream_path_is_still_stored():
    from django.contrib.messages.middleware import MessageMiddleware

    from sse.transports.inline import DEFERRED

    hooks = DEFERRED[MessageMiddleware]
    middleware = MessageMiddleware(lambda request: HttpResponse())
    for used in (False, True):
        request = RequestFactory().get("/sse/s/")
        SessionMiddleware(lambda request: HttpResponse()).process_request(request)
        hooks["process_request"](middleware, request)
        if used:
            messages.info(request, "kept")
        response = hooks["process_response"](middleware, request, HttpResponse())
        assert ("messages" in response.cookies) is used


@pytest.mark.django_db(transaction=True)
async def test_with_only_djangos_receivers_a_stream_is_closed_on_the_loops_thread(backend, stream):
    comm, start, _ = await asgi_get(f"/sse/{stream}/")
    assert start["status"] == 200
    assert (await comm.receive_output(5))["body"].startswith(b"retry: ")
    [response] = [o for o in gc.get_objects() if isinstance(o, StreamingHttpResponse) and not o.closed]
    closed_in = []
    response._resource_closers.append(lambda: closed_in.append(threading.get_ident()))
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)
    assert response.closed and closed_in == [threading.get_ident()] and not response._resource_closers


@pytest.mark.django_db(transaction=True)
async def test_a_stream_that_read_the_database_closes_the_threads_connection_once_open(backend, stream, settings):
    # Django closes a request's connections at request_finished, which a stream sends
    # hours later: the thread that loaded the session closes its connection now.
    if getattr(connections["default"], "is_in_memory_db", lambda: False)():
        pytest.skip(f"{IN_MEMORY}: run with SSE_TEST_DATABASE_URL")
    settings.SSE_PUBLIC_STREAMS = []
    user = await User.objects.acreate_user(f"u-{stream}", password="x")
    client = AsyncClient()
    await client.aforce_login(user)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    cookie_header = f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode()
    comm, start, _ = await asgi_get(f"/sse/user.{user.pk}/", [(b"host", b"testserver"), (b"cookie", cookie_header)])
    assert start["status"] == 200
    assert await sync_to_async(lambda: connections["default"].connection)() is None
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(5)


@pytest.mark.django_db(transaction=True)
async def test_the_stream_path_still_validates_hosts_redirects_and_runs_other_middleware(backend, stream, settings):
    from config.asgi import application

    comm, start, _ = await asgi_get(f"/sse/{stream}/", [(b"host", b"evil.example")])
    assert start["status"] == 400
    # Middleware reads its settings when it is built: build the stream path's chain again.
    settings.SECURE_SSL_REDIRECT = True
    application.streams.load_middleware(is_async=True)
    try:
        comm, start, headers = await asgi_get(f"/sse/{stream}/")
        assert start["status"] == 301 and headers["location"].startswith("https://")
        settings.SECURE_SSL_REDIRECT = False
        # A middleware the project adds runs as Django runs it, in the sync thread.
        assert not application.streams.threaded, "Django's own middleware runs on the loop's thread"
        settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_view.ThreadRecorder"]
        application.streams.load_middleware(is_async=True)
        assert application.streams.threaded, "its database connections are closed once a stream opens"
        comm, start, _ = await asgi_get(f"/sse/{stream}/")
        assert start["status"] == 200
        assert ThreadRecorder.threads and threading.get_ident() not in ThreadRecorder.threads
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(5)
    finally:
        settings.SECURE_SSL_REDIRECT = False
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith("ThreadRecorder")]
        application.streams.load_middleware(is_async=True)


class ThreadRecorder(MiddlewareMixin):
    threads: ClassVar[list[int]] = []

    def process_request(self, request: HttpRequest) -> None:
        self.threads.append(threading.get_ident())


async def test_under_daphnes_inbox_an_open_stream_holds_one_task(backend, stream):
    # Daphne's receive is the connection's Inbox (sse.transports.daphne_server): the
    # disconnect is watched with a future, not a task blocked in receive().
    from config.asgi import application
    from sse.transports.daphne_server import Inbox

    async def open_stream() -> tuple[Inbox, asyncio.Task, list]:
        inbox, sent = Inbox(), []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": f"/sse/{stream}/"}
        scope |= {"raw_path": f"/sse/{stream}/".encode(), "query_string": b"", "root_path": ""}
        scope |= {"headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
        inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        task = asyncio.create_task(application(scope, inbox.get, send))
        for _ in range(500):
            if len(sent) >= 2:
                break
            await asyncio.sleep(0.01)
        assert sent[0]["status"] == 200 and sent[1]["body"].startswith(b"retry: ")
        return inbox, task, sent

    first = await open_stream()
    before = len(asyncio.all_tasks())
    more = [await open_stream() for _ in range(3)]
    assert (len(asyncio.all_tasks()) - before) / len(more) == 1
    for inbox, task, _ in [first, *more]:
        inbox.put_nowait({"type": "http.disconnect"})
        await asyncio.wait_for(task, 5)
    assert get_hub().open == 0


@pytest.mark.django_db(transaction=True)
async def test_an_open_stream_holds_two_tasks_and_ends_as_django_ends_a_request(backend, stream):
    # Its own and one waiting for the disconnect. Django's ASGIHandler.handle adds one
    # for the response and an asyncio.wait, held for as long as the stream is open.
    finished = []

    def on_finished(sender, **kwargs):
        finished.append(sender)

    async def open_stream() -> ApplicationCommunicator:
        comm, start, headers = await asgi_get(f"/sse/{stream}/")
        assert start["status"] == 200 and headers["content-type"] == "text/event-stream"
        assert (await comm.receive_output(5))["body"].startswith(b"retry: ")
        return comm

    request_finished.connect(on_finished)
    try:
        first = await open_stream()
        before = len(asyncio.all_tasks())
        more = [await open_stream() for _ in range(3)]
        assert (len(asyncio.all_tasks()) - before) / len(more) == 2
        assert get_hub().open == 4
        # Nor does it keep its request (META, session, body file) while it is open.
        gc.collect()
        assert not [obj for obj in gc.get_objects() if isinstance(obj, ASGIRequest)]
        # Nor the head it has sent: the response's headers, Django's list of them.
        kept = [obj for obj in gc.get_objects() if isinstance(obj, StreamingHttpResponse)]
        assert len(kept) == 4 and not any(response.headers for response in kept)
        assert not [obj for obj in gc.get_objects() if isinstance(obj, list) and (b"Cache-Control", b"no-cache") in obj]
        # A client that leaves: the application returns, the response is closed (request_finished).
        await first.send_input({"type": "http.disconnect"})
        await first.wait(5)
        assert len(finished) == 1 and get_hub().open == 3
        # Daphne cancels every application on shutdown: each stream still closes.
        for comm in more:
            comm.future.cancel()
        await asyncio.wait([comm.future for comm in more], timeout=5)
        assert all(comm.future.cancelled() for comm in more)
        assert len(finished) == 4 and get_hub().open == 0
    finally:
        request_finished.disconnect(on_finished)
