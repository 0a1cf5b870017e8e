"""An independent SSE client for the end-to-end tests.

Written from the WHATWG HTML "Server-sent events" parsing rules, sharing no
code with the template, so the tests check the wire format rather than agree
with it. Raw sockets, HTTP/1.1, chunked decoding: nothing hides what the
server sent.
"""

from __future__ import annotations

import codecs
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    type: str
    data: str
    id: str


class SSEParser:
    """Feed it bytes; it collects events, comments and the retry value."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buffer = ""
        self.first = True
        self.events: list[Event] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.last_event_id = ""
        self._data: list[str] = []
        self._type = ""
        self._pending_cr = False

    def feed(self, raw: bytes) -> None:
        text = self.decoder.decode(raw)
        if self.first and text:
            text = text.removeprefix("\ufeff")
            self.first = False
        self.buffer += text
        start = 0
        while True:
            # A line ends at CRLF, LF or CR; a CR at the very end may be half a CRLF.
            end = LINE_END.search(self.buffer, start)
            if end is None or (end.group() == "\r" and end.end() == len(self.buffer)):
                self.buffer = self.buffer[start:]
                return
            self.line(self.buffer[start : end.start()])
            start = end.end()

    def line(self, line: str) -> None:
        if line == "":
            self.dispatch()
        elif line.startswith(":"):
            self.comments.append(line[1:])
        else:
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "event":
                self._type = value
            elif name == "data":
                self._data.append(value)
            elif name == "id":
                if "\0" not in value:
                    self.last_event_id = value
            elif name == "retry":
                if value.isascii() and value.isdigit():
                    self.retry = int(value)

    def dispatch(self) -> None:
        if not self._data:
            self._type = ""
            return
        self.events.append(Event(self._type or "message", "\n".join(self._data), self.last_event_id))
        self._data, self._type = [], ""


@dataclass
class SSEConnection:
    """A streaming GET in a background thread."""

    host: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False
    first_chunk_at: float | None = None
    tls: bool = False
    unix: str | None = None  # connect to this unix socket instead of host:port

    def __post_init__(self) -> None:
        self.body = bytearray(self.body)  # appends in place: streams of many MB stay linear
        self.parser = SSEParser()
        self.cond = threading.Condition()
        self.arrivals: list[float] = []  # wall-clock time each event was parsed
        if self.unix:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(self.unix)
        else:
            self.sock = socket.create_connection((self.host, self.port), timeout=5)
        if self.tls:  # a test certificate: no verification
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.sock.settimeout(None)
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        self.started = time.monotonic()
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        raw = b""
        try:
            while b"\r\n\r\n" not in raw:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before headers")
                raw += chunk
            head, rest = raw.split(b"\r\n\r\n", 1)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for h in header_lines:
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            with self.cond:
                self.status = int(status_line.split()[1])
                self.response_headers = headers
                self.cond.notify_all()
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            self._body(rest, chunked)
        except OSError:
            pass
        finally:
            self.sock.close()  # the stream is over: a test that forgets close() leaks nothing
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        return chunk

    def _body(self, buf: bytes, chunked: bool) -> None:
        while True:
            if not chunked:
                if buf:
                    self._data(buf)
                buf = self._recv()
                continue
            while b"\r\n" not in buf:
                buf += self._recv()
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            while len(buf) < size + 2:
                buf += self._recv()
            self._data(buf[:size])
            buf = buf[size + 2 :]

    def _data(self, data: bytes) -> None:
        with self.cond:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.monotonic()
            self.body += data
            before = len(self.parser.events)
            self.parser.feed(data)
            self.arrivals += [time.time()] * (len(self.parser.events) - before)
            self.cond.notify_all()

    # -- what tests use ---------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        return list(self.parser.events)

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def wait_events(self, count: int, timeout: float = 10.0) -> list[Event]:
        if not self.wait(lambda c: len(c.parser.events) >= count or c.closed, timeout):
            raise AssertionError(f"got {len(self.events)} of {count} events in {timeout}s: {self.events[-3:]}")
        return self.events

    def wait_status(self, timeout: float = 10.0) -> int:
        if not self.wait(lambda c: c.status is not None or c.closed, timeout) or self.status is None:
            raise AssertionError("no response status")
        return self.status

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def events_until_closed(sock: socket.socket, timeout: float = 10.0) -> list[Event]:
    """What a stalled client finds when it reads again: the events that reached it before the server closed it."""
    sock.settimeout(timeout)
    # It stalled with a small buffer; read the rest with a large one. Through 4 KB a busy
    # machine takes a minute for the megabytes the server may still hold for it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    body = b""
    try:
        while chunk := sock.recv(65536):
            body += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    parser = SSEParser()
    parser.feed(body.split(b"\r\n", 1)[1] if body else b"")  # past the first chunk-size line
    return parser.events
