"""End to end, per mode: real Redis, two Daphne processes, publishers in other processes.

Clients are tests/sse_client.py: raw sockets and an independent parser.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import re
import subprocess
import time
from pathlib import Path

from tests.conftest import Project
from tests.sse_client import SSEConnection

PAYLOADS = [
    {"msg": "hi"},
    "é ✓ 🎉 \u2028 \u00a0 中文",
    "lone surrogate \ud800 survives as a JSON escape",
    "line one\nline two\r\nline three\rend\n",
    "data: forged\n\nid: 999\nevent: evil\nretry: 1\n: comment",
    {"nested": [1, 2.5, None, True, {"x": "y"}], "empty": ""},
    ["", "\n\n", "\r"],
    "x" * 200_000,
    None,
]


def connect(daphne, stream: str, **headers: str) -> SSEConnection:
    conn = SSEConnection("127.0.0.1", daphne.port, f"/sse/{stream}/", headers)
    assert conn.wait_status() == 200
    assert conn.wait(lambda c: c.parser.retry is not None, 5), "no retry: line first"
    return conn


def send_event(project: Project, redis_url: str, stream: str, event: str, data) -> str:
    result = project.manage(
        "send_event",
        stream,
        "--event",
        event,
        "--data",
        "-",
        input=json.dumps(data),
        env=project.env(REDIS_URL=redis_url),
    )
    return result.stdout.strip()


def test_send_event_reaches_every_client_of_both_processes(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    clients = [connect(a, "notifications"), connect(a, "notifications"), connect(b, "notifications")]
    other = connect(b, "other")
    ids = [send_event(project, redis_server.url, "notifications", "notification", p) for p in PAYLOADS]
    for client in clients:
        events = client.wait_events(len(PAYLOADS))
        assert [e.id for e in events] == ids
        assert [e.type for e in events] == ["notification"] * len(PAYLOADS)
        assert [json.loads(e.data) for e in events] == PAYLOADS
        headers = client.response_headers
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
    assert other.events == [], "streams are separate"
    for client in [*clients, other]:
        client.close()


PUBLISH_SCRIPT = """
import asyncio, sys, django
django.setup()
from sse import publish, apublish
print(publish(sys.argv[1], "sync", {"via": "publish"}))
print(asyncio.run(apublish(sys.argv[1], "async", {"via": "apublish"})))
"""

GROUP_SEND_SCRIPT = """
import sys, django
django.setup()
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
async_to_sync(get_channel_layer().group_send)(sys.argv[1], {"type": "sse.event", "event": "chat", "data": {"via": "group_send"}})
"""


def test_publish_apublish_and_group_send_from_django_code(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    clients = [connect(a, "code"), connect(b, "code")]
    env = project.env(REDIS_URL=redis_server.url)
    ids = project.run("-c", PUBLISH_SCRIPT, "code", env=env).stdout.split()
    expected = [("sync", {"via": "publish"}), ("async", {"via": "apublish"})]
    if project.mode == "channels":
        project.run("-c", GROUP_SEND_SCRIPT, "code", env=env)
        expected.append(("chat", {"via": "group_send"}))
    for client in clients:
        events = client.wait_events(len(expected))
        time.sleep(0.5)  # anything extra (a duplicate) would show up by now
        assert [(e.type, json.loads(e.data)) for e in client.events] == expected
        assert [e.id for e in events[:2]] == ids
        if project.mode == "channels":
            assert events[2].id == f"{ids[1]}.1", "live-only events extend the last logged id"
        client.close()


def test_reconnect_replays_exactly_what_was_missed_from_either_process(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    first = connect(a, "replay")
    ids = [send_event(project, redis_server.url, "replay", "n", i) for i in range(3)]
    seen = first.wait_events(3)
    first.close()
    missed = [send_event(project, redis_server.url, "replay", "n", i) for i in range(3, 8)]
    values = [3, 4, 5, 6, 7]
    for daphne in (a, b):
        again = connect(daphne, "replay", **{"Last-Event-ID": seen[-1].id})
        live = send_event(project, redis_server.url, "replay", "n", f"live on {daphne.port}")
        missed.append(live)
        values.append(f"live on {daphne.port}")
        again.wait_events(len(missed))
        time.sleep(0.3)  # a duplicate would show up by now
        assert [e.id for e in again.events] == missed
        assert [json.loads(e.data) for e in again.events] == values
        again.close()
    # The query string works on a first connection (EventSource can't set headers).
    query = SSEConnection("127.0.0.1", b.port, f"/sse/replay/?last_event_id={ids[0]}")
    assert [e.id for e in query.wait_events(len(ids) - 1 + len(missed))] == [*ids[1:], *missed]
    query.close()


def test_unknown_ids_reset_and_bad_input_is_4xx_without_tracebacks(project, redis_server, start_daphne):
    daphne = start_daphne()
    latest = send_event(project, redis_server.url, "resets", "n", 1)
    client = connect(daphne, "resets", **{"Last-Event-ID": "1-0"})
    (reset,) = client.wait_events(1)
    assert reset.type == "reset" and reset.id == latest
    assert json.loads(reset.data) == {"reason": "unknown-id", "last_event_id": "1-0"}
    client.close()
    bad = [
        ("/sse/bad%20name/", {}),
        ("/sse/" + "x" * 65 + "/", {}),
        ("/sse/a%2Fb/", {}),
        ("/sse/%00/", {}),
        ("/sse/ok/", {"Last-Event-ID": "not-an-id"}),
        ("/sse/ok/?last_event_id=1-2-3", {}),
        ("/sse/ok/", {"Last-Event-ID": "9" * 300}),
    ]
    for path, headers in bad:
        conn = SSEConnection("127.0.0.1", daphne.port, path, headers)
        status = conn.wait_status()
        assert 400 <= status < 500, (path, status)
        conn.close()
    # start_daphne's teardown asserts that the log has no traceback.


def test_concurrent_publishers_give_every_client_one_order(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    clients = [connect(a, "race"), connect(a, "race"), connect(b, "race"), connect(b, "race")]
    script = (
        "import sys, django\ndjango.setup()\nfrom sse import publish\n"
        "for i in range(50):\n    publish('race', 'n', {'p': sys.argv[1], 'i': i})\n"
    )
    env = project.env(REDIS_URL=redis_server.url)
    publishers = [subprocess.Popen([project.python, "-c", script, str(n)], cwd=project.path, env=env) for n in range(4)]
    for proc in publishers:
        assert proc.wait(120) == 0
    sequences = []
    for client in clients:
        events = client.wait_events(200, timeout=30)
        keys = [tuple(int(x) for x in e.id.split("-")) for e in events]
        assert keys == sorted(keys) and len(set(keys)) == 200, "ids strictly increase"
        sequences.append([(e.id, e.data) for e in events])
        for p in range(4):
            mine = [json.loads(e.data)["i"] for e in events if json.loads(e.data)["p"] == str(p)]
            assert mine == list(range(50))
        client.close()
    assert all(seq == sequences[0] for seq in sequences), "every client sees the same events in the same order"


def test_idle_stream_outlives_every_timeout_in_play(project, redis_server, start_daphne):
    # Socket timeout 6 s (redis-py 8 defaults to 5 s), channels-redis blocks 5 s per read,
    # pub/sub polls every 1 s: 12 s of silence outlasts all of them.
    daphne = start_daphne(SSE_REDIS_SOCKET_TIMEOUT="6")
    client = connect(daphne, "idle")
    time.sleep(12)
    assert not client.closed
    event_id = send_event(project, redis_server.url, "idle", "wake", {"after": "12s"})
    (event,) = client.wait_events(1)
    assert event.id == event_id and json.loads(event.data) == {"after": "12s"}
    client.close()


def test_open_streams_hold_no_thread_each(project, start_daphne):
    """Django's per-request thread (ThreadSensitiveContext) must not stay with a stream."""
    daphne = start_daphne()
    warm = connect(daphne, "threads")
    before = daphne.threads()
    clients = [connect(daphne, "threads") for _ in range(60)]
    during = daphne.threads()
    assert during - before < 10, f"{during - before} more threads for 60 streams"
    for client in [warm, *clients]:
        client.close()


def test_heartbeats_keep_idle_connections_alive(project, start_daphne):
    daphne = start_daphne(SSE_HEARTBEAT="0.5")
    client = connect(daphne, "beat")
    assert client.wait(lambda c: len(c.parser.comments) >= 2, 5), "comment lines while idle"
    assert client.events == []
    client.close()


def test_sigterm_ends_every_stream_at_once_and_cleanly(project, start_daphne):
    import signal

    daphne = start_daphne()
    clients = [connect(daphne, "stop") for _ in range(5)]
    gone = connect(daphne, "stop")
    gone.close()  # one already disconnected as the stop begins
    daphne.proc.send_signal(signal.SIGTERM)
    for client in clients:
        assert client.wait(lambda c: c.closed, 10), "stream still open after SIGTERM"
    assert daphne.proc.wait(15) == 0
    # start_daphne's teardown asserts that the log has no traceback.


def test_redis_restart_pauses_then_catches_up_without_loss(project, start_daphne, tmp_path):
    """Streams stay open through an outage; what was published meanwhile arrives once, in order."""
    from tests.conftest import RedisServer

    redis = RedisServer(tmp_path / "redis", persistent=True)  # its own: this test stops it
    (tmp_path / "redis").mkdir()
    redis.start()
    try:
        a, b = start_daphne(REDIS_URL=redis.url), start_daphne(REDIS_URL=redis.url)
        clients = [connect(a, "outage"), connect(a, "outage"), connect(b, "outage"), connect(a, "other")]
        first = send_event(project, redis.url, "outage", "n", 1)
        for client in clients[:3]:
            client.wait_events(1)
        redis.stop()
        started = time.monotonic()
        down = project.manage(
            "send_event", "outage", "--data", "2", env=project.env(REDIS_URL=redis.url), check=False, timeout=60
        )
        assert down.returncode != 0 and "unavailable" in down.stderr and "Traceback" not in down.stderr
        assert time.monotonic() - started < 20, "publishing while Redis is down must fail fast"
        time.sleep(2)
        redis.start()
        # Published before the processes are subscribed again: only the catch-up has it.
        during = send_event(project, redis.url, "outage", "n", 3)
        time.sleep(4)
        after = send_event(project, redis.url, "outage", "n", 4)
        for client in clients[:3]:
            client.wait_events(3, timeout=20)
            time.sleep(0.3)
            assert [e.id for e in client.events] == [first, during, after]
            assert not client.closed
        for daphne in (a, b):
            paused = daphne.output().count("live events paused")
            assert paused == 1, f"the outage is logged once per process, not per client: {daphne.output()}"
            assert "live events resumed" in daphne.output()
        for client in clients:
            client.close()
    finally:
        redis.stop()


def test_redis_sentinel(project, start_daphne, tmp_path):
    """REDIS_SENTINELS + REDIS_SENTINEL_MASTER instead of REDIS_URL, for every Redis client."""
    from tests.conftest import RedisServer, free_port, wait_for_port

    (tmp_path / "master").mkdir()
    master = RedisServer(tmp_path / "master")
    master.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its own config file
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {master.port} 1\nsentinel down-after-milliseconds main 5000\n"
    )
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, sentinel)
        env = {"REDIS_URL": "", "REDIS_SENTINELS": f"127.0.0.1:{port}", "REDIS_SENTINEL_MASTER": "main"}
        a, b = start_daphne(**env), start_daphne(**env)
        clients = [connect(a, "sentinel"), connect(b, "sentinel")]
        result = project.manage("send_event", "sentinel", "--data", '"via sentinel"', env=project.env(**env))
        expected = [("message", '"via sentinel"', result.stdout.strip())]
        if project.mode == "channels":
            project.run("-c", GROUP_SEND_SCRIPT, "sentinel", env=project.env(**env))
            expected.append(("chat", '{"via":"group_send"}', f"{result.stdout.strip()}.1"))
        for client in clients:
            client.wait_events(len(expected))
            assert [(e.type, e.data, e.id) for e in client.events] == expected
            client.close()
        keys = subprocess.run(["redis-cli", "-p", str(master.port), "--scan"], capture_output=True, text=True)
        assert ":sse:sentinel" in keys.stdout, "the log lives on the master Sentinel named"
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def test_group_membership_outlives_group_expiry(project, redis_server, start_daphne):
    """channels-redis forgets group members after group_expiry; the hub renews them."""
    import pytest

    if project.mode != "channels":
        pytest.skip("group_send is a channels-mode feature")
    daphne = start_daphne(CHANNELS_GROUP_EXPIRY="2")
    client = connect(daphne, "expiry")
    time.sleep(6)  # three expiry periods
    env = project.env(REDIS_URL=redis_server.url, CHANNELS_GROUP_EXPIRY="2")
    project.run("-c", GROUP_SEND_SCRIPT, "expiry", env=env)
    (event,) = client.wait_events(1)
    assert json.loads(event.data) == {"via": "group_send"}
    client.close()


def raw_status(port: int, request: bytes) -> int | None:
    """Send raw bytes, return the response status (None if the server just closed)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            head += chunk
        return int(head.split(b" ", 2)[1])


def test_hostile_requests_get_no_5xx_and_no_traceback(project, start_daphne):
    import random

    rng = random.Random(20261121)  # reproducible
    daphne = start_daphne()
    names = [
        "ok",
        "",
        "..",
        "%2e%2e",
        "%00",
        "%ff",
        "%C3%A9",
        "é",
        "a%2Fb",
        "a/b",
        "x" * 65,
        "x" * 9000,
        "<script>",
        "%0d%0aSet-Cookie:%20x",
        "user.1",
        "../../etc/passwd",
        "a%20b",
        "*",
    ]
    ids = ["", "1-0", "0-0", "1-0.1", "9" * 25, "1-0\x01", "-1-0", "1_0", "ÿ", "x" * 5000, "1-0.", "1-2-3"]
    hosts = ["127.0.0.1", "evil.example", "", "[::1]", "a" * 300, "127.0.0.1:1", "localhost\x01"]
    methods = ["GET", "GET", "GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "FOO"]
    statuses = [raw_status(daphne.port, b"GET /sse/ok/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")]
    assert statuses == [200], "the baseline request streams"
    for _ in range(300):
        path = f"/sse/{rng.choice(names)}/"
        if rng.random() < 0.5:
            path += "?" + "&".join(
                f"{rng.choice(['last_event_id', 'x', ''])}={rng.choice(ids)}" for _ in range(rng.randint(1, 3))
            )
        headers = [f"Host: {rng.choice(hosts)}"]
        if rng.random() < 0.6:
            headers.append(f"Last-Event-ID: {rng.choice(ids)}")
        if rng.random() < 0.2:
            headers.append(f"Last-Event-ID: {rng.choice(ids)}")  # twice
        if rng.random() < 0.3:
            headers.append(f"Cookie: sessionid={rng.choice(ids)}; csrftoken={rng.choice(ids)}")
        if rng.random() < 0.2:
            headers.append(f"X-Forwarded-Proto: {rng.choice(['https', 'http', 'x' * 100])}")
        request = f"{rng.choice(methods)} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
        statuses.append(raw_status(daphne.port, request.encode("utf-8", "surrogateescape")))
    # What Django itself refuses (too many fields, ...), oversized parts, odd encodings: each
    # alone and in both URL forms, so that a mode that answers one of them with 500 shows.
    many = "&".join(f"f{i}=1" for i in range(1_200))
    hostile = [
        ("/sse/ok/?" + many, []),
        ("/sse/?stream=ok&" + many, []),
        ("/sse/?" + "&".join(f"stream=s{i}" for i in range(1_200)), []),
        ("/sse/ok/", ["Cookie: " + "; ".join(f"c{i}=v" for i in range(1_500))]),
        ("/sse/ok/", ["Cookie: sessionid=" + "x" * 8_000]),
        ("/sse/ok/", ["Last-Event-ID: " + "1" * 8_000]),
        ("/sse/ok/", [f"X-Filler-{i}: {'y' * 100}" for i in range(90)]),
        ("/sse/ok/?last_event_id=%ff%fe&token=%C0%AF", []),
        ("/sse/ok/?%ff=%ff;token=x&%74oken=y", []),
        ("/sse/?stream=%ff&stream=%C0%AF", []),
        ("/sse/%ff%fe/?stream=\udcff", ["Last-Event-ID: \udcff\udcfe"]),
        ("/sse/?stream=ok&last_event_id=ok:1-0,ok:2-0," + "x:1-0," * 500, []),
        ("/sse/ok/?token=" + "A" * 6_000, []),
    ]
    for path, headers in hostile:
        request = f"GET {path} HTTP/1.1\r\n" + "\r\n".join(["Host: 127.0.0.1", *headers]) + "\r\n\r\n"
        status = raw_status(daphne.port, request.encode("utf-8", "surrogateescape"))
        assert status is None or status < 500, (status, path[:80], [h[:40] for h in headers])
        statuses.append(status)
    assert not [s for s in statuses if s is not None and s >= 500], statuses
    assert sum(1 for s in statuses if s and 400 <= s < 500) >= 100
    assert " 500 " not in daphne.output() and " 503 " not in daphne.output()
    # start_daphne's teardown asserts that the log has no traceback.


SESSION_SCRIPT = """
import sys, django
django.setup()
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
user, _ = get_user_model().objects.get_or_create(username=sys.argv[1])
session = import_module(settings.SESSION_ENGINE).SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(user.pk, session.session_key)
"""


def test_private_user_streams_follow_the_django_session(project, redis_server, start_daphne):
    """The default policy, with real logins: user.<id> is for that user only; unknown streams are denied."""
    daphne = start_daphne(SSE_PUBLIC_STREAMS="notifications,chat")
    alice_pk, alice_session = project.run("-c", SESSION_SCRIPT, "alice").stdout.split()
    bob_pk, _ = project.run("-c", SESSION_SCRIPT, "bob").stdout.split()
    as_alice = {"Cookie": f"sessionid={alice_session}"}
    cases = [
        (f"user.{alice_pk}", {}, 403),
        (f"user.{bob_pk}", as_alice, 403),
        ("anything-else", as_alice, 403),
        ("notifications", {}, 200),
    ]
    for stream, headers, expected in cases:
        client = SSEConnection("127.0.0.1", daphne.port, f"/sse/{stream}/", headers)
        assert client.wait_status() == expected, (stream, headers)
        client.close()
    mine = connect(daphne, f"user.{alice_pk}", **as_alice)
    event_id = send_event(project, redis_server.url, f"user.{alice_pk}", "private", {"for": "alice"})
    (event,) = mine.wait_events(1)
    assert (event.id, json.loads(event.data)) == (event_id, {"for": "alice"})
    mine.close()


class Reconnecting:
    """What a browser does: on a dropped stream, reconnect (here to the next instance) with its last id."""

    def __init__(self, ports: list[int], stream: str) -> None:
        import threading

        self.ports, self.stream = ports, stream
        self.events: list = []
        self.reconnects = 0
        self.stopped = False
        self.conn = SSEConnection("127.0.0.1", ports[0], f"/sse/{stream}/")
        assert self.conn.wait_status() == 200
        self.lock = threading.Lock()  # all_events() must not see the old connection's events twice
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        index = 0
        while not self.stopped:
            self.conn.wait(lambda c: c.closed, 0.2)
            if self.stopped or not self.conn.closed:
                continue
            last = self.conn.parser.last_event_id
            index = (index + 1) % len(self.ports)
            self.reconnects += 1
            time.sleep(0.2)  # the retry: delay, shortened
            try:
                conn = SSEConnection(
                    "127.0.0.1", self.ports[index], f"/sse/{self.stream}/", {"Last-Event-ID": last} if last else {}
                )
            except OSError:
                continue  # that instance is down too: try the next one
            with self.lock:
                self.events += self.conn.events
                self.conn = conn

    def all_events(self) -> list:
        with self.lock:
            return self.events + self.conn.events

    def stop(self) -> None:
        self.stopped = True
        self.thread.join(5)
        self.conn.close()


def test_killing_one_of_two_instances_loses_and_duplicates_nothing(project, redis_server, start_daphne):
    import signal

    a, b = start_daphne(), start_daphne()
    clients = [Reconnecting([a.port, b.port], "deploy") for _ in range(3)]
    clients += [Reconnecting([b.port, a.port], "deploy") for _ in range(3)]
    script = (
        "import time, django\ndjango.setup()\nfrom sse import publish\n"
        "for i in range(150):\n    print(publish('deploy', 'n', i), flush=True)\n    time.sleep(0.02)\n"
    )
    publisher = subprocess.Popen(
        [project.python, "-c", script],
        cwd=project.path,
        env=project.env(REDIS_URL=redis_server.url),
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while any(not c.all_events() for c in clients) and time.monotonic() < deadline:
        time.sleep(0.05)  # every client has an id to resume from (a loaded machine starts slowly)
    time.sleep(0.5)
    a.proc.send_signal(signal.SIGTERM)  # a deploy stops one instance while events flow
    ids = publisher.communicate(timeout=60)[0].split()
    assert publisher.returncode == 0 and len(ids) == 150
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(len(c.all_events()) < 150 for c in clients):
        time.sleep(0.2)
    for client in clients:
        client.stop()
        got = [e.id for e in client.all_events()]
        assert got == ids, f"missing {len(set(ids) - set(got))}, duplicated {len(got) - len(set(got))}"
    assert all(c.reconnects >= 1 for c in clients[:3]), "the stopped instance's clients moved"
    assert a.proc.wait(15) == 0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


FLOOD_SCRIPT = """
import sys, django
django.setup()
from sse import publish
for i in range(int(sys.argv[2])):
    publish(sys.argv[1], "big", {"i": i, "pad": "x" * 100_000})
"""


def test_a_client_that_stops_reading_is_closed_and_memory_stays_bounded(project, redis_server, start_daphne):
    """20 MB of events to a client that reads nothing: the server drops it at SSE_MAX_BUFFER, not at 20 MB."""
    import socket
    import threading

    from tests.sse_client import events_until_closed

    daphne = start_daphne(SSE_MAX_BUFFER="1048576", SSE_SEND_TIMEOUT="2")
    stalled = socket.create_connection(("127.0.0.1", daphne.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /sse/flood/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += stalled.recv(1)  # the headers, then this client stops reading
    reader = Reconnecting([daphne.port], "flood")  # reads at full speed; reconnects if ever closed
    before = rss_kb(daphne.pid)
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak.append(rss_kb(daphne.pid))
            except (AssertionError, OSError):  # Daphne stopped: the test failed already
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    # 20 MB in one stream, all of it replayable: more than the default byte budget of its log.
    env = project.env(REDIS_URL=redis_server.url, SSE_MAX_STREAM_BYTES=str(32 * 1024 * 1024))
    started = time.monotonic()
    project.run("-c", FLOOD_SCRIPT, "flood", "200", env=env)
    while len(reader.all_events()) < 200 and time.monotonic() - started < 60:
        time.sleep(0.1)
    events = reader.all_events()
    assert len(events) == 200 and len({e.id for e in events}) == 200, "the reading client gets everything, once"
    done.set()
    sampler.join()
    growth_mb = (max(peak) - before) / 1024
    report = f"RSS growth while 20 MB went to a stalled client ({project.mode}): {growth_mb:.1f} MB"
    build = Path(__file__).resolve().parent.parent / "build"
    build.mkdir(exist_ok=True)
    (build / f"slow-client-{project.mode}.txt").write_text(report + "\n")
    assert growth_mb < 12, f"RSS grew {growth_mb:.1f} MB"
    # Closed by whichever bound it hits first: its queue (bytes or events behind), or
    # SSE_SEND_TIMEOUT with a full send buffer.
    closed = ("closing a slow client of flood", "closing a client that stopped reading")
    deadline = time.monotonic() + 10
    while not any(line in daphne.output() for line in closed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(line in daphne.output() for line in closed), daphne.output()
    # The stalled client now reads what reached it before the server gave up on it...
    stalled_ids = [e.id for e in events_until_closed(stalled) if e.id]
    assert len(stalled_ids) < 200
    # ...and, as a browser would, reconnects with its last id: replay fills the gap.
    last = stalled_ids[-1] if stalled_ids else events[0].id
    missed = [e.id for e in events][[e.id for e in events].index(last) + 1 :]
    again = connect(daphne, "flood", **{"Last-Event-ID": last})
    again.wait_events(len(missed), timeout=30)
    assert [e.id for e in again.events] == missed
    again.close()
    reader.stop()


SMALL_FLOOD_SCRIPT = FLOOD_SCRIPT.replace("100_000", "10_000")


def test_clients_that_keep_up_are_written_directly_and_a_stalled_one_is_not(project, redis_server, start_daphne):
    """Daphne's fast path: the hub writes live frames straight to each socket. A client
    that stops reading leaves it (and is closed at its bounds); the others keep it."""
    import socket

    daphne = start_daphne(SSE_MAX_BUFFER="65536")
    readers = [connect(daphne, "direct") for _ in range(5)]
    stalled = socket.create_connection(("127.0.0.1", daphne.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /sse/direct/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    stalled.recv(1)  # the response has started; from here it reads nothing
    deadline = time.monotonic() + 10
    while health(daphne)["direct"] < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(daphne)["direct"] == 6, "every new stream starts on the fast path"
    # 6 MB: more than the kernel's send buffer (up to 4 MB) and SSE_MAX_BUFFER take.
    project.run("-c", SMALL_FLOOD_SCRIPT, "direct", "600", env=project.env(REDIS_URL=redis_server.url))
    for reader in readers:
        reader.wait_events(600, timeout=60)
        assert [json.loads(e.data)["i"] for e in reader.events] == list(range(600))
    state = health(daphne)
    assert state["direct"] == 5, state
    stalled.close()
    for reader in readers:
        reader.close()


def health(daphne) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{daphne.port}/health/", timeout=10) as response:
        return json.loads(response.read())


def redis_clients(url: str) -> int:
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["redis-cli", "-p", port, "client", "list"], capture_output=True, text=True).stdout
    return len(out.strip().splitlines())


def cycle(daphne, count: int, streams: int = 10) -> None:
    """``count`` clients connect, get the first chunk, and go away; 50 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        conn = SSEConnection("127.0.0.1", daphne.port, f"/sse/cycle-{i % streams}/")
        assert conn.wait_status() == 200
        assert conn.wait(lambda c: c.parser.retry is not None, 10)
        conn.close()

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(one, range(count)))


def test_a_thousand_connect_disconnect_cycles_leave_nothing_behind(project, redis_server, start_daphne):
    daphne = start_daphne(SSE_UNWATCH_DELAY="1", SSE_REDIS_MAX_CONNECTIONS="10")
    keep = connect(daphne, "steady")  # one long-lived stream throughout
    cycle(daphne, 50)  # warm up: imports, pools, caches
    time.sleep(3)
    base = health(daphne)
    base_threads, base_redis = daphne.threads(), redis_clients(redis_server.url)

    def settled() -> dict:
        deadline = time.monotonic() + 15
        while True:
            now = health(daphne)
            if (now["streams"], now["tasks"]) == (base["streams"], base["tasks"]) or time.monotonic() > deadline:
                return now
            time.sleep(0.5)

    cycle(daphne, 1000)
    after = settled()
    rss_first = rss_kb(daphne.pid)
    assert after["streams"] == base["streams"] == 1, "only the steady stream is open"
    assert after["stream_names"] == 1
    assert after["tasks"] == base["tasks"], "no task left behind"
    # Executors start a few threads lazily; what matters is no thread per connection.
    assert daphne.threads() <= base_threads + 4, (base_threads, daphne.threads())
    threads_first = daphne.threads()
    # The pool (10 here) may keep idle connections after a burst; none is per client.
    assert redis_clients(redis_server.url) <= base_redis + 10, (base_redis, redis_clients(redis_server.url))
    if project.mode == "channels":
        members = subprocess.run(
            ["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", "asgi:group:cycle-*"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert members == [], f"group memberships left: {members}"
    cycle(daphne, 1000)
    second = settled()
    assert (second["streams"], second["tasks"]) == (base["streams"], base["tasks"])
    assert daphne.threads() <= threads_first + 2
    assert redis_clients(redis_server.url) <= base_redis + 10, "Redis connections stay within the pool"
    growth_mb = (rss_kb(daphne.pid) - rss_first) / 1024
    build = Path(__file__).resolve().parent.parent / "build"
    build.mkdir(exist_ok=True)
    (build / f"cycles-{project.mode}.txt").write_text(
        f"RSS growth over the second 1,000 cycles ({project.mode}): {growth_mb:.1f} MB\n"
    )
    assert growth_mb < 5, f"RSS grew {growth_mb:.1f} MB over the second 1,000 cycles"
    keep.close()


def open_at_once(port: int, paths: list[str], timeout: float = 120) -> collections.Counter:
    """Send every request before reading any answer, as browsers reconnecting after a restart: their statuses."""

    async def one(path: str) -> tuple[asyncio.StreamWriter, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        status = (await reader.readline()).split(b" ")
        return writer, status[1].decode() if len(status) > 1 else "no answer"

    async def run() -> collections.Counter:
        answers = await asyncio.wait_for(asyncio.gather(*(one(path) for path in paths)), timeout)
        for writer, _ in answers:
            writer.close()
        return collections.Counter(status for _, status in answers)

    return asyncio.run(run())


def test_a_burst_of_new_streams_each_its_own_all_open(project, redis_server, start_daphne):
    # Users' private streams after a restart: every client a stream of its own, all at
    # once. In channels mode each is a group_add, and channels-redis' pool refused
    # connections past its size: 2,900 of 3,000 got a 503 "Too many connections".
    daphne = start_daphne()
    assert open_at_once(daphne.port, [f"/sse/burst-{n}/" for n in range(600)]) == {"200": 600}
    assert "Too many connections" not in daphne.output()
    assert "Service Unavailable" not in daphne.output()


def test_two_streams_on_one_connection_replay_exactly_the_missed_events(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    path = "/sse/?stream=multi-a&stream=multi-b"
    first = SSEConnection("127.0.0.1", a.port, path)
    assert first.wait_status() == 200
    assert first.wait(lambda c: c.parser.retry is not None, 5)
    sent = [send_event(project, redis_server.url, s, "n", f"{s}-{i}") for i in range(2) for s in ("multi-a", "multi-b")]
    seen = first.wait_events(4)
    assert sorted(json.loads(e.data) for e in seen) == ["multi-a-0", "multi-a-1", "multi-b-0", "multi-b-1"]
    for event in seen:
        source, _, own = event.id.split(",")[0].partition(":")
        assert json.loads(event.data).startswith(source), "the first position names the event's stream"
        assert own in sent
    first.close()
    missed = {}
    for value in ["multi-b-2", "multi-a-2", "multi-b-3", "multi-a-3", "multi-a-4"]:
        missed[value] = send_event(project, redis_server.url, value[:7], "n", value)
    # Reconnect to the other process, as nginx may send it anywhere.
    again = SSEConnection("127.0.0.1", b.port, path, {"Last-Event-ID": seen[-1].id})
    events = again.wait_events(len(missed))
    time.sleep(0.5)  # a duplicate would show up by now
    got = [json.loads(e.data) for e in again.events]
    assert sorted(got) == sorted(missed), "exactly the missed events"
    for s in ("multi-a", "multi-b"):
        mine = [v for v in got if v.startswith(s)]
        assert mine == sorted(mine), "in id order per stream"
    last = dict(p.split(":", 1) for p in events[-1].id.split(","))
    assert last == {"multi-a": missed["multi-a-4"], "multi-b": missed["multi-b-3"]}
    again.close()


def test_cross_origin_clients_and_tokens_over_daphne(project, redis_server, start_daphne):
    daphne = start_daphne(SSE_CORS_ORIGINS="https://app.example.com", SSE_PUBLIC_STREAMS="public")
    allowed = connect(daphne, "public", Origin="https://app.example.com")
    assert allowed.response_headers["access-control-allow-origin"] == "https://app.example.com"
    assert allowed.response_headers["access-control-allow-credentials"] == "true"
    event_id = send_event(project, redis_server.url, "public", "n", 1)
    assert allowed.wait_events(1)[0].id == event_id
    allowed.close()
    refused = SSEConnection("127.0.0.1", daphne.port, "/sse/public/", {"Origin": "https://evil.example"})
    assert refused.wait_status() == 403
    refused.close()
    env = project.env(REDIS_URL=redis_server.url)
    user = project.run(
        "-c",
        "import django; django.setup(); from django.contrib.auth.models import User;"
        "print(User.objects.create_user('tok-%s' % __import__('uuid').uuid4().hex[:8]).pk)",
        env=env,
    ).stdout.strip()
    token = project.manage("sse_token", f"user.{user}", "--user", user, env=env).stdout.strip()
    mine = SSEConnection("127.0.0.1", daphne.port, f"/sse/user.{user}/?token={token}")
    assert mine.wait_status() == 200, mine.body
    event_id = send_event(project, redis_server.url, f"user.{user}", "n", "private")
    assert mine.wait_events(1)[0].id == event_id
    mine.close()
    for path in [f"/sse/user.{user}/", f"/sse/secret/?token={token}", f"/sse/user.{user}/?token={token[:-3]}xyz"]:
        conn = SSEConnection("127.0.0.1", daphne.port, path)
        assert conn.wait_status() == 403, path
        conn.close()
    assert token not in daphne.output()


def test_a_wildcard_cors_origin_stops_check_and_daphne(project):
    env = project.env(SSE_CORS_ORIGINS="*")
    check = project.manage("check", env=env, check=False)
    assert check.returncode != 0 and "sse.E002" in check.stderr
    daphne = subprocess.run(
        [str(project.venv / "bin" / "daphne"), "-p", "0", "config.asgi:application"],
        cwd=project.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daphne.returncode != 0 and "sse.E002" in daphne.stderr


def demo_publish(daphne, stream: str, event: str, data) -> str:
    """Publish through a Daphne process: the demo page's form endpoint, with its CSRF cookie."""
    conn = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=10)
    try:
        conn.request("GET", "/")
        page = conn.getresponse()
        page.read()
        cookies = "; ".join(page.headers.get_all("Set-Cookie") or [])
        token = re.search(r"csrftoken=([^;]+)", cookies).group(1)
        body = json.dumps({"stream": stream, "event": event, "data": data})
        headers = {"Content-Type": "application/json", "Cookie": f"csrftoken={token}", "X-CSRFToken": token}
        conn.request("POST", "/demo/publish/", body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        return answer["id"]
    finally:
        conn.close()


def page_event_ids(daphne) -> tuple[list[str], str]:
    """The notifications feed the demo page renders server-side: its rows' ids and data-last-id."""
    conn = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        page = response.read().decode()
        assert response.status == 200, page
    finally:
        conn.close()
    feed = re.search(r'<ul class="feed" data-stream="notifications" data-last-id="([^"]*)"[^>]*>(.*?)</ul>', page, re.S)
    return re.findall(r'<li class="event" data-event-id="([^"]+)"', feed.group(2)), feed.group(1)


def test_published_through_one_process_delivered_by_the_other_and_replayed_exactly(project, redis_server, start_daphne):
    """One process publishes, the other serves the client, its replay and the page's history."""
    a, b = start_daphne(SSE_DEMO_PUBLISH="1"), start_daphne()
    client = connect(b, "notifications")
    seen = [demo_publish(a, "notifications", "notification", {"n": n}) for n in range(2)]
    assert [e.id for e in client.wait_events(2)] == seen
    client.close()
    missed = [demo_publish(a, "notifications", "notification", {"n": n}) for n in range(2, 5)]
    again = connect(b, "notifications", **{"Last-Event-ID": seen[-1]})
    again.wait_events(len(missed))
    live = demo_publish(a, "notifications", "notification", {"n": "live"})
    again.wait_events(len(missed) + 1)
    time.sleep(0.3)  # a duplicate would show up by now
    assert [e.id for e in again.events] == [*missed, live]
    assert [json.loads(e.data) for e in again.events] == [{"n": 2}, {"n": 3}, {"n": 4}, {"n": "live"}]
    again.close()
    # The page (rendered with the template's `event` partial) lists them newest first, and its
    # client goes live after the newest.
    rows, last_id = page_event_ids(b)
    assert rows[:6] == [live, *missed[::-1], *seen[::-1]] and last_id == live
    for daphne in (a, b):
        assert "Warning" not in daphne.output(), daphne.output()
