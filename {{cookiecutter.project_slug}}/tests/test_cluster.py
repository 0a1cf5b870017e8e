"""The Redis Cluster broker, against a real cluster: SSE_TEST_REDIS_CLUSTER_NODES=host:port,...

Skipped without one. The tests that every broker passes run against it too (the
``backend`` fixture's "cluster"); these are about what only a cluster has: slots and shards.
"""

import asyncio
import contextlib
import uuid

import pytest
from redis.cluster import key_slot

from sse import apublish, publish
from sse.backends import get_broker
from sse.hub import get_hub
from tests.conftest import CLUSTER_NODES, requires_cluster

pytestmark = requires_cluster


@pytest.fixture
async def cluster(settings):
    settings.SSE_KEY_PREFIX = f"test-{uuid.uuid4().hex[:8]}"
    settings.REDIS_URL = None
    settings.REDIS_CLUSTER_NODES = CLUSTER_NODES
    yield get_broker()
    from sse import hub

    await hub.aclose()


async def collect(sub, count: int) -> list[str]:
    """The ids of the next ``count`` events ``sub`` gets, then of any that follow within 0.2 s."""
    got: list[str] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            await sub.wait()
            got += [frame.split(b"\n", 1)[0].removeprefix(b"id: ").decode() for _key, frame in sub.take()]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.2):  # a duplicate would show up by now
            await sub.wait()
    got += [frame.split(b"\n", 1)[0].removeprefix(b"id: ").decode() for _key, frame in sub.take()]
    return got


async def test_a_streams_log_counter_and_channel_share_one_slot(cluster, stream):
    key = cluster.key(stream)
    assert key_slot(key.encode()) == key_slot((key + ":bytes").encode()) == key_slot(stream.encode())
    event_id = publish(stream, "n", {"x": 1})
    client = cluster.client()
    assert [id.decode() for id, _ in client.xrange(key)] == [event_id]
    assert int(client.get(key + ":bytes")) == len("n") + len('{"x":1}')
    assert await cluster.ahealth() == "ok"


async def test_streams_on_every_shard_reach_the_hub_once(cluster):
    names = [f"c{uuid.uuid4().hex[:6]}-{i}" for i in range(24)]
    owners = {cluster.client().get_node_from_key(cluster.key(name)).name for name in names}
    assert len(owners) > 1, "the names spread over several shards"
    hub = get_hub()
    subs = {name: await hub.subscribe(name) for name in names}
    sent = {name: [await apublish(name, "n", i) for i in range(3)] for name in names}
    got = await asyncio.gather(*(collect(sub, 3) for sub in subs.values()))
    assert dict(zip(subs, got, strict=True)) == sent
    feed = hub.feeds[0]  # the broker's; channels mode adds the layer's
    assert {feed.where[cluster.key(name).encode()].name for name in names} == owners


async def test_a_subscription_redis_drops_is_followed_and_caught_up_from_the_log(cluster, stream):
    hub = get_hub()
    sub = await hub.subscribe(stream)
    first = await apublish(stream, "n", 1)
    assert await collect(sub, 1) == [first]
    feed = hub.feeds[0]  # the broker's; channels mode adds the layer's
    channel = cluster.key(stream).encode()
    shard = feed.where[channel]
    # What Redis does when the stream's slot leaves that node (resharding, failover): an
    # SUNSUBSCRIBE the process did not ask for. Sent here on the feed's own connection,
    # then two events published before the event loop lets the feed see it: live, nobody
    # receives them; only the catch-up from the log can.
    await shard.pubsub.sunsubscribe(channel)
    missed = [publish(stream, "n", 2), publish(stream, "n", 3)]
    assert await collect(sub, 2) == missed
    last = await apublish(stream, "n", 4)  # live again, on the stream's node
    assert await collect(sub, 1) == [last]
    assert channel in feed.where[channel].channels


async def test_revocation_notices_cross_the_cluster(cluster, stream):
    hub = get_hub()
    await hub.subscribe(stream)  # the feed subscribes to the control channel with the first stream
    received = asyncio.Queue()
    hub.on_control.append(received.put_nowait)
    cluster.publish_control("revoke\n42")
    async with asyncio.timeout(5):
        assert await received.get() == "revoke\n42"
