"""A load generator for SSE servers: many raw-socket clients in one asyncio process.

It shares no code with the template: its parser is written from the WHATWG HTML
"Server-sent events" rules (CRLF, LF and CR line ends, a leading BOM, comments,
multi-line data, id/event/retry fields), and it speaks HTTP/1.1 itself (chunked or
close-delimited bodies), so what it counts is what the server put on the wire.

Every published event carries JSON data ``{"p": phase, "s": seq, "t": publish time}``.
Each client counts, per phase, which sequence numbers it saw: lost, duplicated, out of
order, and the latency from ``t`` (time.time() in the publisher, same machine) to the
moment the bytes arrived (``SocketClient``: the kernel's receive time) or were read.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence

BOM = b"\xef\xbb\xbf"


class SSEParser:
    """Bytes in, ``on_event(type, data, last_event_id)`` out, by the WHATWG event-stream rules.

    Line ends are normalised to LF first (CRLF, LF and lone CR are the same line end, and a
    CR at the end of a chunk may be half of a CRLF), so whole events split on ``\\n\\n`` and
    only the last, incomplete one waits in the buffer: a fast path that is also the only path.
    """

    def __init__(self, on_event: Callable[[str, str, str], None]) -> None:
        self.on_event = on_event
        self._buf = b""
        self._bom_pending = True
        self._cr_pending = False
        self._data: list[str] = []
        self._type = ""
        self._id = ""  # the "last event ID buffer"
        self.last_event_id = ""  # set on dispatch: what a reconnect sends as Last-Event-ID
        self.retry: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> None:
        if self._cr_pending:
            self._cr_pending = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr_pending = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        if self._bom_pending:
            if len(buf) < 3 and BOM.startswith(buf):
                self._buf = buf
                return
            self._bom_pending = False
            if buf.startswith(BOM):
                buf = buf[3:]
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        for block in blocks:
            self._block(block)

    def _block(self, block: bytes) -> None:
        """A complete block: its lines, then the blank line that ended it."""
        for raw in block.split(b"\n"):
            line = raw.decode("utf-8", "replace")
            if not line:
                self._dispatch()
            elif line[0] == ":":
                self.comments += 1
            else:
                name, colon, value = line.partition(":")
                if colon and value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._type = value
                elif name == "id":
                    if "\0" not in value:
                        self._id = value
                elif name == "retry" and value.isascii() and value.isdigit():
                    self.retry = int(value)
        self._dispatch()

    def _dispatch(self) -> None:
        self.last_event_id = self._id
        if not self._data:
            self._type = ""
            return
        data = "\n".join(self._data)
        event_type = self._type or "message"
        self._data = []
        self._type = ""
        self.on_event(event_type, data, self.last_event_id)


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer coding, incrementally. ``done`` once the last chunk is read."""

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0  # bytes of chunk data still to come
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out = []
        pos = 0
        end = len(buf)
        while not self.done:
            if self._remaining:
                take = min(self._remaining, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                self._crlf = True
            if self._crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                pos += 2
                self._crlf = False
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";", 1)[0], 16)
            pos = nl + 2
            if size == 0:
                self.done = True
            self._remaining = size
        self._buf = buf[pos:]
        return b"".join(out)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (q in 0..100); nan when empty."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]


class Phase:
    """One batch of published events (tag, n of them) and what the clients saw of it."""

    def __init__(self, tag: str, n: int, clients: Sequence[Client]) -> None:
        self.tag, self.n = tag, n
        self.clients = list(clients)
        self.latencies: list[float] = []  # publish to arrival
        self.read_latencies: list[float] = []  # publish to the moment this process read it
        self.delivered = self.dup = self.ooo = self.stray = self.bad = 0
        self.complete = 0  # clients that have all n events
        self.first_at = self.last_at = 0.0
        self.all_done = asyncio.Event()
        self.expect = len(self.clients)  # clients that must complete; more may join (reconnects)
        for client in self.clients:
            client.start_phase(self)
        if n == 0 or not self.clients:
            self.all_done.set()

    def add(self, client: Client) -> None:
        self.clients.append(client)
        client.start_phase(self)
        if self.n:  # a phase of no events is done whoever joins
            self.all_done.clear()

    async def wait(self, timeout: float) -> bool:
        """Until every client has every event, or ``timeout`` seconds; True if all arrived."""
        try:
            await asyncio.wait_for(self.all_done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def summary(self, start: float | None = None) -> dict:
        """Counts and latency percentiles; an event never received counts as an infinite latency."""
        expected = self.n * len(self.clients)
        lost = expected - self.delivered
        lat = sorted(self.latencies)
        with_lost = lat + [math.inf] * lost
        span = (self.last_at - (start or self.first_at)) if self.delivered else 0.0
        return {
            "clients": len(self.clients),
            "events": self.n,
            "expected": expected,
            "delivered": self.delivered,
            "lost": lost,
            "duplicated": self.dup,
            "out_of_order": self.ooo,
            "stray": self.stray,
            "malformed": self.bad,
            "complete_clients": self.complete,
            "latency_ms": {
                name: _ms(percentile(with_lost, q)) for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
            },
            "received_latency_ms": {"p50": _ms(percentile(lat, 50)), "p99": _ms(percentile(lat, 99))},
            "span_s": span,
            "deliveries_per_s": self.delivered / span if span > 0 else 0.0,
        }


def _ms(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return math.inf if math.isinf(seconds) else round(seconds * 1000, 2)


class Client(asyncio.Protocol):
    """One SSE connection: the request, the response head, the body, the events."""

    def __init__(self, gen: LoadGen, path: str, last_event_id: str | None = None) -> None:
        self.gen, self.path, self.request_last_id = gen, path, last_event_id
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[int] = gen.loop.create_future()
        self.head = b""
        self.status = 0
        self.chunked: ChunkedDecoder | None = None
        self.parser = SSEParser(self.on_event)
        self.closing = False
        self.closed = False
        self.events = 0
        self.phase: Phase | None = None
        self.seen = bytearray()
        self.unique = self.last_seq = self.dup = self.ooo = self.stray = 0
        self.done_at = 0.0
        if gen.join_phase is not None:
            gen.join_phase.add(self)

    def start_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.seen = bytearray(phase.n)
        self.unique = self.dup = self.ooo = self.stray = 0
        self.last_seq = -1
        self.done_at = 0.0

    def request(self) -> bytes:
        extra = f"Last-Event-ID: {self.request_last_id}\r\n" if self.request_last_id else ""
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.gen.host_header}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n{extra}\r\n"
        ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.gen.now = self.gen.read_at = time.time()
        self.received(data)

    def received(self, data: bytes) -> None:
        """Bytes of the response; ``gen.now`` is when they arrived, ``gen.read_at`` when they were read."""
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if b"\r\ntransfer-encoding: chunked" in head.lower():
                self.chunked = ChunkedDecoder()
            if not self.ready.done():
                self.ready.set_result(self.status)
            if self.status != 200:
                self.close()
                return
        if self.chunked is not None:
            if self._whole_chunk(data):
                return
            data = self.chunked.feed(data)
            if self.chunked.done and not self.closing:
                self.gen.ended += 1
                self.close()
        if data:
            self.parser.feed(data)

    def _whole_chunk(self, data: bytes) -> bool:
        """Events that came as exactly one chunk of whole LF-ended events, parsed in one pass (True).

        The usual case, and the load generator's own CPU competes with the servers it
        measures: this is about three times cheaper than the general path, which takes
        everything else (split chunks and events, CR line ends, unknown fields) and
        gives the same results.
        """
        chunked, parser = self.chunked, self.parser
        if chunked._buf or chunked._remaining or chunked._crlf or chunked.done:
            return False
        if parser._buf or parser._cr_pending or parser._bom_pending or parser._data or parser._type:
            return False
        nl = data.find(b"\r\n")
        if nl <= 0 or nl > 8 or data[-2:] != b"\r\n" or data[-4:-2] != b"\n\n" or b"\r" in data[nl + 2 : -2]:
            return False
        try:
            size = int(data[:nl], 16)
        except ValueError:
            return False
        if size == 0 or len(data) != nl + 4 + size:
            return False
        blocks = data[nl + 2 : -4].split(b"\n\n")
        parsed = []
        for block in blocks:
            event_id, event_type, lines, comments = None, "", [], 0
            for raw in block.split(b"\n"):
                if raw[:6] == b"data: ":
                    lines.append(raw[6:])
                elif raw[:4] == b"id: " and b"\0" not in raw:
                    event_id = raw[4:]
                elif raw[:7] == b"event: ":
                    event_type = raw[7:].decode("utf-8", "replace")
                elif raw[:1] == b":":
                    comments += 1
                else:
                    return False  # anything else: the general path, from this chunk's start
            parsed.append((event_id, event_type, lines, comments))
        for event_id, event_type, lines, comments in parsed:
            parser.comments += comments
            if event_id is not None:
                parser._id = event_id.decode("utf-8", "replace")
            parser.last_event_id = parser._id
            if lines:
                data_text = b"\n".join(lines).decode("utf-8", "replace")
                self.on_event(event_type or "message", data_text, parser.last_event_id)
        return True

    def on_event(self, event_type: str, data: str, event_id: str) -> None:
        self.events += 1
        phase = self.phase
        try:
            fields = json.loads(data)
            tag, seq, sent = fields["p"], fields["s"], fields["t"]
        except (ValueError, KeyError, TypeError):
            if phase is not None:
                phase.bad += 1
            return
        if phase is None or tag != phase.tag:
            self.stray += 1
            if phase is not None:
                phase.stray += 1
            return
        if not 0 <= seq < phase.n:
            phase.bad += 1
            return
        if self.seen[seq]:
            self.dup += 1
            phase.dup += 1
            return
        self.seen[seq] = 1
        if seq < self.last_seq:
            self.ooo += 1
            phase.ooo += 1
        self.last_seq = seq
        now = self.gen.now
        phase.latencies.append(now - sent)
        phase.read_latencies.append(self.gen.read_at - sent)
        phase.delivered += 1
        if not phase.first_at:
            phase.first_at = now
        phase.last_at = now
        self.unique += 1
        if self.unique == phase.n:
            self.done_at = now
            phase.complete += 1
            if phase.complete >= phase.expect:
                phase.all_done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_result(0)  # closed before the response head
            if isinstance(exc, ConnectionResetError):
                self.gen.resets += 1
        elif not self.closing:
            self.gen.dropped += 1
            if isinstance(exc, ConnectionResetError):
                self.gen.resets += 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


# Linux's values; Python names the first from 3.12 and the second not at all.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
STAMP = struct.Struct("@qq")  # struct timespec, as SO_TIMESTAMPNS hands it over
STAMP_SPACE = socket.CMSG_SPACE(STAMP.size)


class SocketClient(Client):
    """The same client on a bare non-blocking socket, with the kernel's arrival time of each read.

    For the capacity scenario, where one process holds 14,000 clients and every microsecond it
    spends is taken from the servers it measures on the same two cores: no transport, no
    connect task, one timer per connect. And where a browser has the bytes when they reach its
    socket, this process reads 14,000 sockets one after another; the kernel's receive time
    (``SO_TIMESTAMPNS``) keeps that queue out of the latency, and ``read_at`` keeps it visible.
    """

    def __init__(self, gen: LoadGen, path: str, last_event_id: str | None = None) -> None:
        super().__init__(gen, path, last_event_id)
        self.sock: socket.socket | None = None
        self.source: str | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self, host: str, port: int, source: str | None, timeout: float) -> None:
        """Connect without waiting: ``ready`` gets the status, or the connect's error or TimeoutError."""
        loop = self.gen.loop
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.source = source
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if source:
                # The port is picked at connect(), for the whole 4-tuple: cheaper than bind()'s search.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            code = sock.connect_ex((host, port))
        except OSError as exc:
            self._failed(exc)
            return
        if code not in (0, errno.EINPROGRESS):
            self._failed(OSError(code, os.strerror(code)))
            return
        self.timer = loop.call_later(timeout, self._timed_out)
        loop.add_writer(sock.fileno(), self._writable)

    def _writable(self) -> None:
        sock = self.sock
        assert sock is not None
        self.gen.loop.remove_writer(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._failed(OSError(code, os.strerror(code)))
            return
        try:
            sock.send(self.request())  # a few hundred bytes into an empty send buffer: all of it
        except OSError as exc:
            self._failed(exc)
            return
        self.gen.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        assert sock is not None
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(65536, STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        gen = self.gen
        gen.read_at = time.time()
        if ancillary:
            # A read of several arrivals has the last one's time: late, never early, for the others.
            seconds, nanoseconds = STAMP.unpack(ancillary[0][2])
            gen.now = seconds + nanoseconds * 1e-9
        else:
            gen.now = gen.read_at
        try:
            self.received(data)
        except ValueError as exc:  # a malformed body: the stream is lost, as asyncio's transport would have it
            self._lost(exc)
            return
        if self.timer is not None and self.ready.done():
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if not self.ready.done():
            self.ready.set_exception(TimeoutError())

    def _failed(self, exc: OSError) -> None:
        self._shut()
        if not self.ready.done():
            self.ready.set_exception(exc)

    def _lost(self, exc: Exception | None) -> None:
        self._shut()
        self.connection_lost(exc)

    def _shut(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock, self.sock = self.sock, None
        if sock is not None:
            loop = self.gen.loop
            loop.remove_reader(sock.fileno())
            loop.remove_writer(sock.fileno())
            sock.close()

    def close(self) -> None:
        self.closing = True
        if self.sock is not None:
            self._lost(None)


class LoadGen:
    """Opens, holds and closes SSE clients against one server; counts failures.

    ``raw``: ``SocketClient``s (arrival times from the kernel) instead of asyncio transports.
    """

    def __init__(self, host: str, port: int, raw: bool = False) -> None:
        self.host, self.port, self.raw = host, port, raw
        self.host_header = f"{host}:{port}"
        self.loop = asyncio.get_running_loop()
        self.now = self.read_at = time.time()
        self.resets = 0  # established connections reset by the server
        self.dropped = 0  # established connections the server closed
        self.ended = 0  # responses the server finished (last chunk)
        self.errors: collections.Counter[str] = collections.Counter()  # failed connects, by cause
        self.join_phase: Phase | None = None  # new clients join this phase (a reconnect storm)

    async def _open(
        self, path: str, last_event_id: str | None, timeout: float, source: str | None = None
    ) -> tuple[Client | None, float]:
        started = time.perf_counter()
        # A source address of its own (any 127.x.y.z) lifts the ~28,000 ephemeral ports per source.
        client: Client
        try:
            if self.raw:
                client = SocketClient(self, path, last_event_id)
                client.start(self.host, self.port, source, timeout)
                status = await client.ready
            else:
                client = Client(self, path, last_event_id)
                local = (source, 0) if source else None
                connecting = self.loop.create_connection(lambda: client, self.host, self.port, local_addr=local)
                await asyncio.wait_for(connecting, timeout)
                status = await asyncio.wait_for(asyncio.shield(client.ready), timeout)
        except (OSError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            if isinstance(exc, ConnectionResetError):
                self.resets += 1
            client.close()
            return None, time.perf_counter() - started
        if status != 200:
            self.errors[f"HTTP {status}" if status else "closed before the response"] += 1
            client.close()
            return None, time.perf_counter() - started
        return client, time.perf_counter() - started

    async def connect(
        self,
        n: int,
        path: str | Callable[[int], str],
        last_event_ids: Sequence[str | None] | None = None,
        concurrency: int | None = 1000,
        timeout: float = 30.0,
    ) -> tuple[list[Client], list[float]]:
        """Open ``n`` clients (at most ``concurrency`` connecting at once; None: all at once).

        Returns the clients that got a 200 response head, and every connect time (seconds,
        from connect() to the response head), failed ones included.
        """
        gate = asyncio.Semaphore(concurrency) if concurrency else None

        async def one(i: int) -> tuple[Client | None, float]:
            target = path(i) if callable(path) else path
            last_id = last_event_ids[i] if last_event_ids else None
            if gate is None:
                return await self._open(target, last_id, timeout)
            async with gate:
                return await self._open(target, last_id, timeout)

        results = await asyncio.gather(*(one(i) for i in range(n)))
        clients = [c for c, _ in results if c is not None]
        return clients, [t for _, t in results]

    @staticmethod
    async def close(clients: Sequence[Client], settle: float = 0.0) -> None:
        for client in clients:
            client.close()
        if settle:
            await asyncio.sleep(settle)


def install_uvloop() -> bool:
    """Use uvloop when it is installed: the client is CPU-bound at high delivery rates."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
