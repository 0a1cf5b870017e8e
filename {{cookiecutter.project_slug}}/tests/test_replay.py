"""Replay and live delivery through the response both transports serve."""

import asyncio
import contextlib
import json
import logging

from django.test import RequestFactory

from sse import apublish
from sse.backends import get_broker
from sse.backends.base import BrokerUnavailable, SharedReads
from sse.hub import get_hub
from sse.security import access
from sse.transports.endpoint import Connection, retry_frame, stream_response
from tests.conftest import data_events, parse, read_until

rf = RequestFactory()


async def open_stream(stream: str, **headers):
    response = await stream_response(rf.get(f"/sse/{stream}/", **headers), stream)
    assert response.status_code == 200, response.content
    return response.streaming_content


async def test_first_chunk_is_retry_then_live_events(backend, stream):
    chunks = await open_stream(stream)
    first = await anext(chunks)
    assert first.startswith(b"retry: ") and first.endswith(b"\n\n")
    event_id = await apublish(stream, "greeting", {"msg": "hi"})
    events = await read_until(chunks, lambda ev: data_events(ev))
    assert data_events(events) == [{"id": event_id, "event": "greeting", "data": '{"msg":"hi"}'}]
    await chunks.aclose()


async def test_reconnect_gets_exactly_the_missed_events_in_order(backend, stream):
    ids = [await apublish(stream, "n", i) for i in range(6)]
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID=ids[2])
    live = await apublish(stream, "n", 6)
    events = await read_until(chunks, lambda ev: len(data_events(ev)) >= 4)
    assert [e["id"] for e in data_events(events)] == [*ids[3:], live]
    assert [json.loads(e["data"]) for e in data_events(events)] == [3, 4, 5, 6]
    await chunks.aclose()


async def test_events_published_during_replay_are_sent_once(backend, stream):
    ids = [await apublish(stream, "n", i) for i in range(3)]
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID=ids[0])
    # Published after subscribing but before replay runs: both paths see them.
    more = [await apublish(stream, "n", i) for i in range(3, 6)]
    events = await read_until(chunks, lambda ev: len(data_events(ev)) >= 5)
    last = await apublish(stream, "n", "last")
    events += await read_until(chunks, lambda ev: any(e.get("data") == '"last"' for e in ev))
    assert [e["id"] for e in data_events(events)] == [*ids[1:], *more, last]
    await chunks.aclose()


async def test_query_parameter_works_and_the_header_wins(backend, stream):
    ids = [await apublish(stream, "n", i) for i in range(4)]
    chunks = await open_stream(f"{stream}", HTTP_LAST_EVENT_ID=ids[2])
    response2 = await stream_response(rf.get(f"/sse/{stream}/", {"last_event_id": ids[0]}), stream)
    chunks2 = response2.streaming_content
    events = await read_until(chunks, lambda ev: len(data_events(ev)) >= 1)
    events2 = await read_until(chunks2, lambda ev: len(data_events(ev)) >= 3)
    assert [e["id"] for e in data_events(events)] == ids[3:]
    assert [e["id"] for e in data_events(events2)] == ids[1:]
    both = await stream_response(
        rf.get(f"/sse/{stream}/", {"last_event_id": ids[0]}, HTTP_LAST_EVENT_ID=ids[2]), stream
    )
    events3 = await read_until(both.streaming_content, lambda ev: len(data_events(ev)) >= 1)
    assert [e["id"] for e in data_events(events3)] == ids[3:]
    for c in (chunks, chunks2, both.streaming_content):
        await c.aclose()


async def test_unknown_id_gets_the_reset_event_then_live(backend, stream):
    latest = await apublish(stream, "n", "before")
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID="1-0")
    events = await read_until(chunks, lambda ev: data_events(ev))
    (reset,) = data_events(events)
    assert reset["event"] == "reset"
    assert reset["id"] == latest
    assert json.loads(reset["data"]) == {"reason": "unknown-id", "last_event_id": "1-0"}
    after = await apublish(stream, "n", "after")
    events += await read_until(chunks, data_events)
    assert [e["id"] for e in data_events(events)] == [latest, after]
    await chunks.aclose()


async def test_reset_on_an_empty_stream_clears_the_id(backend, stream):
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID="99-0")
    events = await read_until(chunks, lambda ev: data_events(ev))
    assert data_events(events)[0]["event"] == "reset"
    assert data_events(events)[0]["id"] == ""
    await chunks.aclose()


async def test_bad_requests_get_4xx(backend, stream):
    for name in ["bad name", "x" * 65, "a/b", ""]:
        response = await stream_response(rf.get("/sse/x/"), name)
        assert response.status_code == 404
    for bad in ["abc", "1-2-3", "1-0\n", "x" * 500]:
        response = await stream_response(rf.get(f"/sse/{stream}/", HTTP_LAST_EVENT_ID=bad), stream)
        assert response.status_code == 400, bad
        response = await stream_response(rf.get(f"/sse/{stream}/", {"last_event_id": bad}), stream)
        assert response.status_code == 400, bad
    response = await stream_response(rf.post(f"/sse/{stream}/"), stream)
    assert response.status_code == 405


async def test_heartbeat_comments_while_idle(backend, stream, settings):
    settings.SSE_HEARTBEAT = 0.2
    chunks = await open_stream(stream)
    await anext(chunks)
    assert await asyncio.wait_for(anext(chunks), 3) == b": ping\n\n"
    await chunks.aclose()


async def test_disconnect_and_close_unsubscribe(backend, stream):
    hub = get_hub()
    # A client that goes away: the server cancels the task reading the stream.
    chunks = await open_stream(stream)
    await anext(chunks)
    assert len(hub.subscribers[stream]) == 1
    reader = asyncio.ensure_future(anext(chunks))
    await asyncio.sleep(0.05)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert len(hub.subscribers[stream]) == 0
    # The end of a request: Django closes the response.
    response = await stream_response(rf.get(f"/sse/{stream}/"), stream)
    assert len(hub.subscribers[stream]) == 1
    response.close()
    assert len(hub.subscribers[stream]) == 0


async def test_open_streams_are_capped_per_process(backend, stream, settings):
    settings.SSE_MAX_STREAMS = 2
    hub = get_hub()
    await open_stream(stream)
    second = await open_stream(stream)
    assert hub.open == 2
    refused = await stream_response(rf.get(f"/sse/{stream}/"), stream)
    assert refused.status_code == 503
    assert refused["Retry-After"] == "5"
    await anext(second)
    reader = asyncio.ensure_future(anext(second))  # the second client goes away
    await asyncio.sleep(0.05)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert hub.open == 1
    third = await open_stream(stream)
    assert (await anext(third)).startswith(b"retry:")


async def test_health_reports_streams_and_redis(backend, stream):
    from django.test import AsyncClient

    chunks = await open_stream(stream)
    await anext(chunks)
    response = await AsyncClient().get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["streams"] >= 1 and body["status"] == "ok"
    assert body["redis"] == (None if backend == "memory" else "ok")


async def test_health_is_503_when_redis_is_down(settings):
    from django.test import AsyncClient

    from sse import hub

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = await AsyncClient().get("/health/")
    assert response.status_code == 503
    assert response.json()["redis"] == "unavailable"
    await hub.aclose()


async def test_new_streams_refused_for_an_outage_say_why_once(settings, stream, caplog, monkeypatch):
    from sse import hub
    from sse.transports import endpoint

    settings.REDIS_URL = "redis://:secret@127.0.0.1:1/0"
    monkeypatch.setattr(endpoint, "_unavailable_reported", -endpoint.UNAVAILABLE_REPORT_INTERVAL)
    with caplog.at_level(logging.WARNING, logger="sse"):
        for _ in range(3):
            refused = await stream_response(rf.get(f"/sse/{stream}/"), stream)
            assert refused.status_code == 503 and refused["Retry-After"] == "5"
    said = [r.getMessage() for r in caplog.records if "new streams get 503" in r.getMessage()]
    assert len(said) == 1, said  # one cause, one line, not one per refused stream
    assert said[0].startswith("sse: new streams get 503: Redis at redis://") and "secret" not in said[0]
    await hub.aclose()


async def test_long_replays_page_through_the_log(backend, stream):
    ids = [await apublish(stream, "n", i) for i in range(300)]
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID=ids[0])
    events = await read_until(chunks, lambda ev: len(data_events(ev)) >= 299)
    assert [e["id"] for e in data_events(events)] == ids[1:]


async def test_a_replay_is_written_at_once_not_page_by_page(backend, stream):
    """Pages start at one entry and double (entry sizes are unknown until read): ten missed
    events come in four pages. They reach the transport as one write after the retry line,
    not four: each write is a pass through ASGI, Twisted and a system call per client."""
    ids = [await apublish(stream, "n", i) for i in range(11)]
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID=ids[0])
    assert (await anext(chunks)).startswith(b"retry: ")
    replayed = await anext(chunks)
    assert [e["id"] for e in data_events(parse(replayed.decode()))] == ids[1:]
    await chunks.aclose()


async def test_a_large_replay_is_written_in_pieces_of_about_64_kb(backend, stream):
    ids = [await apublish(stream, "big", {"i": i, "pad": "x" * 10_000}) for i in range(21)]
    chunks = await open_stream(stream, HTTP_LAST_EVENT_ID=ids[0])
    await anext(chunks)
    writes, seen = [], []
    while len(seen) < 20:
        writes.append(await anext(chunks))
        seen += [e["id"] for e in data_events(parse(writes[-1].decode()))]
    assert seen == ids[1:]
    # Each write ends with the frame that took it past 64 KiB: 7, 7 and the last 6 of 10 KB.
    assert [len(data_events(parse(write.decode()))) for write in writes] == [7, 7, 6], "never one block"
    assert all(65_536 <= len(write) < 65_536 + 10_100 for write in writes[:-1]), [len(w) for w in writes]
    await chunks.aclose()


async def test_live_frames_skip_the_queue_until_the_client_falls_behind(backend, stream):
    """The fast path (Daphne): the hub writes each frame itself; a client that falls
    behind gets the next ones from its queue, then returns to the fast path. One
    byte stream, as on the socket: every event once, in order."""
    wire: list[bytes] = []
    direct = 0

    def write(frame: bytes) -> bool:
        nonlocal direct
        wire.append(frame)
        direct += 1
        return direct % 4 != 0  # every fourth write: "the client is behind"

    hub = get_hub()
    record = access.Record(rf.get(f"/sse/{stream}/"), stream, None, None)
    connection = Connection(hub, await hub.subscribe(stream), record, write)
    frames = connection.frames(retry_frame())
    wire.append(await anext(frames))  # the retry line

    async def pump() -> None:  # what the transport does with what the connection yields
        async for chunk in frames:
            wire.append(chunk)

    task = asyncio.create_task(pump())
    ids = []
    for i in range(40):
        ids.append(await apublish(stream, "n", i))
        if i % 3 == 0:
            await asyncio.sleep(0.01)  # sometimes the reader runs in between, sometimes not
    for _ in range(500):  # up to 5 s for the last deliveries
        events = data_events(parse(b"".join(wire).decode()))
        if len(events) >= 40:
            break
        await asyncio.sleep(0.01)
    assert [e["id"] for e in events] == ids
    assert 10 <= direct < 40, "both paths were taken"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    connection.close()


async def test_a_storm_of_identical_replays_reads_each_page_about_once(backend, stream, settings):
    # 500 clients back at once with the same Last-Event-ID: a few reads per page, not 500
    # (a caller that arrives while a read runs waits for the next; callers drift apart).
    settings.SSE_MAX_BUFFER = 40  # pages of five of these events
    ids = [await apublish(stream, "n", {"i": i}) for i in range(20)]
    broker = get_broker()
    reads = []
    areplay = broker.areplay

    async def counted(*args):  # a spy on the real read, which still runs
        reads.append(args)
        return await areplay(*args)

    broker.areplay = counted
    try:

        async def replay() -> list[str]:
            return [entry[0] async for page in broker.pages(stream, ids[4]) for entry in page]

        results = await asyncio.gather(*(replay() for _ in range(500)))
    finally:
        del broker.areplay
    assert all(result == ids[5:] for result in results)
    pages = len({args for args in reads})
    assert pages >= 3 and len(reads) <= 6 * pages, f"{len(reads)} reads for {pages} pages"


async def test_ten_missed_small_events_come_back_in_one_read(backend, stream):
    # A reconnect storm is mostly clients a few small events behind: one round trip each.
    ids = [await apublish(stream, "n", {"i": i}) for i in range(11)]
    broker = get_broker()
    reads = []
    areplay = broker.areplay

    async def counted(*args):
        reads.append(args)
        return await areplay(*args)

    broker.areplay = counted
    try:
        pages = [[entry[0] for entry in page] async for page in broker.pages(stream, ids[0])]
    finally:
        del broker.areplay
    assert pages == [ids[1:]] and len(reads) == 1


async def test_a_page_ends_with_the_entry_that_reaches_the_byte_budget(backend, stream, settings):
    # Bytes are counted in UTF-8 as Redis stores them: 150 "é" weigh as much as 300 "x".
    settings.SSE_MAX_BUFFER = 1000
    broker = get_broker()
    for letter, length in (("x", 300), ("é", 150)):
        name = f"{stream}-{ord(letter)}"
        ids = [await apublish(name, "n", text=letter * length) for _ in range(10)]  # 301 bytes each
        assert [e[0] for e in await broker.areplay(name, "", 100, 1000)] == ids[:4]  # 1,204 >= 1,000
        assert [e[0] for e in await broker.areplay(name, ids[0], 100, 903)] == ids[1:4]  # exactly 903
        assert [e[0] for e in await broker.areplay(name, ids[0], 100, 5000)] == ids[1:]
        assert [e[0] for e in await broker.areplay(name, ids[0], 2, 5000)] == ids[1:3]
        assert await broker.areplay(name, ids[8], 100, 10) == [(ids[9], "n", letter * length)]
        pages = [[e[0] for e in page] async for page in broker.pages(name, "")]
        assert pages == [ids[:4], ids[4:8], ids[8:]], letter


async def test_one_event_larger_than_the_budget_is_a_page_of_its_own(backend, stream, settings):
    settings.SSE_MAX_BUFFER = 1000
    small = await apublish(stream, "n", text="a")
    large = await apublish(stream, "n", text="b" * 5000)
    after = await apublish(stream, "n", text="c")
    pages = [[e[0] for e in page] async for page in get_broker().pages(stream, small)]
    assert pages == [[large], [after]]
    assert await get_broker().areplay(stream, "9-9", 10, 1000) is None, "not in the log"


async def test_a_read_already_running_is_not_shared_with_a_later_caller():
    # It may have started before the later caller subscribed: that caller waits for the next one.
    gate = asyncio.Event()
    started = []

    async def read() -> int:
        started.append(len(started) + 1)
        number = len(started)
        if number == 1:
            await gate.wait()
        return number

    shared = SharedReads()
    first = asyncio.ensure_future(shared.read("k", read))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(shared.read("k", read)) for _ in range(3)]
    await asyncio.sleep(0)
    assert started == [1]  # the later callers wait; they do not start reads of their own
    later[0].cancel()  # a caller that leaves does not cancel the read the others wait for
    gate.set()
    assert await first == 1
    assert [await task for task in later[1:]] == [2, 2]
    assert started == [1, 2]
    assert await shared.read("k", read) == 3  # nothing in flight: a new read


async def test_a_failed_shared_read_fails_each_caller():
    async def read() -> None:
        await asyncio.sleep(0.01)
        raise BrokerUnavailable("down")

    shared = SharedReads()
    results = await asyncio.gather(*(shared.read("k", read) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [BrokerUnavailable] * 3


async def test_a_page_read_that_fails_once_is_tried_again(backend, stream, monkeypatch):
    # A reconnect storm can starve the loop past Redis's connect timeout: one failed read
    # must not end every stream that shares it.
    ids = [await apublish(stream, "n", {"i": i}) for i in range(5)]
    broker = get_broker()
    real, calls = broker.areplay, []

    async def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise BrokerUnavailable("Redis at x is unavailable: Timeout connecting to server")
        return await real(*args)

    monkeypatch.setattr(broker, "areplay", flaky)
    got = [entry[0] async for page in broker.pages(stream, ids[0]) for entry in page]
    assert got == ids[1:] and len(calls) > 1
