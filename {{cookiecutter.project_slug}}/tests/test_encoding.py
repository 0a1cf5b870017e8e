import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse.encoding import (
    EVENT_ID,
    InvalidEvent,
    Writes,
    dumps,
    encode,
    format_id,
    parse_id,
    validate_event_name,
    validate_stream,
)
from tests.conftest import parse


@pytest.mark.parametrize(
    "value",
    [
        {"msg": "hi"},
        "line one\nline two\r\nline three\rend",
        "data: forged\n\nevent: evil",
        "é ✓ 🎉 \u2028 \u0000",
        "lone \ud800 surrogate",
        [None, True, 1.5, {"nested": ["x"]}],
        "x" * 200_000,
    ],
    ids=["object", "newlines", "looks-like-sse", "unicode", "surrogate", "array", "200kb"],
)
def test_any_json_value_round_trips(value):
    frame = encode(id="1-0", event="message", data=dumps(value)).decode()
    (event,) = parse(frame)
    assert event == {"id": "1-0", "event": "message", "data": dumps(value)}


def test_raw_line_breaks_in_data_become_data_lines():
    assert encode(data="a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_retry_and_comment():
    assert encode(retry=3000) == b"retry: 3000\n\n"
    assert encode(comment="ping") == b": ping\n\n"


def test_empty_id_clears_last_event_id():
    assert encode(id="", event="reset", data="{}") == b"id\nevent: reset\ndata: {}\n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b", "", "x" * 65, 5])
def test_event_names_with_line_breaks_nul_or_bad_size_are_rejected(bad):
    with pytest.raises(InvalidEvent):
        validate_event_name(bad)


@pytest.mark.parametrize("bad", ["1-0\n", "1-0\r", "1\0"])
def test_ids_with_line_breaks_or_nul_are_rejected(bad):
    with pytest.raises(InvalidEvent):
        encode(id=bad, data="1")


@pytest.mark.parametrize("good", ["a", "notifications", "user.42", "A-Z_0.9", "x" * 64])
def test_valid_stream_names(good):
    assert validate_stream(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a/b", "é", "a\n", None])
def test_invalid_stream_names(bad):
    with pytest.raises(InvalidEvent):
        validate_stream(bad)


def test_ids_parse_and_sort():
    assert parse_id("1700000000000-3") == (1700000000000, 3, 0)
    assert parse_id("5-0.2") == (5, 0, 2)
    assert format_id((5, 0, 2)) == "5-0.2"
    assert format_id((5, 1, 0)) == "5-1"
    assert parse_id("5-0") < parse_id("5-0.1") < parse_id("5-1") < parse_id("6-0")


@pytest.mark.parametrize("bad", ["", "abc", "1", "1-", "-1", "1-2-3", "1-2.", "1" * 21 + "-0", " 1-0", "1-0 "])
def test_malformed_ids(bad):
    with pytest.raises(InvalidEvent):
        parse_id(bad)


@pytest.mark.parametrize("bad", [float("nan"), object(), {1: {2, 3}}])
def test_data_must_be_json(bad):
    with pytest.raises(InvalidEvent):
        dumps(bad)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)
VALID_NAMES = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]), min_size=1, max_size=64)
EVENT_IDS = st.tuples(st.integers(0, 2**63), st.integers(0, 2**63), st.integers(0, 2**31)).map(format_id)


@given(value=JSON, event=VALID_NAMES, event_id=EVENT_IDS)
def test_property_any_json_any_name_reads_back_identical(value, event, event_id):
    data = dumps(value)
    (parsed,) = parse(encode(id=event_id, event=event, data=data).decode())
    assert parsed == {"id": event_id, "event": event, "data": data}
    assert json.loads(parsed["data"]) == value
    assert parse_id(parsed["id"]) == parse_id(event_id)


@given(
    name=st.tuples(st.text(max_size=30), st.sampled_from("\r\n\0\ud800\udfff"), st.text(max_size=30)).map("".join),
)
def test_property_names_with_line_breaks_nul_or_surrogates_are_rejected(name):
    with pytest.raises(InvalidEvent):
        encode(event=name, data="1")
    with pytest.raises(InvalidEvent):
        encode(id=name, data="1")


@given(value=st.text(max_size=40).filter(lambda v: not EVENT_ID.fullmatch(v)))
def test_property_anything_that_is_not_an_id_is_rejected(value):
    with pytest.raises(InvalidEvent):
        parse_id(value)


def test_writes_join_frames_into_about_64_kb_in_order():
    frames = [b"x" * 30_000, b"y" * 30_000, b"z" * 30_000, b"w" * 10]
    batch = Writes()
    assert [batch.add(frame) for frame in frames] == [None, None, (frames[0] + frames[1] + frames[2], 3), None]
    assert batch.take() == (frames[3], 1)
    assert batch.take() is None
    small = Writes(size=1)
    assert [small.add(b"a"), small.add(b"b"), small.take()] == [(b"a", 1), (b"b", 1), None]
