"""Each stream's log has a worst case in bytes, the same in both brokers, and age applies when idle."""

import asyncio
import uuid

import pytest
import redis
from django.core import checks

from sse import apublish, hub, publish
from sse.backends import get_broker
from sse.encoding import dumps
from tests.conftest import REDIS_URL

requires_redis = pytest.mark.skipif(not REDIS_URL, reason="set SSE_TEST_REDIS_URL to a Redis to test")


@pytest.fixture
async def memory(settings):
    """The in-memory broker only: what is tested is its own trimming."""
    settings.REDIS_URL = None
    yield
    await hub.aclose()


@pytest.fixture
async def redis_only(settings):
    """A real Redis only: what is tested is Redis' own accounting."""
    settings.SSE_KEY_PREFIX = f"test-{uuid.uuid4().hex[:8]}"
    settings.REDIS_URL = REDIS_URL
    yield
    await hub.aclose()


def data_of(size: int) -> str:
    """A string whose JSON text is ``size`` bytes."""
    return "x" * (size - 2)


async def whole_log(stream: str) -> list[tuple[str, str, str]]:
    entries = []
    async for page in get_broker().pages(stream, ""):
        assert page is not None
        entries += page
    return entries


async def test_the_log_keeps_at_most_sse_max_stream_bytes(backend, stream, settings):
    settings.SSE_MAX_STREAM_BYTES = 10_000
    ids = [await apublish(stream, "n", data_of(999)) for _ in range(50)]  # 1 + 999 bytes each
    entries = await whole_log(stream)
    assert [e[0] for e in entries] == ids[-10:], "the newest events that fit, exactly"
    assert sum(len(event) + len(data) for _id, event, data in entries) == 10_000
    assert await get_broker().areplay(stream, ids[-11], 10) is None, "trimmed: a reconnect gets reset"
    assert [e[0] for e in await get_broker().areplay(stream, ids[-10], 100)] == ids[-9:]


async def test_an_event_larger_than_the_budget_stays_alone(backend, stream, settings):
    settings.SSE_MAX_STREAM_BYTES = 1_000
    await apublish(stream, "n", data_of(100))
    big = await apublish(stream, "n", data_of(5_000))
    assert [e[0] for e in await whole_log(stream)] == [big], "the newest event always stays"
    small = await apublish(stream, "n", data_of(100))
    assert [e[0] for e in await whole_log(stream)] == [small]


async def test_the_count_bound_is_exact(backend, stream, settings):
    settings.SSE_MAXLEN = 3
    ids = [publish(stream, "n", i) for i in range(250)]
    assert [e[0] for e in await whole_log(stream)] == ids[-3:]


async def test_age_applies_to_an_idle_stream_of_the_memory_broker(memory, stream, settings):
    # Redis trims by age when publishing, and its key expires after SSE_STREAM_TTL.
    settings.SSE_MAX_AGE = 0.3
    old = await apublish(stream, "n", "old")
    newest = await apublish(stream, "n", "newest")
    await asyncio.sleep(0.4)  # nothing published since
    assert await get_broker().areplay(stream, old, 10) is None, "older than SSE_MAX_AGE: not replayable"
    assert [e[0] for e in await whole_log(stream)] == [newest], "the newest stays, as in Redis"


async def test_an_idle_memory_log_is_dropped_after_sse_stream_ttl(memory, stream, settings):
    settings.SSE_STREAM_TTL = 0.3
    event_id = await apublish(stream, "n", 1)
    assert await get_broker().alast_id(stream) == event_id
    await asyncio.sleep(0.4)
    assert await get_broker().alast_id(stream) is None
    assert await get_broker().areplay(stream, event_id, 10) is None


@requires_redis
async def test_redis_counts_bytes_exactly_and_rebuilds_a_lost_counter(redis_only, stream, settings):
    settings.SSE_MAX_STREAM_BYTES = 1_000_000
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{settings.SSE_KEY_PREFIX}:{stream}"
    try:
        for i in range(30):
            publish(stream, "n", data_of(1_000 + i))
        expected = sum(len(e) + len(d) for _i, e, d in await whole_log(stream))
        assert int(client.get(key + ":bytes")) == expected
        assert 0 < client.ttl(key + ":bytes") <= settings.SSE_STREAM_TTL
        client.delete(key + ":bytes")  # evicted, or a log from before the counter
        publish(stream, "n", None)
        assert int(client.get(key + ":bytes")) == expected + len("n") + len(dumps(None))
    finally:
        client.delete(key, key + ":bytes")
        client.close()


@requires_redis
async def test_redis_memory_of_a_full_log_stays_near_the_budget(redis_only, stream, settings):
    """The stated worst case: SSE_MAX_STREAM_BYTES plus Redis' own overhead, measured."""
    budget = settings.SSE_MAX_STREAM_BYTES = 2_000_000
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{settings.SSE_KEY_PREFIX}:{stream}"
    try:
        for size in (100, 5_000, 200_000):  # many small events, one per node, large ones
            for _ in range(3 * budget // size):
                publish(stream, "n", data_of(size))
            used = client.memory_usage(key, samples=0)
            assert used < budget * 1.25 + 100_000, (size, used)
    finally:
        client.delete(key, key + ":bytes")
        client.close()


def test_a_single_event_larger_than_the_budget_is_warned_about(settings):
    assert not [m for m in checks.run_checks(tags=["sse"]) if m.id == "sse.W001"], "the defaults fit"
    settings.SSE_MAX_STREAM_BYTES = 100_000
    settings.SSE_MAX_DATA_BYTES = 1_000_000
    warnings = [m for m in checks.run_checks(tags=["sse"]) if m.id == "sse.W001"]
    assert len(warnings) == 1 and "SSE_MAX_STREAM_BYTES" in warnings[0].msg
    settings.SSE_MAX_STREAM_BYTES = 0  # no byte limit: nothing to compare with
    assert not [m for m in checks.run_checks(tags=["sse"]) if m.id == "sse.W001"]
