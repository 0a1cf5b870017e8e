"""The test client's parser, checked on the spec's own tricky cases."""

from tests.sse_client import SSEParser


def test_parser_follows_the_spec() -> None:
    p = SSEParser()
    p.feed(b"\xef\xbb\xbfdata: a\r\ndata:b\rdata\n\nid: 7\nevent: x\ndata:  two spaces\n\n")
    p.feed(b": comment\nretry: 10\nretry: x\nid: a\0b\ndata: y\n\nevent: lonely\n\n")
    p.feed(b"data: split \xc3")
    p.feed(b"\xa9\r")
    p.feed(b"\n\n")
    assert [(e.type, e.data, e.id) for e in p.events] == [
        ("message", "a\nb\n", ""),
        ("x", " two spaces", "7"),
        ("message", "y", "7"),
        ("message", "split \u00e9", "7"),
    ]
    assert p.comments == [" comment"]
    assert p.retry == 10
