import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.db import connections
from hypothesis import settings as hypothesis_settings

from sse import hub
from sse.encoding import STREAM_NAME

# No per-example deadline (shared CI machines are slow at times); CI replays fixed examples.
hypothesis_settings.register_profile("default", deadline=None)
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "default")

REDIS_URL = os.environ.get("SSE_TEST_REDIS_URL")
# Some nodes of a Redis Cluster (7+), host:port,host:port: the tests then run against it too.
_nodes = os.environ.get("SSE_TEST_REDIS_CLUSTER_NODES", "")
CLUSTER_NODES = [(host, int(port)) for host, _, port in (node.rpartition(":") for node in _nodes.split(",")) if host]
requires_cluster = pytest.mark.skipif(
    not CLUSTER_NODES, reason="set SSE_TEST_REDIS_CLUSTER_NODES to a Redis Cluster to test"
)
BACKENDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.skipif(not REDIS_URL, reason="set SSE_TEST_REDIS_URL to a Redis to test")),
    pytest.param("cluster", marks=requires_cluster),
]


@pytest.fixture(params=BACKENDS)
async def backend(request, settings):
    """Run the test against the in-memory broker, a real Redis and a real Redis Cluster."""
    settings.SSE_KEY_PREFIX = f"test-{uuid.uuid4().hex[:8]}"
    settings.REDIS_URL = REDIS_URL if request.param == "redis" else None
    settings.REDIS_CLUSTER_NODES = CLUSTER_NODES if request.param == "cluster" else []
    yield request.param
    # Each test has its own event loop: close what the hub opened on it.
    await hub.aclose()


@pytest.fixture(autouse=True)
def _close_shared_thread_connections():
    """Async tests reach the database through sync_to_async's one shared thread.

    No request ends there to close its connection: close it after each test, or
    PostgreSQL refuses to drop the test database while it is still open.
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@contextlib.asynccontextmanager
async def busy_sync_thread() -> AsyncIterator[asyncio.Future]:
    """Django's one sync thread held for as long as the block runs, as by a slow query elsewhere."""
    release = threading.Event()
    busy = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=True)(10))
    await asyncio.sleep(0.05)
    try:
        yield busy
    finally:
        release.set()
        await busy


@pytest.fixture
def stream() -> str:
    name = f"s-{uuid.uuid4().hex[:10]}"
    assert STREAM_NAME.fullmatch(name)
    return name


def parse(text: str) -> list[dict]:
    """A small WHATWG-style parser: the events, and the fields of each."""
    events, current = [], {}
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if current:
                events.append(current)
            current = {}
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data" and "data" in current:
            current["data"] += "\n" + value
        else:
            current[name or "comment"] = value
    return events


async def read_until(chunks, predicate, limit: float = 5.0) -> list[dict]:
    """Read an async iterator of SSE bytes until the parsed events satisfy ``predicate``."""
    text = ""
    async with asyncio.timeout(limit):
        async for chunk in chunks:
            text += chunk.decode()
            events = parse(text.rsplit("\n\n", 1)[0] + "\n\n") if "\n\n" in text else []
            if predicate(events):
                return events
    raise AssertionError(f"stream ended early: {text!r}")


def data_events(events: list[dict]) -> list[dict]:
    return [e for e in events if "data" in e]
