"""The SSE wire format, per the WHATWG HTML "Server-sent events" section.

This is the only module that writes SSE bytes. Everything that reaches a
client goes through :func:`encode`, so a field value can never carry the CR
or LF that would let data forge an extra field or event.

Event ids
    ``/sse/<stream>/`` sends the Redis Stream entry id (``1718000000000-0``), or
    for channels-mode ``group_send`` events the last logged id plus ``.<n>``.

Composite ids (``/sse/?stream=a&stream=b``)
    One Last-Event-ID has to carry a position in every stream of the connection,
    so each event's id lists them all: ``<stream>:<id>`` pairs joined by commas,
    for example ``chat:1718000000000-3,notifications:1718000000042-0``.

    - The first pair names the stream the event came from (its own id follows the
      colon); the others follow in the order the client asked for the streams.
    - An empty position (``chat:``) means the stream's log was empty when the
      client connected: a reconnect replays that stream from the start of its log.
    - Only ``A-Z a-z 0-9 . _ -``, ``:``, ``,`` and digits: no CR, LF or NUL, and
      nothing a query string needs to escape besides ``:`` and ``,``.

    :func:`parse_composite` is strict: a malformed pair, a stream named twice or
    more pairs than the connection may have is an error (400).
"""

import json
import re
from typing import Any

STREAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Redis Stream entry ids ("<ms>-<seq>"), optionally followed by ".<n>" for the
# live-only events that bypass the log (channels-mode group_send). ASCII digits
# only: \d would also take other scripts' digits.
EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})(?:\.([0-9]{1,20}))?")
# Redis keeps both parts of an id as unsigned 64-bit numbers and refuses larger
# ones in XRANGE: past this, an id that passed the pattern would fail in the
# middle of a replay. The ".<n>" part is ours; it gets the same bound.
MAX_ID_PART = 2**64 - 1
# One position of a composite id: "<stream>:<id>", the id optional. ASCII digits
# only: \d would also take other scripts' digits.
POSITION = re.compile(r"([A-Za-z0-9._-]{1,64}):((?:[0-9]{1,20})-(?:[0-9]{1,20})(?:\.[0-9]{1,20})?)?")
MAX_EVENT_NAME = 64
RESET_EVENT = "reset"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN = re.compile(r"[\r\n\0]")

EventKey = tuple[int, int, int]


class InvalidEvent(ValueError):
    """Input that cannot be published or parsed; the message is safe to show."""


def validate_stream(name: object) -> str:
    if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
        raise InvalidEvent(f"invalid stream name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return name


def validate_event_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_EVENT_NAME:
        raise InvalidEvent(f"event name must be 1-{MAX_EVENT_NAME} characters")
    if _FORBIDDEN.search(name):
        raise InvalidEvent("event name must not contain CR, LF or NUL")
    if not _is_utf8(name):
        raise InvalidEvent("event name must be valid Unicode (no lone surrogates)")
    return name


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_id(value: str) -> EventKey:
    """Turn an event id into a sortable key, or raise InvalidEvent."""
    match = EVENT_ID.fullmatch(value)
    if match is None:
        raise InvalidEvent(f"malformed event id {value[:80]!r}")
    key = (int(match[1]), int(match[2]), int(match[3] or 0))
    if max(key) > MAX_ID_PART:
        raise InvalidEvent(f"event id {value[:80]!r} is out of range: each part is at most {MAX_ID_PART}")
    return key


def format_id(key: EventKey) -> str:
    ms, seq, extra = key
    return f"{ms}-{seq}.{extra}" if extra else f"{ms}-{seq}"


def parse_composite(value: str, limit: int) -> dict[str, EventKey | None]:
    """A composite id as ``{stream: key}`` (None: the log was empty), or raise InvalidEvent."""
    parts = value.split(",")
    if len(parts) > limit:
        raise InvalidEvent(f"composite id names more than {limit} streams")
    positions: dict[str, EventKey | None] = {}
    for part in parts:
        match = POSITION.fullmatch(part)
        if match is None:
            raise InvalidEvent(f"malformed composite id part {part[:80]!r}: expected <stream>:<id>")
        stream, id = match.groups()
        if stream in positions:
            raise InvalidEvent(f"composite id names stream {stream!r} twice")
        positions[stream] = parse_id(id) if id else None
    return positions


def format_composite(first: str, positions: dict[str, str]) -> str:
    """The composite id of an event from ``first``; ``positions`` maps stream to id text ("" if none)."""
    rest = [f"{stream}:{id}" for stream, id in positions.items() if stream != first]
    return ",".join([f"{first}:{positions[first]}", *rest])


def with_id(frame: bytes, id: str) -> bytes:
    """The same event frame (from :func:`encode`, id first) under another id.

    Multi-stream connections re-label the frame the hub encoded once per event,
    instead of encoding the event again for each of them.
    """
    if _FORBIDDEN.search(id) or not _is_utf8(id):
        raise InvalidEvent("event id must not contain CR, LF, NUL or lone surrogates")
    head, _, rest = frame.partition(b"\n")
    if not head.startswith(b"id"):
        raise ValueError("frame has no id line first")
    return b"id: " + id.encode() + b"\n" + rest


def validate_text(text: object) -> str:
    """A ``text=`` payload (HTML, Datastar lines), checked before it is stored.

    Any line breaks are fine: :func:`encode` gives every line its own ``data:``
    field, so a blank line in the text is ``data:`` and cannot end the event. CR
    and CRLF arrive as LF, as the SSE format has it. NUL is refused: it has no
    place in HTML or text, browsers turn it into U+FFFD, and JSON never carries one.
    """
    if not isinstance(text, str):
        raise InvalidEvent(f"text must be a str, not {type(text).__name__}")
    if "\0" in text:
        raise InvalidEvent("text must not contain NUL")
    if not _is_utf8(text):
        raise InvalidEvent("text must be valid Unicode (no lone surrogates)")
    return text


def payload(data: Any = None, text: str | None = None) -> str:
    """An event's data as it is stored and sent: ``data`` as JSON, or ``text`` as is."""
    if text is None:
        return dumps(data)
    if data is not None:
        raise InvalidEvent("pass either data (sent as JSON) or text (sent as is), not both")
    return validate_text(text)


def dumps(data: Any) -> str:
    """Serialize event data to JSON text (``text=`` payloads skip this: see :func:`payload`)."""
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if not _is_utf8(text):
            # Lone surrogates can't be sent as UTF-8; as \uXXXX escapes JSON keeps them.
            text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise InvalidEvent("data is nested too deeply to serialize") from None
    return text


def encode(
    *,
    data: str | None = None,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one SSE block; ``data`` is text (JSON, HTML...), one ``data:`` line per line."""
    lines = []
    if comment is not None:
        lines.extend(": " + line for line in _LINE_BREAK.split(comment))
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    if id is not None:
        if _FORBIDDEN.search(id) or not _is_utf8(id):
            raise InvalidEvent("event id must not contain CR, LF, NUL or lone surrogates")
        lines.append(f"id: {id}" if id else "id")
    if event is not None:
        lines.append("event: " + validate_event_name(event))
    if data is not None:
        lines.extend("data: " + line for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


class Writes:
    """Frames joined into writes of about ``size`` bytes, each with its number of frames.

    Fed across all the pages of a replay, not page by page: pages start at one
    entry, and each write is a pass through the transport (under Daphne: ASGI,
    Twisted and a system call). A reconnect storm replaying 10 events wrote them
    in 4 writes per client; in one, Daphne spends a fifth less CPU per stream
    (docs/decisions.md). A backlog still never lands in memory as one block.
    """

    __slots__ = ("frames", "size", "total")

    def __init__(self, size: int = 65_536) -> None:
        self.frames: list[bytes] = []
        self.size = size
        self.total = 0

    def add(self, frame: bytes) -> tuple[bytes, int] | None:
        """Queue ``frame``; once about ``size`` bytes are queued, all of them as one write."""
        self.frames.append(frame)
        self.total += len(frame)
        return self.take() if self.total >= self.size else None

    def take(self) -> tuple[bytes, int] | None:
        """What is queued as one write, or None when nothing is."""
        if not self.frames:
            return None
        frames, self.frames, self.total = self.frames, [], 0
        return b"".join(frames), len(frames)
