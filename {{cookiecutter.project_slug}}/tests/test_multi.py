"""Several streams on one connection: composite ids, replay per stream, caps, authorization."""

import json

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import RequestFactory
from hypothesis import given
from hypothesis import strategies as st

from sse import apublish
from sse.encoding import (
    InvalidEvent,
    encode,
    format_composite,
    format_id,
    parse_composite,
    parse_id,
    with_id,
)
from sse.transports.endpoint import stream_response
from tests.conftest import data_events, parse, read_until

rf = RequestFactory()

names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
keys = st.tuples(*[st.integers(0, 2**64 - 1)] * 3)  # Redis ids: unsigned 64-bit parts
positions = st.dictionaries(names, st.one_of(st.none(), keys), min_size=1, max_size=16)


@given(positions, st.data())
def test_composite_ids_round_trip_and_stay_on_one_line(value, data):
    first = data.draw(st.sampled_from(sorted(value)))
    text = format_composite(first, {s: format_id(k) if k else "" for s, k in value.items()})
    assert not any(c in text for c in "\r\n\0 ")
    assert text.startswith(f"{first}:"), "the first position names the event's stream"
    assert parse_composite(text, 16) == value


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a",
        "a:1",
        "a:1-0,",
        ",a:1-0",
        "a:1-0,a:2-0",  # a stream twice
        "a b:1-0",
        "a:1-0\nb:2-0",
        "a:1-0\r",
        "a:1-0\0",
        "a:1-0;b:2-0",
        "a:\u0661-\u0660",  # digits of another script
        "a:1-0.",
        "x" * 65 + ":1-0",
        "a:" + "9" * 21 + "-0",
        ",".join(f"s{i}:1-0" for i in range(17)),  # more than the cap
    ],
)
def test_malformed_composite_ids_are_refused(bad):
    with pytest.raises(InvalidEvent):
        parse_composite(bad, 16)


def test_with_id_relabels_a_frame_and_refuses_line_breaks():
    frame = encode(id="5-0", event="n", data='{"a":1}')
    assert with_id(frame, "b:5-0,a:") == b'id: b:5-0,a:\nevent: n\ndata: {"a":1}\n\n'
    with pytest.raises(InvalidEvent):
        with_id(frame, "a:1-0\nevent: evil")


def url(*streams: str, **params: str) -> str:
    query = "&".join([*(f"stream={s}" for s in streams), *(f"{k}={v}" for k, v in params.items())])
    return f"/sse/?{query}"


async def open_multi(path: str, **headers):
    response = await stream_response(rf.get(path, **headers))
    assert response.status_code == 200, response.content
    return response.streaming_content


def origin(event: dict) -> str:
    return event["id"].split(",")[0].split(":")[0]


def position(event: dict, stream: str) -> str:
    return dict(p.split(":", 1) for p in event["id"].split(","))[stream]


async def test_events_of_both_streams_arrive_labelled_with_their_stream(backend, stream):
    a, b = f"{stream}-a", f"{stream}-b"
    before = await apublish(a, "n", "before")
    chunks = await open_multi(url(a, b))
    first = await anext(chunks)
    assert first.startswith(b"retry: ")
    ida = await apublish(a, "n", {"from": "a"})
    events = data_events(await read_until(chunks, data_events))
    idb = await apublish(b, "chat", {"from": "b"})  # once a's is out: the order across streams is not fixed
    events += data_events(await read_until(chunks, data_events))
    assert [(origin(e), e["event"], json.loads(e["data"])) for e in events] == [
        (a, "n", {"from": "a"}),
        (b, "chat", {"from": "b"}),
    ]
    # Every id holds a position for each stream: b had no events yet when the client came.
    assert events[0]["id"] == f"{a}:{ida},{b}:"
    assert events[1]["id"] == f"{b}:{idb},{a}:{ida}"
    assert before < ida
    await chunks.aclose()


async def test_reconnect_replays_each_stream_from_its_own_position(backend, stream):
    a, b, c = f"{stream}-a", f"{stream}-b", f"{stream}-c"
    chunks = await open_multi(url(a, b, c))
    await anext(chunks)
    seen = [await apublish(a, "n", "a0"), await apublish(b, "n", "b0")]
    events = data_events(await read_until(chunks, lambda ev: len(data_events(ev)) >= 2))
    last = events[-1]["id"]
    await chunks.aclose()
    missed = []
    for value in ["a1", "c1", "b1", "a2", "c2"]:
        missed.append((value[0], await apublish(f"{stream}-{value[0]}", "n", value)))
    # the header wins over the query parameter
    chunks = await open_multi(url(a, b, c, last_event_id=f"{a}:{seen[0]}"), HTTP_LAST_EVENT_ID=last)
    live = await apublish(b, "n", "b9-live")
    events = data_events(await read_until(chunks, lambda ev: len(data_events(ev)) >= 6))
    got = [json.loads(e["data"]) for e in events]
    assert sorted(got) == ["a1", "a2", "b1", "b9-live", "c1", "c2"], "each missed event once, nothing else"
    for s in "abc":
        mine = [parse_id(position(e, f"{stream}-{s}")) for e in events if origin(e) == f"{stream}-{s}"]
        assert mine == sorted(mine), "per stream in id order"
    assert position(events[-1], b) == live
    await chunks.aclose()


async def test_each_streams_replay_is_written_at_once_not_page_by_page(backend, stream):
    a, b = f"{stream}-a", f"{stream}-b"
    ida = [await apublish(a, "n", i) for i in range(11)]
    idb = [await apublish(b, "n", i) for i in range(6)]
    chunks = await open_multi(url(a, b), HTTP_LAST_EVENT_ID=format_composite(a, {a: ida[0], b: idb[0]}))
    assert (await anext(chunks)).startswith(b"retry: ")
    writes = [data_events(parse((await anext(chunks)).decode())) for _ in range(2)]
    assert [[position(e, origin(e)) for e in write] for write in writes] == [ida[1:], idb[1:]]
    await chunks.aclose()


async def test_first_connection_with_last_event_id_query_replays(backend, stream):
    a, b = f"{stream}-a", f"{stream}-b"
    ids = [await apublish(a, "n", i) for i in range(3)]
    idb = await apublish(b, "n", "b")
    chunks = await open_multi(url(a, b, last_event_id=f"{a}:{ids[0]},{b}:"))
    events = data_events(await read_until(chunks, lambda ev: len(data_events(ev)) >= 3))
    assert [json.loads(e["data"]) for e in events] == [1, 2, "b"], "an empty position replays from the start"
    assert events[-1]["id"] == f"{b}:{idb},{a}:{ids[2]}"
    await chunks.aclose()


async def test_events_published_during_replay_are_sent_once(backend, stream):
    a, b = f"{stream}-a", f"{stream}-b"
    ida = [await apublish(a, "n", f"a{i}") for i in range(3)]
    idb = [await apublish(b, "n", f"b{i}") for i in range(3)]
    chunks = await open_multi(url(a, b), HTTP_LAST_EVENT_ID=f"{a}:{ida[0]},{b}:{idb[0]}")
    more = [await apublish(b, "n", "b3"), await apublish(a, "n", "a3")]
    events = data_events(await read_until(chunks, lambda ev: len(data_events(ev)) >= 6))
    last = await apublish(a, "n", "last")
    events += data_events(await read_until(chunks, lambda ev: any(e.get("data") == '"last"' for e in ev)))
    got = [json.loads(e["data"]) for e in events]
    assert sorted(got) == ["a1", "a2", "a3", "b1", "b2", "b3", "last"]
    assert position(events[-1], a) == last and position(events[-1], b) == more[0]
    await chunks.aclose()


async def test_unknown_position_resets_only_that_stream(backend, stream):
    a, b = f"{stream}-a", f"{stream}-b"
    ida = [await apublish(a, "n", i) for i in range(3)]
    latest_b = await apublish(b, "n", "b")
    chunks = await open_multi(url(a, b), HTTP_LAST_EVENT_ID=f"{a}:{ida[0]},{b}:1-0")
    events = data_events(await read_until(chunks, lambda ev: len(data_events(ev)) >= 3))
    assert [(origin(e), e["event"]) for e in events] == [(a, "n"), (a, "n"), (b, "reset")]
    reset = events[-1]
    assert json.loads(reset["data"]) == {"reason": "unknown-id", "stream": b, "last_event_id": "1-0"}
    assert reset["id"] == f"{b}:{latest_b},{a}:{ida[2]}", "the reset moves b to its newest event"
    await chunks.aclose()


async def test_duplicates_collapse_and_the_count_is_capped(backend, stream, settings):
    settings.SSE_MAX_STREAMS_PER_CONNECTION = 3
    chunks = await open_multi(url(stream, stream, f"{stream}-2", stream))
    await anext(chunks)
    event_id = await apublish(stream, "n", 1)
    (event,) = data_events(await read_until(chunks, data_events))
    assert event["id"] == f"{stream}:{event_id},{stream}-2:"
    await chunks.aclose()
    ok = await stream_response(rf.get(url(*(f"{stream}-{i}" for i in range(3)))))
    assert ok.status_code == 200
    ok.close()
    refused = await stream_response(rf.get(url(*(f"{stream}-{i}" for i in range(4)))))
    assert refused.status_code == 400
    assert b"at most 3" in refused.content


async def test_bad_requests_are_400_with_a_reason(backend, stream):
    cases = [
        ("/sse/", {}, b"at least one stream"),
        (url(stream, "bad%20name"), {}, b"invalid stream name 'bad name'"),
        (url(stream), {"HTTP_LAST_EVENT_ID": "1-0"}, b"expected <stream>:<id>"),
        (url(stream), {"HTTP_LAST_EVENT_ID": f"{stream}:1-0,other:2-0"}, b"'other'"),
        (url(stream, last_event_id="x:1-0%0A"), {}, b"malformed"),
    ]
    for path, headers, reason in cases:
        response = await stream_response(rf.get(path, **headers))
        assert response.status_code == 400, path
        assert reason in response.content, response.content
        assert response.content.count(b"\n") == 1, "one line"


@pytest.mark.django_db
async def test_each_stream_is_authorized_separately(backend, stream, settings):
    settings.SSE_PUBLIC_STREAMS = ["public.*"]
    alice = User(pk=7, username="alice")

    async def status(path: str, user) -> tuple[int, bytes]:
        request = rf.get(path)
        request.user = user
        response = await stream_response(request)
        if response.streaming:
            response.close()
        return response.status_code, response.content if not response.streaming else b""

    assert (await status(url("public.a", "user.7"), alice))[0] == 200
    code, body = await status(url("public.a", "user.7", "secret"), alice)
    assert code == 403 and b"'secret'" in body
    code, body = await status(url("public.a", "user.7"), AnonymousUser())
    assert code == 403 and b"'user.7'" in body


async def test_single_stream_ids_are_unchanged(backend, stream):
    response = await stream_response(rf.get(f"/sse/{stream}/"), stream)
    chunks = response.streaming_content
    await anext(chunks)
    event_id = await apublish(stream, "n", 1)
    events = await read_until(chunks, data_events)
    assert data_events(events)[0]["id"] == event_id
    parse_id(event_id)
    await chunks.aclose()
    assert parse("id: x\n\n") == [{"id": "x"}]
