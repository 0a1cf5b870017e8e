"""Operating it: /health/, /metrics/ (Prometheus text format) and the access log lines."""

import asyncio
import contextlib
import logging
import re

import pytest
import redis
from django.contrib.auth.models import User
from django.test import AsyncClient, RequestFactory

from sse import apublish
from sse.hub import get_hub
from sse.ops import metrics
from sse.security import tokens
from sse.transports.endpoint import stream_response
from tests.conftest import REDIS_URL, data_events, read_until

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """A strict reader of the text format 0.0.4: every sample typed, counters named *_total."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"HELP twice for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge"} and name not in types
            assert name in helps, "HELP before TYPE"
            types[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert types.get(name), f"{name} has no TYPE line before it"
            assert (types[name] == "counter") == name.endswith("_total")
            pairs = LABEL.findall(labels or "")
            assert "".join(f'{k}="{v}",' for k, v in pairs).rstrip(",") == (labels or ""), labels
            unescaped = {k: re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), v) for k, v in pairs}
            key = (name, frozenset(unescaped.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(value)
    return samples


class From(AsyncClient):
    """A client at ``address``: the ASGI scope's client, which Daphne fills in
    (from X-Forwarded-For with --proxy-headers). None: no address (a unix socket peer)."""

    def __init__(self, address: str | None) -> None:
        super().__init__()
        self.address = address

    async def request(self, **request):
        return await super().request(**request, client=[self.address, 40000] if self.address else None)


async def scrape(client: AsyncClient | None = None) -> dict[tuple[str, frozenset], float]:
    response = await (client or AsyncClient()).get("/metrics/")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_prometheus(response.content.decode())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def open_stream(stream: str, **headers):
    response = await stream_response(RequestFactory().get(f"/sse/{stream}/", **headers), stream)
    assert response.status_code == 200
    return response.streaming_content


async def go_away(chunks) -> None:
    """The client disconnects: the server cancels the task reading the stream, as Daphne does."""
    reader = asyncio.ensure_future(anext(chunks))
    await asyncio.sleep(0.05)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


def redis_channels() -> list[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sorted(client.pubsub_channels())
    finally:
        client.close()


async def test_health_opens_no_stream_and_subscribes_to_nothing(backend, stream):
    chunks = await open_stream(stream)
    await anext(chunks)
    hub = get_hub()
    before = (hub.open, {name: set(subs) for name, subs in hub.subscribers.items()})
    channels = redis_channels() if backend == "redis" else None
    for _ in range(5):
        response = await AsyncClient().get("/health/")
        assert response.status_code == 200
        body = response.json()
        assert body["streams"] == 1 and body["redis"] == (None if backend == "memory" else "ok")
    assert (hub.open, {name: set(subs) for name, subs in hub.subscribers.items()}) == before
    if backend == "redis":
        assert redis_channels() == channels, "no SUBSCRIBE from /health/"
    await chunks.aclose()


async def test_metrics_are_off_by_default(settings):
    assert (await AsyncClient().get("/metrics/")).status_code == 404
    settings.SSE_METRICS = True
    assert (await AsyncClient().get("/metrics/")).status_code == 200  # the client is 127.0.0.1


async def test_metrics_refuse_other_addresses_and_allow_networks(settings):
    settings.SSE_METRICS = True
    settings.SSE_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "2001:db8::1"]
    assert (await From("127.0.0.1").get("/metrics/")).status_code == 403
    assert (await From("192.0.2.1").get("/metrics/")).status_code == 403
    assert (await From(None).get("/metrics/")).status_code == 403
    assert (await From("10.20.30.40").get("/metrics/")).status_code == 200
    assert (await From("2001:db8::1").get("/metrics/")).status_code == 200
    assert (await From("::ffff:10.0.0.1").get("/metrics/")).status_code == 200
    assert (await From("10.0.0.1").post("/metrics/")).status_code == 405


@pytest.mark.django_db(transaction=True)
async def test_metrics_are_for_staff_from_anywhere(settings):
    settings.SSE_METRICS = True
    settings.SSE_METRICS_ALLOWED_IPS = []
    staff = await User.objects.acreate_user("ops", password="x", is_staff=True)
    user = await User.objects.acreate_user("someone", password="x")
    client = From("192.0.2.1")
    assert (await client.get("/metrics/")).status_code == 403
    await client.aforce_login(user)
    assert (await client.get("/metrics/")).status_code == 403
    await client.aforce_login(staff)
    assert value(await scrape(client), "sse_open_streams") >= 0


def test_the_text_format_escapes_label_values_and_help():
    counter = metrics.Counter("sse_test_total", "help with \\ and\nnewline")
    counter.inc(2, reason='a "quoted"\\value\n')
    metrics.COUNTERS.append(counter)
    try:
        text = metrics.render()
    finally:
        metrics.COUNTERS.remove(counter)
    assert "# HELP sse_test_total help with \\\\ and\\nnewline\n" in text
    assert 'sse_test_total{reason="a \\"quoted\\"\\\\value\\n"} 2\n' in text
    samples = parse_prometheus(text)
    assert value(samples, "sse_test_total", reason='a "quoted"\\value\n') == 2


async def test_counters_move_with_real_connections_and_events(backend, stream, settings):
    settings.SSE_METRICS = True
    before = await scrape()
    known = await apublish(stream, "n", 0)
    replaying = await open_stream(stream, HTTP_LAST_EVENT_ID=known)
    resetting = await open_stream(stream, HTTP_LAST_EVENT_ID="1-0")
    received = 0
    for chunks in (replaying, resetting):
        received += len(await anext(chunks))  # retry:
    received += len(await anext(resetting))  # the reset event
    during = await scrape()
    assert value(during, "sse_open_streams") == value(before, "sse_open_streams") + 2
    ids = [await apublish(stream, "n", i) for i in range(1, 4)]
    for chunks in (replaying, resetting):
        text = b""
        while text.count(b"\nid: ") + text.startswith(b"id: ") < 3:
            chunk = await asyncio.wait_for(anext(chunks), 5)
            text += chunk
            received += len(chunk)
        assert ids[-1].encode() in text
        await go_away(chunks)
    after = await scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "sse_open_streams") == value(before, "sse_open_streams")
    assert moved("sse_connections_total") == 2
    assert moved("sse_replay_requests_total") == 2
    assert moved("sse_resets_total") == 1
    assert moved("sse_events_published_total") == 4
    assert moved("sse_events_sent_total") == 6, "3 live events to each client; the reset is not an event"
    assert moved("sse_bytes_sent_total") == received, "every byte the clients read, and no more"
    assert moved("sse_hub_events_total") >= 3
    assert moved("sse_disconnects_total", reason="client-gone") == 2


async def test_a_slow_client_is_counted_and_logged(backend, stream, settings, caplog):
    settings.SSE_QUEUE_SIZE = 2
    chunks = await open_stream(stream)
    await anext(chunks)
    slow = metrics.SLOW_CLIENTS.value()
    for i in range(5):
        await apublish(stream, "n", i)
    for _ in range(250):  # the hub delivers on its own (Redis: once pub/sub passes them on)
        if any(sub.dropped for sub in get_hub().subscribers[stream]):
            break
        await asyncio.sleep(0.02)
    with caplog.at_level(logging.INFO, logger="sse.access"):
        rest = [chunk async for chunk in chunks]  # the server ends the stream
    assert metrics.SLOW_CLIENTS.value() == slow + 1
    assert b"".join(rest).count(b"id: ") <= 2
    (line,) = [r.getMessage() for r in caplog.records if "event=disconnect" in r.getMessage()]
    assert line.endswith("reason=slow-client"), line


def fields(line: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in line.split(" "))


@pytest.mark.django_db(transaction=True)
async def test_access_lines_have_the_fields_and_no_secrets(backend, stream, caplog, settings):
    settings.SSE_PUBLIC_STREAMS = []
    user = await User.objects.acreate_user("carol", password="x")
    client = AsyncClient()
    await client.aforce_login(user)
    session = client.cookies["sessionid"].value
    known = await apublish(f"user.{user.pk}", "n", 1)
    token = tokens.mint([f"user.{user.pk}"], user=user)
    request = RequestFactory().get(
        f"/sse/user.{user.pk}/?token={token}&last_event_id=1-0",
        HTTP_COOKIE=f"sessionid={session}",
        REMOTE_ADDR="198.51.100.7",
    )
    request.user = user  # as channels mode's scope gives it; the e2e test goes through the real session
    with caplog.at_level(logging.INFO, logger="sse.access"):
        response = await stream_response(request, f"user.{user.pk}")
        assert response.status_code == 200
        chunks = response.streaming_content
        await anext(chunks)
        events = await read_until(chunks, lambda ev: any(e.get("event") == "reset" for e in ev))
        await go_away(chunks)
    lines = [r.getMessage() for r in caplog.records if r.name == "sse.access"]
    assert [fields(line)["event"] for line in lines] == ["connect", "reset", "disconnect"], lines
    connect, reset, disconnect = (fields(line) for line in lines)
    assert connect == {
        "event": "connect",
        "stream": f"user.{user.pk}",
        "client": "198.51.100.7",
        "user": str(user.pk),
        "last_event_id": "yes",
    }
    assert reset["last_event_id"] == "1-0" and reset["id"] == known == data_events(events)[0]["id"]
    assert disconnect["reason"] == "client-gone" and disconnect["events"] == "0"
    assert int(disconnect["bytes"]) > 0 and float(disconnect["duration"]) >= 0.05
    text = "\n".join(lines)
    assert session not in text and token not in text and "token" not in text
