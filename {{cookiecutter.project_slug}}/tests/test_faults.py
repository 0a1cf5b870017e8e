"""Errors inside open streams, bursts of connects, and how connections end."""

import asyncio
import logging

import pytest
from django.test import RequestFactory

from sse import apublish
from sse.backends import BrokerUnavailable, get_broker
from sse.encoding import InvalidEvent, parse_composite, parse_id
from sse.hub import Subscription, get_hub
from sse.ops import metrics
from sse.security import access
from sse.transports.endpoint import close_frames, stream_response
from tests.conftest import data_events, parse

rf = RequestFactory()
TOP = 2**64 - 1


def test_ids_are_two_unsigned_64_bit_numbers():
    assert parse_id(f"{TOP}-{TOP}") == (TOP, TOP, 0)
    assert parse_id(f"1-2.{TOP}") == (1, 2, TOP)
    for bad in (f"{TOP + 1}-0", f"0-{TOP + 1}", f"1-0.{TOP + 1}", "99999999999999999999-0", "\u0661-0"):
        with pytest.raises(InvalidEvent):
            parse_id(bad)
        with pytest.raises(InvalidEvent):
            parse_composite(f"a:{bad}", 4)


async def test_an_out_of_range_id_is_a_400_at_the_door(backend, stream):
    response = await stream_response(rf.get(f"/sse/{stream}/", HTTP_LAST_EVENT_ID="99999999999999999999-0"), stream)
    assert response.status_code == 400 and b"out of range" in response.content


async def read_all(chunks, limit: float = 5.0) -> bytes:
    body = b""
    async with asyncio.timeout(limit):
        async for chunk in chunks:
            body += chunk
    return body


@pytest.mark.parametrize("multi", [False, True], ids=["one", "several"])
@pytest.mark.parametrize("error", [BrokerUnavailable("Redis at x is unavailable: gone"), RuntimeError("a bug")])
async def test_an_error_inside_a_stream_ends_it_cleanly_logged_and_counted(
    backend, stream, monkeypatch, caplog, multi, error
):
    ids = [await apublish(stream, "n", "x" * 20_000) for i in range(30)]  # pages of 13
    broker = get_broker()
    real = broker.areplay
    calls = 0

    async def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 1:  # the first page replays, the next one fails
            raise error
        return await real(*args, **kwargs)

    monkeypatch.setattr(broker, "areplay", failing)
    errors = metrics.STREAM_ERRORS.value()
    disconnects = metrics.DISCONNECTS.value(reason="error")
    if multi:
        request = rf.get(f"/sse/?stream={stream}", HTTP_LAST_EVENT_ID=f"{stream}:{ids[0]}")
        response = await stream_response(request)
    else:
        response = await stream_response(rf.get(f"/sse/{stream}/", HTTP_LAST_EVENT_ID=ids[0]), stream)
    with caplog.at_level(logging.INFO):
        body = await read_all(response.streaming_content)  # ends: no exception, no hang
    events = data_events(parse(body.decode()))
    assert 0 < len(events) < 29, "the first page, then the end of the stream"
    assert metrics.STREAM_ERRORS.value() == errors + 1
    assert metrics.DISCONNECTS.value(reason="error") == disconnects + 1
    (logged,) = [r for r in caplog.records if r.name == "sse" and "ended by an error" in r.getMessage()]
    assert stream in logged.getMessage() and str(error) in logged.getMessage()
    # An outage says it all in one line; anything else is a bug and gets its traceback.
    assert (logged.exc_info is not None) == isinstance(error, RuntimeError)
    (line,) = [r.getMessage() for r in caplog.records if "event=disconnect" in r.getMessage()]
    assert line.endswith("reason=error")
    assert get_hub().open == 0, "its subscription is gone"


async def test_a_burst_of_connects_cannot_pass_sse_max_streams(backend, settings):
    settings.SSE_MAX_STREAMS = 5
    names = [f"burst-{n}" for n in range(3)]

    async def one(n: int):
        if n % 2:  # two streams on one connection count twice
            return await stream_response(rf.get(f"/sse/?stream={names[n % 3]}&stream={names[(n + 1) % 3]}"))
        return await stream_response(rf.get(f"/sse/{names[n % 3]}/"), names[n % 3])

    responses = await asyncio.gather(*(one(n) for n in range(30)))
    assert {r.status_code for r in responses} == {200, 503}
    assert get_hub().open <= 5
    assert sum(2 if n % 2 else 1 for n, r in enumerate(responses) if r.status_code == 200) == get_hub().open
    for response in responses:
        if response.streaming:
            await response.streaming_content.aclose()
            response.close()
    assert get_hub().open == 0


async def test_the_transport_closes_a_stream_left_waiting_on_a_write(backend, stream, caplog):
    """A client gone while the server waited to write to it: the stream's generator,
    suspended where it yielded, is closed by the transport, not by the garbage collector."""
    request = rf.get(f"/sse/{stream}/")
    request.scope = {}  # what both transports hand to the response (ASGIRequest)
    response = await stream_response(request, stream)
    content = response.streaming_content
    await anext(content)  # the retry line; the "write" of it never finishes
    disconnects = metrics.DISCONNECTS.value(reason="client-gone")
    with caplog.at_level(logging.INFO, logger="sse.access"):
        await close_frames(request.scope)
    assert metrics.DISCONNECTS.value(reason="client-gone") == disconnects + 1
    assert any("event=disconnect" in r.getMessage() for r in caplog.records)
    assert get_hub().open == 0
    await content.aclose()


def test_a_slow_client_is_counted_once_where_its_stream_ends():
    record = access.Record(rf.get("/sse/x/"), "x", None, None)
    sub = Subscription("x", 1, 0)
    before = metrics.SLOW_CLIENTS.value()
    sub.push(((1, 0, 0), b"a"))
    sub.push(((2, 0, 0), b"b"))  # past its queue: closed
    access.mark_slow()  # and the send timeout gives up on it too
    assert sub.dropped and metrics.SLOW_CLIENTS.value() == before
    record.closed("slow-client", [sub])
    assert metrics.SLOW_CLIENTS.value() == before + 1


async def test_a_cancellation_a_redis_call_swallowed_is_raised_again():
    """Python 3.11's asyncio.wait_for, under every redis-py write, can return instead of
    raising when its task is cancelled as the write completes; the stream must still end."""
    from sse.backends.redis import raise_swallowed_cancel

    async def stream_task() -> str:
        asyncio.current_task().cancel()  # the client leaves...
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # ...while redis-py's write completes: wait_for returns its result
        raise_swallowed_cancel()
        return "went on"

    task = asyncio.ensure_future(stream_task())
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_replay_pages_stay_within_the_byte_budget_from_the_first_one(backend, stream, settings):
    settings.SSE_MAX_BUFFER = 65_536
    for _ in range(40):
        await apublish(stream, "n", "x" * 10_000)  # 10,003 bytes with the name and quotes
    first = (await get_broker().areplay(stream, "", 1))[0][0]
    sizes = []
    broker = get_broker()
    real = broker.areplay

    async def recording(*args):
        entries = await real(*args)
        sizes.append([len(event) + len(data) for _id, event, data in entries or ()])
        return entries

    broker.areplay = recording
    try:
        replayed = [entry async for page in broker.pages(stream, first) for entry in page]
    finally:
        del broker.areplay
    assert len(replayed) == 39
    # Each page ends with the entry that reaches the budget: 7 x 10,003 >= 65,536.
    assert [len(page) for page in sizes] == [7, 7, 7, 7, 7, 4], sizes
    assert all(sum(page[:-1]) < 65_536 for page in sizes), "one entry past the budget at most"
