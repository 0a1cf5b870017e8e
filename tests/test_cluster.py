"""Redis Cluster (``REDIS_CLUSTER_NODES``), per mode: a real cluster of three primaries and
three replicas (tests/conftest.py), two Daphne processes, publishers in other processes.

Each test uses its own key prefix; stream names alone decide the slots (the hash tag is
the stream name), so the same names land on the same shards in every test. The tests that
kill, freeze or reshard get a cluster of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, Daphne, Project, RedisCluster, free_port
from tests.sse_client import SSEConnection
from tests.test_e2e import connect
from tests.test_ops import scrape
from tests.test_redis_faults import get, health

# argv: rounds, seconds between rounds, streams; prints "stream id" per event. A publish that
# fails with BrokerUnavailable (a primary failing over, CLUSTERDOWN) is retried, and says so.
PUBLISHER = """
import sys, time, django
django.setup()
from sse import publish
from sse.backends import BrokerUnavailable

rounds, pause, streams = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
for i in range(rounds):
    for stream in streams:
        started = time.monotonic()
        while True:
            try:
                print(stream, publish(stream, "n", {"stream": stream, "i": i}), flush=True)
                break
            except BrokerUnavailable as exc:
                print(f"retry {stream} after {time.monotonic() - started:.1f}s: {exc}", file=sys.stderr, flush=True)
                if time.monotonic() > started + 120:
                    raise
                time.sleep(0.1)
        if time.monotonic() - started > 1:
            print(f"slow {stream}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    time.sleep(pause)
"""

# The log of each stream named in argv, as JSON: {stream: [id, ...]}.
LOG_DUMP = """
import json, sys, django
django.setup()
from sse.backends import get_broker

broker = get_broker()
print(json.dumps({s: [id.decode() for id, _ in broker.client().xrange(broker.key(s))] for s in sys.argv[1:]}))
"""


class ClusterSetup:
    """Daphne processes and publishers of ``project`` on the test cluster, with a fresh key prefix."""

    def __init__(self, project: Project, cluster: RedisCluster, tmp_path) -> None:
        self.project, self.cluster, self.tmp_path = project, cluster, tmp_path
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.daphnes: list[Daphne] = []
        self.publishers: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        return self.project.env(REDIS_CLUSTER_NODES=self.cluster.nodes, SSE_KEY_PREFIX=self.prefix, **extra)

    def daphne(self, **extra: str) -> Daphne:
        port = free_port()
        daphne = Daphne(self.project, port, self.env(**extra), self.tmp_path / f"daphne-{port}.log")
        self.daphnes.append(daphne)
        return daphne

    def publisher(self, streams: list[str], rounds: int, pause: float = 0.0, **env: str) -> subprocess.Popen:
        self.publishers.append(proc := self._publisher(streams, rounds, pause, **env))
        return proc

    def _publisher(self, streams: list[str], rounds: int, pause: float, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            [self.project.python, "-c", PUBLISHER, str(rounds), str(pause), *streams],
            cwd=self.project.path,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def logs(self, streams: list[str]) -> dict[str, list[str]]:
        return json.loads(self.project.run("-c", LOG_DUMP, *streams, env=self.env()).stdout)

    def stop(self) -> None:
        for proc in self.publishers:  # one a failed test left running would warn when collected
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        for daphne in self.daphnes:
            daphne.stop()
        for daphne in self.daphnes:
            assert "Traceback" not in daphne.output(), daphne.output()


@pytest.fixture
def cluster(project, redis_cluster, tmp_path):
    setup = ClusterSetup(project, redis_cluster, tmp_path)
    yield setup
    setup.stop()


@pytest.fixture
def own_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    """A cluster of the test's own, for the tests that kill, freeze or reshard: whatever a node
    that comes back leaves unsettled reaches no other test."""
    cluster = RedisCluster(tmp_path_factory.mktemp("own-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own(project, own_cluster, tmp_path):
    setup = ClusterSetup(project, own_cluster, tmp_path)
    yield setup
    setup.stop()


def published(proc: subprocess.Popen, timeout: float = 120) -> dict[str, list[str]]:
    """The ids a publisher printed, per stream, once it has exited successfully."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    proc.retries = err.count("retry ")  # type: ignore[attr-defined]
    proc.stderr_text = err  # type: ignore[attr-defined]
    ids: dict[str, list[str]] = {}
    for line in out.split("\n"):
        if line:
            stream, id = line.split()
            ids.setdefault(stream, []).append(id)
    return ids


def shards(cluster: RedisCluster, streams: list[str]) -> Counter:
    """How many of ``streams`` each primary serves."""
    return Counter(cluster.primary_of_slot(cluster.slot(s)) for s in streams)


def wait_all(clients: dict[str, list[SSEConnection]], expected: dict[str, list[str]], timeout: float = 60) -> None:
    """Until every client has as many events as its stream's log, then: exactly those, in order."""
    deadline = time.monotonic() + timeout
    for stream, conns in clients.items():
        for conn in conns:
            conn.wait(lambda c: len(c.parser.events) >= len(expected[stream]), max(deadline - time.monotonic(), 0.1))
    time.sleep(0.5)  # a duplicate would show up by now
    for stream, conns in clients.items():
        for conn in conns:
            got = [e.id for e in conn.events]
            assert not conn.closed, f"{stream}: the stream was closed"
            missing = set(expected[stream]) - set(got)
            assert got == expected[stream], (
                f"{stream}: {len(got)} events for {len(expected[stream])}: missing {sorted(missing)[:5]}, "
                f"duplicated {[i for i, n in Counter(got).items() if n > 1][:5]}"
            )


def test_cluster_comes_up_with_three_primaries_each_with_a_replica(redis_cluster):
    topology = redis_cluster.topology()
    primaries = redis_cluster.primary_ports()
    assert len(primaries) == 3
    replicas = [node for node in topology.values() if not node["primary"]]
    assert sorted(r["of"] for r in replicas) == sorted(topology[p]["id"] for p in primaries)
    for port in redis_cluster.alive():
        assert "cluster_state:ok" in redis_cluster.cli(port, "cluster", "info")


STREAMS = [f"c-{i}" for i in range(100)]


def test_hundred_streams_on_every_shard_reach_both_processes_once_in_order(project, redis_cluster, cluster):
    assert len(shards(redis_cluster, STREAMS)) == 3, "the streams are spread over every shard"
    a, b = cluster.daphne(SSE_METRICS="1"), cluster.daphne()
    clients = {s: [connect(a, s), connect(b, s)] for s in STREAMS}
    publishers = [cluster.publisher(STREAMS[:50], 5), cluster.publisher(STREAMS[50:], 5)]
    acked = {**published(publishers[0]), **published(publishers[1])}
    # manage.py send_event from a third process, with nothing but REDIS_CLUSTER_NODES.
    sent = project.manage("send_event", "c-7", "--data", '{"by": "send_event"}', env=cluster.env()).stdout.strip()
    acked["c-7"].append(sent)
    log = cluster.logs(STREAMS)
    assert log == acked, "the log is exactly what was acknowledged, in order"
    wait_all(clients, log)
    assert json.loads(clients["c-7"][1].events[-1].data) == {"by": "send_event"}
    for status, body in (health(a), health(b)):
        assert status == 200 and body["status"] == "ok" and body["redis"] == "ok", body
        assert body["broker"] == "redis-cluster", body
    metrics = scrape(a)
    assert metrics["sse_open_streams"] == 100 and metrics["sse_hub_events_total"] >= 501
    for conns in clients.values():
        for conn in conns:
            conn.close()


def test_replay_of_streams_on_different_shards_with_a_composite_id(project, redis_cluster, cluster):
    pair = ["c-1", "c-2"]
    if len(shards(redis_cluster, pair)) != 2:
        pair = next([x, y] for x in STREAMS for y in STREAMS if len(shards(redis_cluster, [x, y])) == 2)
    a, b = cluster.daphne(), cluster.daphne()
    path = f"/sse/?stream={pair[0]}&stream={pair[1]}"
    first = SSEConnection("127.0.0.1", a.port, path)
    assert first.wait_status() == 200
    published(cluster.publisher(pair, 2))
    seen = first.wait_events(4)
    first.close()
    missed = published(cluster.publisher(pair, 3))
    again = SSEConnection("127.0.0.1", b.port, path, {"Last-Event-ID": seen[-1].id})  # the other process
    events = again.wait_events(6)
    time.sleep(0.5)  # a duplicate would show up by now
    for stream in pair:
        mine = [e.id.split(",")[0].partition(":")[2] for e in again.events if e.id.startswith(stream + ":")]
        assert mine == missed[stream], "exactly the missed events of each stream, in order"
    assert dict(p.split(":", 1) for p in events[-1].id.split(",")) == {s: missed[s][-1] for s in pair}
    again.close()


def test_killing_a_primary_while_events_flow_loses_and_duplicates_nothing(project, own_cluster, own):
    streams = STREAMS[:30]
    a, b = own.daphne(), own.daphne()
    clients = {s: [connect(a, s), connect(b, s)] for s in streams}
    victim = shards(own_cluster, streams).most_common(1)[0][0]
    publishers = [own.publisher(streams[:15], 60, 0.05), own.publisher(streams[15:], 60, 0.05)]
    time.sleep(1.5)  # events flow
    own_cluster.kill(victim)
    try:
        acked = {**published(publishers[0]), **published(publishers[1])}
        own_cluster.wait_ok()  # a replica took over
        log = own.logs(streams)
        for stream in streams:
            assert set(acked[stream]) <= set(log[stream]), "no acknowledged event was lost"
        wait_all(clients, log)
        # redis-py retries a publish through most of a failover; what it gives up on the publisher retries.
        assert victim not in own_cluster.primary_ports(), "a replica took over"
        for daphne in (a, b):
            assert "paused" in daphne.output(), "the feed saw its connection to the primary go"
            status, body = health(daphne)
            assert status == 200 and body["redis"] == "ok", body
    finally:
        own_cluster.restart(victim)  # back, as a replica of the promoted one
        own_cluster.wait_ok()
    for conns in clients.values():
        for conn in conns:
            conn.close()


def test_a_frozen_primary_is_left_for_its_replica_and_its_streams_catch_up(project, own_cluster, own):
    """A primary that stops answering without closing anything (SIGSTOP: a hung machine, a
    network partition): the cluster promotes its replica, and the processes still subscribed
    to the frozen one must notice by themselves, follow the slots and read what they missed."""
    streams = STREAMS[:12]
    # Reads that get no answer end after 5 s, not 30 (publishers: 3 s, then they retry).
    a = own.daphne(SSE_REDIS_SOCKET_TIMEOUT="5")
    clients = {s: [connect(a, s)] for s in streams}
    first = published(own.publisher(streams, 1))
    victim = shards(own_cluster, streams).most_common(1)[0][0]
    own_cluster.freeze(victim)
    try:
        publisher = own.publisher(streams, 30, 0.1, SSE_REDIS_SOCKET_TIMEOUT="3")
        acked = published(publisher, timeout=300)
        own_cluster.wait_ok()  # the others agree that its replica took over
        log = own.logs(streams)
        assert {s: [i for i in ids if i not in first[s]] for s, ids in log.items()} == acked
        wait_all(clients, log, timeout=90)
        assert "; following it" in a.output() or "resumed" in a.output(), a.output()[-3000:]
    finally:
        own_cluster.thaw(victim)  # it finds itself a replica of the promoted one
        own_cluster.wait_ok()
    for conns in clients.values():
        for conn in conns:
            conn.close()


def test_moving_a_slot_with_live_streams_loses_and_duplicates_nothing(project, own_cluster, own):
    streams = STREAMS[:12]
    a, b = own.daphne(), own.daphne()
    clients = {s: [connect(a, s), connect(b, s)] for s in streams}
    moving = streams[0]
    slot = own_cluster.slot(moving)
    source = own_cluster.primary_of_slot(slot)
    target = next(p for p in own_cluster.primary_ports() if p != source)
    # A first event each: the slot then has the streams' keys to move. (A stream with no key
    # yet cannot be published to while its slot migrates: Redis answers TRYAGAIN.)
    first = published(own.publisher(streams, 1))
    publisher = own.publisher(streams, 60, 0.03)
    time.sleep(1.0)
    # While the keys are on the target and the slot not yet handed over, publishes follow
    # ASK redirections to the target, and the subscriptions are still on the source: these
    # events reach the processes only from the log, once they follow the slot.
    in_window = {}
    own_cluster.migrate_slot(slot, target, during=lambda: in_window.update(published(own.publisher([moving], 3))))
    acked = published(publisher)
    assert own_cluster.primary_of_slot(slot) == target
    log = own.logs(streams)
    assert set(in_window[moving]) <= set(log[moving])
    wait_all(clients, log)
    for daphne in (a, b):
        assert "(slot moved); following it" in daphne.output(), "the subscription moved with its slot"
    rest = {s: [i for i in ids if i not in first[s] and i not in in_window.get(s, [])] for s, ids in log.items()}
    assert rest == acked
    for conns in clients.values():
        for conn in conns:
            conn.close()


def test_health_says_unavailable_when_no_node_answers(project, cluster):
    nowhere = f"127.0.0.1:{free_port()}"
    daphne = Daphne(
        project,
        free_port(),
        project.env(REDIS_CLUSTER_NODES=nowhere),
        cluster.tmp_path / "nowhere.log",
    )
    cluster.daphnes.append(daphne)
    status, body = health(daphne)
    assert status == 503 and body["redis"] == "unavailable", body
    status, _, _, elapsed = get(daphne, "/sse/down/")
    assert status == 503 and elapsed < 5


GROUP_SEND = """
import sys, django
django.setup()
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
async_to_sync(get_channel_layer().group_send)(sys.argv[1], {"type": "sse.event", "event": "chat", "data": {"via": "group_send"}})
"""


def test_channels_group_send_needs_a_single_redis_of_its_own(project, redis_server, cluster):
    if project.mode != "channels":
        pytest.skip("the channel layer is channels mode's")
    check = project.manage("check", env=cluster.env())
    assert "sse.W009" in check.stderr + check.stdout, check.stderr
    # With CHANNEL_LAYER_REDIS_URL the layer has its Redis, and the warning is gone.
    layered = cluster.env(CHANNEL_LAYER_REDIS_URL=redis_server.url)
    check = project.manage("check", env=layered)
    assert "sse.W009" not in check.stderr + check.stdout
    a, b = (
        cluster.daphne(CHANNEL_LAYER_REDIS_URL=redis_server.url),
        cluster.daphne(CHANNEL_LAYER_REDIS_URL=redis_server.url),
    )
    clients = [connect(a, "layered"), connect(b, "layered")]
    published(cluster.publisher(["layered"], 1))
    project.run("-c", GROUP_SEND, "layered", env=layered)
    for client in clients:
        events = client.wait_events(2)
        time.sleep(0.3)
        assert [e.type for e in client.events] == ["n", "chat"]
        assert events[1].id == events[0].id + ".1"
        client.close()
    # Without it, Daphne says so when it starts.
    lone = cluster.daphne()
    time.sleep(0.5)
    assert "sse.W009" in lone.output() or "group_send" in lone.output(), lone.output()


def test_generated_suite_runs_its_cluster_tests_against_the_cluster(project, redis_cluster):
    """The project's own suite, as its user runs it with SSE_TEST_REDIS_CLUSTER_NODES: every test
    that runs on each broker, and its cluster tests (slots, shards, a dropped subscription)."""
    env = project.env(SSE_TEST_REDIS_CLUSTER_NODES=redis_cluster.nodes, DJANGO_SETTINGS_MODULE="config.test_settings")
    result = project.run("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cluster", env=env)
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, result.stdout[-5000:]
    assert int(summary.split(" passed")[0].split()[-1]) >= 50, summary
    # The cluster tests ran; on SQLite, only what needs a database Django closes skips.
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("run with SSE_TEST_DATABASE_URL" in line for line in skips), skips


def test_bench_runs_the_fan_out_on_a_cluster(project, tmp_path):
    """bench.py's ours-<mode>-cluster system, small: its own cluster, no loss, a row in the table."""
    build = tmp_path / "build"
    (build / f"bake-{project.mode}").mkdir(parents=True)
    (build / f"bake-{project.mode}" / "bench_project").symlink_to(project.path)
    (build / f"venv-ours-{project.mode}").symlink_to(project.venv)
    out = tmp_path / "results"
    system = f"ours-{project.mode}-cluster"
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--build", str(build), "--out", str(out)]
    cmd += ["--systems", system, "--scenarios", "fanout", "--runs", "1", "--clients", "100", "--events", "20"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert result["system"] == system and "error" not in result, result
    assert (result["expected"], result["delivered"]) == (2000, 2000), result
    assert result["lost"] == result["duplicated"] == result["out_of_order"] == 0
    assert result["server_problems"] == [], result
