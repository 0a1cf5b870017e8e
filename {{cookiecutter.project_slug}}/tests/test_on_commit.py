"""publish_on_commit against a real database: a real commit, a real rollback."""

import faulthandler
import json
import logging

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import User
from django.db import transaction
from django.test import RequestFactory

from sse import publish, publish_on_commit
from sse.backends import get_broker
from sse.encoding import InvalidEvent
from sse.ops import metrics
from sse.transports.endpoint import stream_response
from tests.conftest import data_events, read_until

pytestmark = pytest.mark.django_db(transaction=True)


async def open_stream(stream: str):
    response = await stream_response(RequestFactory().get(f"/sse/{stream}/"), stream)
    assert response.status_code == 200
    chunks = response.streaming_content
    assert (await anext(chunks)).startswith(b"retry:")
    return chunks


def last_id(stream: str) -> str | None:
    """The newest id in the stream's log, from sync code run by sync_to_async."""
    return async_to_sync(get_broker().alast_id)(stream)


async def test_commit_publishes_once_and_rollback_never(backend, stream):
    chunks = await open_stream(stream)

    def rolled_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            User.objects.create_user("ghost")
            publish_on_commit(stream, "user.created", {"name": "ghost"})
            raise RuntimeError("roll back")

    def committed() -> None:
        with transaction.atomic():
            User.objects.create_user("alice")
            publish_on_commit(stream, "user.created", {"name": "alice"})
            assert last_id(stream) is None, "nothing is published before the commit"

    await sync_to_async(rolled_back)()
    await sync_to_async(committed)()
    assert not await User.objects.filter(username="ghost").aexists()
    assert await User.objects.filter(username="alice").aexists()
    events = await read_until(chunks, data_events)
    await chunks.aclose()
    assert [(e["event"], json.loads(e["data"])) for e in data_events(events)] == [("user.created", {"name": "alice"})]
    assert await get_broker().alast_id(stream) == data_events(events)[0]["id"], "one event in the log: alice's"


async def test_a_nested_rollback_drops_only_its_own_events(backend, stream):
    def nested() -> None:
        with transaction.atomic():
            publish_on_commit(stream, "n", "outer")
            with pytest.raises(RuntimeError), transaction.atomic():
                publish_on_commit(stream, "n", "inner")
                raise RuntimeError("roll back the savepoint")

    chunks = await open_stream(stream)
    await sync_to_async(nested)()
    events = await read_until(chunks, data_events)
    await chunks.aclose()
    assert [json.loads(e["data"]) for e in data_events(events)] == ["outer"]


async def test_bad_input_raises_at_the_call_not_at_commit(backend, stream):
    def bad(stream_name: str, event: str, data: object) -> None:
        with transaction.atomic():
            with pytest.raises(InvalidEvent):
                publish_on_commit(stream_name, event, data)
            User.objects.create_user(f"u{len(event)}-{len(stream_name)}")  # the transaction goes on

    await sync_to_async(bad)("bad name", "n", 1)
    await sync_to_async(bad)(stream, "reset", 1)
    await sync_to_async(bad)(stream, "n", {1, 2})
    await sync_to_async(bad)(stream, "a\nb", 1)
    assert await User.objects.acount() == 4
    assert await get_broker().alast_id(stream) is None


async def test_data_is_taken_at_the_call(backend, stream):
    def mutate_after() -> None:
        with transaction.atomic():
            data = {"items": [1]}
            publish_on_commit(stream, "n", data)
            data["items"].append(2)

    chunks = await open_stream(stream)
    await sync_to_async(mutate_after)()
    events = await read_until(chunks, data_events)
    await chunks.aclose()
    assert json.loads(data_events(events)[0]["data"]) == {"items": [1]}


async def test_outside_a_transaction_it_publishes_at_once(backend, stream):
    def autocommit() -> str | None:
        publish_on_commit(stream, "n", 1)
        return last_id(stream)

    assert await sync_to_async(autocommit)() is not None


async def test_redis_down_at_commit_keeps_the_data_and_logs_the_lost_event(settings, stream, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    failures = metrics.PUBLISH_FAILURES.value()

    def commit() -> None:
        with transaction.atomic():
            User.objects.create_user("bob")
            publish_on_commit(stream, "user.created", {"name": "bob"})

    with caplog.at_level(logging.ERROR, logger="sse"):
        await sync_to_async(commit)()  # no exception: the data is committed
    assert await User.objects.filter(username="bob").aexists()
    (record,) = [r for r in caplog.records if r.name == "sse" and r.levelno == logging.ERROR]
    assert f"stream={stream} event=user.created" in record.getMessage()
    assert "unavailable" in record.getMessage() and "bob" not in record.getMessage(), "no event data in logs"
    assert metrics.PUBLISH_FAILURES.value() == failures + 1


async def test_sync_publish_inside_a_running_event_loop_works(backend, stream):
    """By mistake, from async code: it blocks the loop for one round trip, and delivers."""
    chunks = await open_stream(stream)
    faulthandler.dump_traceback_later(20, exit=True)  # a deadlock fails the run instead of hanging it
    try:
        event_id = publish(stream, "n", "from a coroutine")
    finally:
        faulthandler.cancel_dump_traceback_later()
    events = await read_until(chunks, data_events)
    await chunks.aclose()
    assert data_events(events)[0]["id"] == event_id
