"""The Redis Cluster broker: each stream's log and live channel on the shard that owns it.

A stream's keys carry its name as a hash tag (``prefix:{stream}``), so the publish
script's XADD and SPUBLISH run on one shard in one atomic step, as with one Redis.
Each process keeps one sharded pub/sub connection per primary serving its streams
(:class:`ClusterFeed`); when a slot moves (migration, failover) the stream is
subscribed again on its new owner and caught up from the log.
"""

import asyncio
import logging
import threading
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from sse.backends.base import BrokerUnavailable, Feed, Sink, within
from sse.backends.redis import PUBLISH_SCRIPT, RedisBroker, catch_up, raise_swallowed_cancel, wait_confirmed
from sse.conf import setting

log = logging.getLogger("sse")

# The same script, notifying on the stream's shard only (a PUBLISH would cross the whole cluster).
SHARDED_PUBLISH_SCRIPT = PUBLISH_SCRIPT.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
assert SHARDED_PUBLISH_SCRIPT != PUBLISH_SCRIPT
# A script, not a bare SPUBLISH: a replica refuses it (MOVED) where it would accept an
# SPUBLISH from a client with an outdated slot map and tell no subscriber of the primary.
CONTROL_SCRIPT = "return redis.call('SPUBLISH', KEYS[1], ARGV[1])"
# Seconds between two readings of the slot map by each process, to follow a slot that moved
# without a word to it (its old primary cut off from the others, yet still answering us).
AUDIT_INTERVAL = 15.0


class ClusterBroker(RedisBroker):
    """Redis Cluster (``REDIS_CLUSTER_NODES``): one stream, one slot; sharded pub/sub."""

    name = "redis-cluster"
    script = SHARDED_PUBLISH_SCRIPT
    errors = (redis.RedisError, redis.exceptions.RedisClusterException)

    def __init__(self, nodes: list[tuple[str, int]] | None = None) -> None:
        super().__init__(url="", sentinels=[])
        self.nodes = nodes if nodes is not None else setting("REDIS_CLUSTER_NODES", [])
        if not self.nodes:
            raise BrokerUnavailable("REDIS_CLUSTER_NODES names no node")
        # REDIS_URL, if set, gives the credentials (and rediss:// TLS), as with Sentinel.
        credentials = {k: v for k, v in setting("REDIS_CLUSTER_OPTIONS", {}).items() if v is not None}
        self.options = {**self.options, **credentials}
        self._sync_cluster: redis.cluster.RedisCluster | None = None
        self._cluster_lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"Redis Cluster via {','.join(f'{host}:{port}' for host, port in self.nodes)}"

    def key(self, stream: str) -> str:
        # The hash tag puts the log, its byte counter and the channel in one slot.
        return self.prefix + ":{" + stream + "}"

    @property
    def control_channel(self) -> bytes:
        return (self.prefix + ":{!control}").encode()

    def client(self) -> redis.cluster.RedisCluster:  # type: ignore[override]
        with self._cluster_lock:
            if self._sync_cluster is None:
                startup = [redis.cluster.ClusterNode(host, port) for host, port in self.nodes]
                self._sync_cluster = redis.cluster.RedisCluster(startup_nodes=startup, **self.options)
            return self._sync_cluster

    def new_aclient(self, **extra: Any) -> acluster.RedisCluster:  # type: ignore[override]
        extra.pop("timeout", None)  # the cluster's pools do not block
        extra.pop("retry", None)  # it retries redirections and failovers itself
        startup = [acluster.ClusterNode(host, port) for host, port in self.nodes]
        return acluster.RedisCluster(startup_nodes=startup, **{**self.aoptions, **extra})

    def node_client(self, host: str, port: int) -> aredis.Redis:
        """A plain connection to one node, for its sharded pub/sub."""
        # No silent retries: a reconnect hidden from the feed would skip its catch-up.
        return aredis.Redis(host=host, port=port, **{**self.aoptions, "retry": AsyncRetry(NoBackoff(), 0)})

    def close(self) -> None:
        if self._sync_cluster is not None:
            self._sync_cluster.close()

    async def aclose(self) -> None:
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def publish_control(self, message: str) -> None:
        try:
            self.client().eval(CONTROL_SCRIPT, 1, self.control_channel, message)
        except self.errors as exc:
            raise self.unavailable(exc) from None

    async def ahealth(self) -> str | None:
        """Whether every primary answers and says the cluster is ok (every slot served)."""
        client = self.aclient()
        for attempt in range(2):
            try:
                async with asyncio.timeout(2):
                    if attempt:  # the slot map may name a primary that has since failed over
                        await client.nodes_manager.initialize()
                    infos = await client.cluster_info(target_nodes=acluster.RedisCluster.PRIMARIES)
                if "cluster_state" in infos:  # one primary: its answer, not one per node
                    infos = {"": infos}
                if all(info.get("cluster_state") == "ok" for info in infos.values()):
                    return "ok"
            except Exception:  # any failure means: not serving events now
                pass
        return "unavailable"

    def feed(self, hub: Sink) -> Feed:
        return ClusterFeed(self, hub)


class Shard:
    """The sharded pub/sub connection of one process to one primary, for the channels it owns.

    A channel added to a shard that was already served elsewhere (it moved, or this
    connection is new) holds its live messages until it has been caught up from the
    log: the hub then gets them in id order, once each.
    """

    def __init__(self, feed: "ClusterFeed", name: str, host: str, port: int) -> None:
        self.feed, self.name, self.host, self.port = feed, name, host, port
        self.channels: set[bytes] = set()
        self.held: dict[bytes, list[bytes]] = {}  # channel -> live messages until caught up
        self.leaving: set[bytes] = set()  # SUNSUBSCRIBE sent by us: not a move
        self.pubsub: aredis.client.PubSub | None = None
        self.error: BrokerUnavailable | None = None
        self.failures = 0
        self.task = feed.hub.spawn(self.run())

    async def add(self, channel: bytes) -> None:
        self.channels.add(channel)
        self.leaving.discard(channel)
        self.held[channel] = []
        if self.pubsub is not None:
            try:
                await self.pubsub.ssubscribe(channel)
            except redis.RedisError:
                pass  # run() notices, reconnects and subscribes again

    async def remove(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self.held.pop(channel, None)
        if self.pubsub is not None:
            self.leaving.add(channel)
            try:
                await self.pubsub.sunsubscribe(channel)
            except redis.RedisError:
                pass

    async def run(self) -> None:
        while self.channels:
            try:
                await self.listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = self.feed.broker.unavailable(exc)
                if self.failures == 0:
                    expected = isinstance(exc, redis.RedisError | OSError | TimeoutError)
                    log.error(
                        "sse: live events from %s paused: %s; reconnecting", self.name, exc, exc_info=not expected
                    )
                self.failures += 1
                self.feed.failed(self)
                await asyncio.sleep(min(0.05 * 2**self.failures, 1.0))
                # A failover gives these slots to a replica: follow them there.
                await self.feed.reroute_all(self)
        if self.feed.shards.get(self.name) is self:
            del self.feed.shards[self.name]

    async def listen(self) -> None:
        client = self.feed.broker.node_client(self.host, self.port)
        pubsub = client.pubsub()
        try:
            timeout = self.feed.broker.options["socket_connect_timeout"]
            try:
                await within(pubsub.connect(), timeout)  # the loop's own delays not counted
            except TimeoutError:
                raise redis.TimeoutError(f"no answer within {timeout} s") from None
            self.held = {channel: [] for channel in self.channels}
            self.leaving.clear()
            self.pubsub = pubsub  # from now on add() subscribes itself
            # One SSUBSCRIBE per channel: one naming channels of several slots is refused.
            for channel in list(self.channels):
                await pubsub.ssubscribe(channel)
            self.error = None
            if self.failures:
                log.warning("sse: live events from %s resumed after %d failed attempts", self.name, self.failures)
                self.failures = 0
            while self.channels or self.leaving:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                    raise_swallowed_cancel()  # or this loop would outlive the hub (Python 3.11)
                except redis.exceptions.AskError as exc:
                    # An SSUBSCRIBE reached a node that no longer (MOVED) or not yet
                    # (ASK, mid-migration) serves that slot: route those channels again.
                    for channel in [ch for ch in self.channels if self.feed.slot(ch) == exc.slot_id]:
                        log.info("sse: %r is not served by %s (%s); routing it again", channel, self.name, exc)
                        self.moved(channel, delay=0.1)
                    continue
                if message is not None:
                    self.handle(message)
        finally:
            self.pubsub = None
            await pubsub.aclose()
            await client.aclose()

    def handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            held = self.held.get(channel)
            if held is not None:
                held.append(message["data"])
            elif channel in self.channels:
                self.feed.dispatch(channel, message["data"])
        elif kind == "ssubscribe" and channel in self.held:
            self.feed.hub.spawn(self.caught_up(channel))
        elif kind == "sunsubscribe":
            if channel in self.leaving:
                self.leaving.discard(channel)
            elif channel in self.channels:
                # Not asked for: Redis dropped it because its slot went to another node.
                log.info("sse: %r left %s (slot moved); following it", channel, self.name)
                self.moved(channel)

    def moved(self, channel: bytes, delay: float = 0.0) -> None:
        self.channels.discard(channel)
        self.held.pop(channel, None)
        self.feed.reroute(channel, delay)

    async def caught_up(self, channel: bytes) -> None:
        """Catch ``channel`` up from the log, then hand on what was held meanwhile."""
        held = self.held.get(channel)
        try:
            await self.feed.catch_up(channel)
        except BrokerUnavailable as exc:
            # Its shard is failing over too: try again from wherever it is by then.
            log.info("sse: catch-up of %r on %s failed (%s); retrying", channel, self.name, exc)
            if self.held.get(channel) is held:
                self.moved(channel, delay=0.2)
            return
        if held is None or self.held.get(channel) is not held:
            return  # moved, unwatched or subscribed again meanwhile: that one catches up itself
        del self.held[channel]
        for data in held:
            self.feed.dispatch(channel, data)
        self.feed.confirm(channel)


class ClusterFeed:
    """The live events of one hub: a :class:`Shard` per primary owning watched streams."""

    def __init__(self, broker: ClusterBroker, hub: Sink) -> None:
        self.broker = broker
        self.hub = hub
        self.client = broker.aclient()
        self.streams: dict[bytes, str] = {broker.control_channel: ""}  # never unwatched
        self.shards: dict[str, Shard] = {}
        self.where: dict[bytes, Shard] = {}
        self.served: set[bytes] = set()  # delivered live before: a move catches these up
        self.confirmed: dict[bytes, asyncio.Future[None]] = {}
        self.lock = asyncio.Lock()
        self.refreshing = asyncio.Lock()
        self.refreshed = 0.0
        self.auditor: asyncio.Task[None] | None = None

    def slot(self, channel: bytes) -> int:
        return self.client.keyslot(channel)

    async def watch(self, stream: str) -> None:
        channel = self.broker.key(stream).encode()
        async with self.lock:
            if channel in self.served and channel in self.where:
                return  # live already (a stream that failed to start, opened again)
            self.streams[channel] = stream
            waits = [self.pending(channel)]
            if self.broker.control_channel not in self.served:
                waits.append(self.pending(self.broker.control_channel))
            if self.broker.control_channel not in self.where:
                # With the first stream, as with one Redis: a revocation notice sent once
                # that stream is open reaches this process, whichever shard has the channel.
                await self.route(self.broker.control_channel)
            shard = await self.route(channel)
        if shard.error is not None:
            raise shard.error  # its primary is known to be down: answer now
        for confirmed in waits:
            await wait_confirmed(self.broker, confirmed, "SSUBSCRIBE")

    async def unwatch(self, stream: str) -> None:
        channel = self.broker.key(stream).encode()
        async with self.lock:
            self.streams.pop(channel, None)
            self.confirmed.pop(channel, None)
            self.served.discard(channel)
            shard = self.where.pop(channel, None)
            if shard is not None:
                await shard.remove(channel)

    async def route(self, channel: bytes) -> Shard:
        """Subscribe ``channel`` on the primary that owns its slot now."""
        try:
            await self.client.initialize()  # once: the slot map
            node = self.client.get_node_from_key(channel)
        except self.broker.errors as exc:
            raise self.broker.unavailable(exc) from None
        shard = self.shards.get(node.name)
        if shard is None or shard.task.done():
            shard = self.shards[node.name] = Shard(self, node.name, node.host, node.port)
        if self.auditor is None:
            self.auditor = self.hub.spawn(self.audit())
        self.where[channel] = shard
        await shard.add(channel)
        return shard

    def reroute(self, channel: bytes, delay: float = 0.0) -> None:
        self.where.pop(channel, None)
        self.hub.spawn(self._reroute(channel, delay))

    async def _reroute(self, channel: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        while channel in self.streams and channel not in self.where:
            try:
                await self.refresh()
                async with self.lock:
                    if channel in self.streams and channel not in self.where:
                        await self.route(channel)
                return
            except BrokerUnavailable:
                await asyncio.sleep(0.5)  # no node answers: the cluster is down, keep trying

    async def reroute_all(self, shard: Shard) -> None:
        """After ``shard`` failed: move the channels whose slots now belong to another primary."""
        try:
            await self.refresh()
        except BrokerUnavailable:
            return
        await self.follow(shard)

    async def follow(self, shard: Shard) -> None:
        """Move ``shard``'s channels whose slots the slot map gives to another primary."""
        for channel in list(shard.channels):
            try:
                owner = self.client.get_node_from_key(channel).name
            except self.broker.errors:
                continue  # no owner yet: the failover is not over
            if owner != shard.name and channel in shard.channels:
                log.info("sse: %r is now served by %s, not %s; following it", channel, owner, shard.name)
                await shard.remove(channel)
                self.reroute(channel)

    async def audit(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_INTERVAL)
            try:
                await self.refresh()
            except BrokerUnavailable:
                continue  # the shards say so themselves
            for shard in list(self.shards.values()):
                await self.follow(shard)

    async def refresh(self) -> None:
        """Read the slot map again: once for all who ask meanwhile, at most five times a second."""
        async with self.refreshing:
            if self.hub.loop.time() - self.refreshed < 0.2:
                return
            try:
                await self.client.nodes_manager.initialize()
            except self.broker.errors as exc:
                raise self.broker.unavailable(exc) from None
            finally:
                self.refreshed = self.hub.loop.time()

    def failed(self, shard: Shard) -> None:
        """New streams waiting on ``shard`` get their 503 now, not after the timeout."""
        for channel in shard.channels:
            future = self.confirmed.get(channel)
            if future is not None and not future.done():
                future.set_exception(shard.error)
                future.exception()  # retrieved: a future nobody awaits logs nothing

    def pending(self, channel: bytes) -> asyncio.Future[None]:
        """The future :meth:`confirm` resolves for ``channel``: a new one unless one is pending."""
        future = self.confirmed.get(channel)
        if future is None or future.done():
            future = self.confirmed[channel] = self.hub.loop.create_future()
        return future

    def confirm(self, channel: bytes) -> None:
        self.served.add(channel)
        future = self.confirmed.get(channel)
        if future is not None and not future.done():
            future.set_result(None)

    def dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == self.broker.control_channel:
            self.hub.control(data.decode())
            return
        stream = self.streams.get(channel)
        if stream:
            id, event, payload = data.decode().split("\n", 2)
            self.hub.deliver(stream, id, event, payload)

    async def catch_up(self, channel: bytes) -> None:
        stream = self.streams.get(channel)
        if stream and channel in self.served:
            # From the start of the log when this process has seen none of it: its
            # first events may have been written to the new owner while we listened
            # to the old one.
            await catch_up(self.broker, self.hub, stream)
