import pytest

from sse.encoding import (
    InvalidEvent,
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
        [None, True, 1.5, {"nested": ["x"]}],
        "x" * 200_000,
    ],
    ids=["object", "newlines", "looks-like-sse", "unicode", "array", "200kb"],
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
