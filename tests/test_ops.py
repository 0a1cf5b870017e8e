"""Publishing from application code and operating it, end to end, per mode.

Real Redis, real Daphne processes, publishers in plain Python processes (no
manage.py, no event loop), clients from tests/sse_client.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from tests.conftest import Project
from tests.sse_client import SSEConnection
from tests.test_e2e import SESSION_SCRIPT, connect

ON_COMMIT_SCRIPT = """
import sys, django
django.setup()
from django.contrib.auth.models import User
from django.db import transaction
from sse import publish, publish_on_commit

stream, name = sys.argv[1], sys.argv[2]
try:
    with transaction.atomic():
        User.objects.create_user(name + "-ghost")
        publish_on_commit(stream, "user.created", {"name": name + "-ghost"})
        raise RuntimeError("roll back")
except RuntimeError:
    pass
with transaction.atomic():
    User.objects.create_user(name)
    publish_on_commit(stream, "user.created", {"name": name})
print(publish(stream, "marker", None))
print(User.objects.filter(username__startswith=name).count())
"""


def test_publish_on_commit_publishes_committed_work_only(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    clients = [connect(a, "tx"), connect(b, "tx")]
    name = f"u{uuid.uuid4().hex[:8]}"
    out = project.run("-c", ON_COMMIT_SCRIPT, "tx", name, env=project.env(REDIS_URL=redis_server.url)).stdout
    marker, users = out.split()
    assert users == "1", "the rolled-back row is gone, the committed one is there"
    for client in clients:
        events = client.wait_events(2)
        time.sleep(0.3)  # a rolled-back or duplicate event would show up by now
        assert [(e.type, json.loads(e.data)) for e in client.events] == [
            ("user.created", {"name": name}),
            ("marker", None),
        ]
        assert events[1].id == marker
        client.close()


def test_redis_down_at_commit_commits_and_logs_the_lost_event(project):
    name = f"u{uuid.uuid4().hex[:8]}"
    env = project.env(REDIS_URL="redis://127.0.0.1:1/0")
    script = ON_COMMIT_SCRIPT.replace('print(publish(stream, "marker", None))\n', "")
    result = project.run("-c", script, "lost", name, env=env)  # exits 0: the commit succeeded
    assert result.stdout.split() == ["1"]
    lines = [line for line in result.stderr.splitlines() if "event lost after commit" in line]
    assert len(lines) == 1, result.stderr
    assert "ERROR sse " in lines[0] and "stream=lost event=user.created" in lines[0] and "unavailable" in lines[0]
    assert "Traceback" not in result.stderr


NO_LOOP_SCRIPT = """
import asyncio, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
from sse import publish

assert not hasattr(asyncio, "_get_running_loop") or asyncio._get_running_loop() is None
print(publish(sys.argv[1], "plain", {"from": "a plain process"}))


async def by_mistake():
    # The sync API called on a running loop: it blocks that loop for one round trip, and works.
    return publish(sys.argv[1], "in-loop", {"from": "a coroutine"})


print(asyncio.run(asyncio.wait_for(by_mistake(), 20)))
"""


def test_sync_publish_from_a_plain_process_and_from_inside_a_loop(project, redis_server, start_daphne):
    """What a Celery task or a cron job does: no manage.py, no event loop, the same REDIS_URL."""
    daphne = start_daphne()
    client = connect(daphne, "celery-like")
    env = project.env(REDIS_URL=redis_server.url)
    del env["DJANGO_SETTINGS_MODULE"]  # the script sets it, as a worker's entry point does
    result = subprocess.run(
        [project.python, "-c", NO_LOOP_SCRIPT, "celery-like"],
        cwd=project.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    events = client.wait_events(2)
    assert [(e.id, e.type) for e in events] == [(ids[0], "plain"), (ids[1], "in-loop")]
    client.close()


def get(daphne, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{daphne.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def pubsub_channels(redis_url: str) -> list[str]:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["redis-cli", "-p", port, "pubsub", "channels"], capture_output=True, text=True).stdout
    return sorted(out.split())


def test_health_reports_redis_and_streams_and_opens_nothing(project, redis_server, start_daphne):
    daphne = start_daphne()
    clients = [connect(daphne, f"health-{n}") for n in range(3)]
    channels = pubsub_channels(redis_server.url)
    for _ in range(5):
        status, body, _ = get(daphne, "/health/")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["redis"] == "ok"
        assert health["streams"] == 3 and health["stream_names"] == 3
    assert pubsub_channels(redis_server.url) == channels, "/health/ subscribed to something"
    for client in clients:
        client.close()


def parse_metrics(text: str) -> dict[str, float]:
    """Samples by their full name with labels, after checking every sample has a TYPE."""
    typed, samples = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif not line.startswith("#"):
            match = re.fullmatch(r"([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)", line)
            assert match and match[1] in typed, line
            samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def scrape(daphne, **headers: str) -> dict[str, float]:
    status, body, response_headers = get(daphne, "/metrics/", **headers)
    assert status == 200, (status, body)
    assert response_headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_metrics(body)


def send_event(project: Project, redis_url: str, stream: str) -> str:
    return project.manage("send_event", stream, env=project.env(REDIS_URL=redis_url)).stdout.strip()


def test_metrics_count_real_connections_and_events(project, redis_server, start_daphne):
    # Heartbeats every 0.2 s: the ones the hub writes itself must be counted too.
    daphne = start_daphne(SSE_METRICS="1", SSE_HEARTBEAT="0.2")
    before = scrape(daphne)
    first = send_event(project, redis_server.url, "metered")
    clients = [connect(daphne, "metered"), connect(daphne, "metered", **{"Last-Event-ID": first})]
    ids = [send_event(project, redis_server.url, "metered") for _ in range(3)]
    for client in clients:
        assert [e.id for e in client.wait_events(3)] == ids
    during = scrape(daphne)
    assert during["sse_open_streams"] == before["sse_open_streams"] + 2
    assert all(c.wait(lambda c: len(c.parser.comments) >= 2, 10) for c in clients), "heartbeats arrived"
    for client in clients:
        client.close()
    deadline = time.monotonic() + 10
    while (after := scrape(daphne))["sse_open_streams"] != before["sse_open_streams"]:
        assert time.monotonic() < deadline, "streams still counted as open"
        time.sleep(0.2)

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert moved("sse_connections_total") == 2
    assert moved("sse_replay_requests_total") == 1
    assert moved("sse_events_sent_total") == 6
    assert moved("sse_hub_events_total") == 3, "each event is encoded once, for both clients"
    assert moved('sse_disconnects_total{reason="client-gone"}') == 2
    assert moved("sse_bytes_sent_total") >= sum(len(c.body) for c in clients) > 0
    assert after["sse_events_published_total"] == 0, "send_event published from another process"


def test_metrics_are_off_by_default_and_for_allowed_addresses_or_staff(project, redis_server, start_daphne):
    off = start_daphne()
    assert get(off, "/metrics/")[0] == 404
    elsewhere = start_daphne(SSE_METRICS="1", SSE_METRICS_ALLOWED_IPS="10.0.0.0/8,192.0.2.7")
    assert get(elsewhere, "/metrics/")[0] == 403, "127.0.0.1 is not in the list"
    staff = f"ops{uuid.uuid4().hex[:6]}"
    _pk, session = project.run("-c", SESSION_SCRIPT, staff).stdout.split()
    assert get(elsewhere, "/metrics/", Cookie=f"sessionid={session}")[0] == 403, "not staff yet"
    project.run("-c", STAFF_SCRIPT, staff)
    assert "sse_open_streams" in scrape(elsewhere, Cookie=f"sessionid={session}")


STAFF_SCRIPT = """
import sys, django
django.setup()
from django.contrib.auth.models import User
User.objects.filter(username=sys.argv[1]).update(is_staff=True)
"""


def access_lines(daphne) -> list[dict[str, str]]:
    lines = [line.split(" sse.access ", 1)[1] for line in daphne.output().splitlines() if " sse.access " in line]
    return [dict(pair.split("=", 1) for pair in line.split(" ")) for line in lines]


def wait_for_lines(daphne, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(access_lines(daphne)) < count:
        assert time.monotonic() < deadline, daphne.output()
        time.sleep(0.1)


def test_access_log_lines_in_daphnes_log_without_secrets(project, redis_server, start_daphne):
    daphne = start_daphne(SSE_PUBLIC_STREAMS="notifications")
    pk, session = project.run("-c", SESSION_SCRIPT, f"log{uuid.uuid4().hex[:6]}").stdout.split()
    token = project.manage("sse_token", f"user.{pk}", "--user", pk, env=project.env()).stdout.strip()
    mine = SSEConnection(
        "127.0.0.1",
        daphne.port,
        f"/sse/user.{pk}/?token={token}&last_event_id=1-0",
        {"Cookie": f"sessionid={session}; csrftoken=csrf-secret-value"},
    )
    assert mine.wait_status() == 200
    assert mine.wait_events(1)[0].type == "reset"
    event_id = send_event(project, redis_server.url, f"user.{pk}")
    mine.wait_events(2)
    time.sleep(0.2)
    mine.close()
    wait_for_lines(daphne, 3)  # connect, reset, disconnect
    staying = connect(daphne, "notifications")
    wait_for_lines(daphne, 4)
    daphne.stop(signal.SIGTERM)
    assert staying.wait(lambda c: c.closed, 10)
    staying.close()
    lines = access_lines(daphne)
    connect_line, reset, gone, other, *rest = lines
    assert connect_line == {
        "event": "connect",
        "stream": f"user.{pk}",
        "client": "127.0.0.1",
        "user": pk,
        "last_event_id": "yes",
    }
    assert reset["event"] == "reset" and reset["last_event_id"] == "1-0"
    assert gone["event"] == "disconnect" and gone["reason"] == "client-gone" and gone["events"] == "1"
    assert int(gone["bytes"]) == len(mine.body) and float(gone["duration"]) > 0.2
    assert other == {
        "event": "connect",
        "stream": "notifications",
        "client": "127.0.0.1",
        "user": "-",
        "last_event_id": "no",
    }
    assert [(line["event"], line["reason"]) for line in rest] == [("disconnect", "server-shutdown")], rest
    log = daphne.output()
    for secret in (session, token, "csrf-secret-value"):
        assert secret not in log
    assert event_id not in log, "event ids are not logged, except a reset's"
