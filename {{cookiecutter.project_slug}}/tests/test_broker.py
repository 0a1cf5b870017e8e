import asyncio
import threading
import time

import pytest

from sse import apublish, hub, publish
from sse.backends import BrokerUnavailable, get_broker
from sse.backends.base import within
from sse.backends.memory import MemoryBroker
from sse.encoding import InvalidEvent, dumps, parse_id
from sse.hub import get_hub
from tests.conftest import parse


async def test_ids_increase_and_replay_returns_what_follows(backend, stream):
    ids = [await apublish(stream, "n", {"i": i}) for i in range(5)]
    assert [parse_id(i) for i in ids] == sorted(parse_id(i) for i in ids)
    assert len(set(ids)) == 5
    broker = get_broker()
    entries = await broker.areplay(stream, ids[1], 100)
    assert [(i, e, d) for i, e, d in entries] == [(ids[n], "n", dumps({"i": n})) for n in (2, 3, 4)]
    assert await broker.areplay(stream, ids[4], 100) == []
    assert await broker.areplay(stream, ids[1], 2) == [entries[0], entries[1]]
    assert await broker.alast_id(stream) == ids[4]


class RecordingBroker(MemoryBroker):
    """A backend of the project's own, named by SSE_BROKER."""

    name = "recording"


async def test_sse_broker_names_the_backend_over_the_environment(settings, stream):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # would be Redis (and unreachable) without SSE_BROKER
    settings.SSE_BROKER = f"{__name__}.RecordingBroker"
    try:
        assert type(get_broker()) is RecordingBroker
        event_id = await apublish(stream, "n", 1)
        assert await get_broker().alast_id(stream) == event_id
        assert get_hub().broker is get_broker()
    finally:
        await hub.aclose()
    settings.SSE_BROKER = None
    assert type(get_broker()).__name__ == "RedisBroker", "unset again: chosen from REDIS_URL"


async def test_unknown_id_is_outside_the_window(backend, stream):
    await apublish(stream, "n", 1)
    assert await get_broker().areplay(stream, "1-0", 10) is None
    assert await get_broker().areplay(stream + "x", "1-0", 10) is None


async def test_retention_is_bounded(backend, stream, settings):
    settings.SSE_MAXLEN = 3
    first = publish(stream, "n", 0)
    for i in range(300):  # Redis trims approximately, in whole nodes of 100
        publish(stream, "n", i)
    assert await get_broker().areplay(stream, first, 10) is None


async def test_retention_by_age(backend, stream, settings):
    settings.SSE_MAX_AGE = 0.3
    old = await apublish(stream, "n", "old")
    kept = await apublish(stream, "n", "kept")
    assert [e[0] for e in await get_broker().areplay(stream, old, 10)] == [kept]
    await asyncio.sleep(0.4)
    newest = await apublish(stream, "n", "new")
    assert await get_broker().areplay(stream, old, 10) is None, "older than SSE_MAX_AGE: not replayable"
    assert await get_broker().areplay(stream, kept, 10) is None
    assert await get_broker().alast_id(stream) == newest


@pytest.mark.parametrize(
    ("stream", "event", "data"),
    [("bad name", "e", 1), ("ok", "bad\nname", 1), ("ok", "e", float("inf")), ("ok", "reset", 1)],
    ids=["stream", "event", "data", "reserved-event"],
)
async def test_bad_input_is_rejected_before_anything_is_written(backend, stream, event, data):
    with pytest.raises(InvalidEvent):
        await apublish(stream, event, data)
    with pytest.raises(InvalidEvent):
        publish(stream, event, data)


async def test_data_size_is_limited(backend, stream, settings):
    settings.SSE_MAX_DATA_BYTES = 100
    with pytest.raises(InvalidEvent, match="SSE_MAX_DATA_BYTES"):
        await apublish(stream, "n", "x" * 200)


async def queued(sub, count: int) -> list:
    items = []
    async with asyncio.timeout(5):
        while len(items) < count:
            await sub.wait()
            items += sub.take()
    return items


async def test_hub_fans_out_once_encoded_frames_in_order(backend, stream):
    hub = get_hub()
    a, b = await hub.subscribe(stream), await hub.subscribe(stream)
    ids = [await apublish(stream, "n", i) for i in range(3)]
    for sub in (a, b):
        got = await queued(sub, len(ids))
        assert [parse(frame.decode())[0]["id"] for _key, frame in got] == ids
    assert got[0][1] is not None
    hub.unsubscribe(a)
    hub.unsubscribe(b)


async def test_sync_publish_from_other_threads_reaches_the_loop(backend, stream):
    hub = get_hub()
    sub = await hub.subscribe(stream)
    threads = [threading.Thread(target=publish, args=(stream, "t", n)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [key for key, _frame in await queued(sub, 10)]
    assert keys == sorted(keys)
    hub.unsubscribe(sub)


async def test_a_client_too_far_behind_is_closed(backend, stream, settings):
    settings.SSE_QUEUE_SIZE = 5
    hub = get_hub()
    sub = await hub.subscribe(stream)
    for i in range(10):
        await apublish(stream, "n", i)
    for _ in range(500):  # Redis delivers asynchronously: up to 5 s
        if sub.dropped:
            break
        await asyncio.sleep(0.01)
    assert sub.dropped
    assert sub.take() == [], "what was queued is dropped: the client replays it"


def keep_the_loop_busy(passes: float, for_seconds: float) -> None:
    """From now on, each pass of the running loop takes ``passes`` seconds, as with thousands of ready requests."""
    loop = asyncio.get_running_loop()
    until = loop.time() + for_seconds

    def busy() -> None:  # the loop's thread blocked, as by a pass over many callbacks
        time.sleep(passes)
        if loop.time() < until:
            loop.call_soon(busy)

    loop.call_soon(busy)


async def test_a_subscription_confirmed_late_on_a_busy_loop_is_not_an_outage(monkeypatch):
    # The first streams of a process come in a burst: Redis confirmed in time, the loop
    # was too busy to read it. A wall-clock timeout gave ~1,000 streams per process a 503.
    from sse.backends import redis as redis_backend

    monkeypatch.setattr(redis_backend, "SUBSCRIBE_TIMEOUT", 0.5)
    broker = redis_backend.RedisBroker(url="redis://127.0.0.1:1/0")
    loop = asyncio.get_running_loop()
    keep_the_loop_busy(0.3, for_seconds=1.5)
    confirmed = loop.create_future()
    loop.call_later(1.0, confirmed.set_result, None)  # Redis answered; the loop sees it late
    await redis_backend.wait_confirmed(broker, confirmed, "SUBSCRIBE")
    # On an idle loop a subscription never confirmed is still an outage after the timeout.
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="no SUBSCRIBE confirmation"):
        await redis_backend.wait_confirmed(broker, loop.create_future(), "SUBSCRIBE")
    assert 0.4 < time.monotonic() - started < 1.5


async def test_a_new_stream_on_a_busy_loop_waits_for_its_connection_to_redis(backend, stream):
    # A Daphne given a tenth of a core, opening 3,000 streams at once: its loop came back
    # to the connect to Redis after redis-py's 1 s wall-clock timeout, the feed failed,
    # and every stream waiting for it got a 503.
    keep_the_loop_busy(0.5, for_seconds=3)
    sub = await get_hub().subscribe(stream)
    event_id = await apublish(stream, "n", 1)
    assert [parse(frame.decode())[0]["id"] for _key, frame in await queued(sub, 1)] == [event_id]
    get_hub().unsubscribe(sub)


async def test_within_does_not_count_the_loops_own_delays():
    # A burst of requests can keep the loop busy for seconds: an answer that came in time
    # but was noticed late is not a timeout; on an idle loop the timeout is as given.
    keep_the_loop_busy(0.3, for_seconds=1.5)
    started = time.monotonic()
    assert await within(asyncio.sleep(1.2, result="answer"), 0.8) == "answer"
    assert time.monotonic() - started >= 1.2
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.5)
    assert 0.4 < time.monotonic() - started < 1.5
