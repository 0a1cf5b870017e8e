"""The benchmark cannot rot: its parser against tricky streams, and a small run of it end to end."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import math
import random
import re
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from tests.conftest import MODES, ROOT, uv
from tests.sse_client import SSEParser as ReferenceParser

sys.path.insert(0, str(ROOT / "bench"))
loadgen = importlib.import_module("loadgen")  # bench/ is not a package: it runs as scripts
report = importlib.import_module("report")


def parse(*chunks: bytes) -> tuple[list[tuple[str, str, str]], loadgen.SSEParser]:
    events: list[tuple[str, str, str]] = []
    parser = loadgen.SSEParser(lambda *event: events.append(event))
    for chunk in chunks:
        parser.feed(chunk)
    return events, parser


def reference(raw: bytes) -> list[tuple[str, str, str]]:
    parser = ReferenceParser()
    parser.feed(raw)
    return [(e.type, e.data, e.id) for e in parser.events]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_every_line_end(end: bytes) -> None:
    raw = end.join([b"retry: 1500", b"", b"id: 7", b"event: tick", b"data: a", b"data: b", b"", b""])
    events, parser = parse(raw)
    assert events == [("tick", "a\nb", "7")]
    assert parser.retry == 1500


def test_crlf_and_bom_split_across_chunks() -> None:
    events, _ = parse(b"\xef", b"\xbb", b"\xbfdata: x\r", b"\n\r", b"\ndata: y\r", b"\r")
    assert events == [("message", "x", ""), ("message", "y", "")]


def test_only_the_first_bom_is_stripped() -> None:
    events, _ = parse(b"\xef\xbb\xbfdata: 1\n\n\xef\xbb\xbfdata: 2\n\ndata: 3\n\n")
    assert [e[1] for e in events] == ["1", "3"]  # "\ufeffdata" is an unknown field


def test_fields_by_the_spec() -> None:
    raw = (
        b": a comment\n"
        b"data\n"  # no colon: the whole line is the name, the value is empty
        b"data:no space\n"
        b"data:  two spaces\n\n"
        b"event: only a type\n\n"  # no data: nothing dispatched, the type is reset
        b"id: 1\0x\ndata: kept id\n\n"  # an id with NUL is ignored
        b"id\ndata: id reset\n\n"
        b"retry: 12a\nretry: 20\nunknown: x\ndata: \xff\n\n"
        b"data: incomplete at the end\n"
    )
    events, parser = parse(raw)
    assert events == [
        ("message", "\nno space\n two spaces", ""),
        ("message", "kept id", ""),
        ("message", "id reset", ""),
        ("message", "\ufffd", ""),
    ]
    assert parser.retry == 20
    assert parser.comments == 1


def test_id_only_block_sets_the_reconnect_id() -> None:
    events, parser = parse(b"id: 5\ndata: x\n\nid: 9\n\n")
    assert events == [("message", "x", "5")]
    assert parser.last_event_id == "9"


def test_any_split_matches_the_reference_parser() -> None:
    rng = random.Random(5)
    pieces = [b"data: ", b"x", b"\xc3\xa9", b"\n", b"\r\n", b"\r", b": c", b"id: 3", b"event: e", b"retry: 9"]
    for _ in range(300):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.randint(0, 6))))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        # The stream goes on after raw: a final CR is a line end for both parsers then.
        events, _ = parse(*chunks, b"\n\n")
        assert events == reference(raw + b"\n\n"), (raw, cuts)


def test_chunked_decoding_with_extensions_and_any_split() -> None:
    body = b"4;ext=1\r\nabcd\r\n1\r\n\n\r\nA\r\n0123456789\r\n0\r\n\r\n"
    for size in (1, 2, 3, 7, len(body)):
        decoder = loadgen.ChunkedDecoder()
        out = b"".join(decoder.feed(body[i : i + size]) for i in range(0, len(body), size))
        assert out == b"abcd\n0123456789"
        assert decoder.done


def test_the_whole_chunk_fast_path_sees_what_the_general_path_sees() -> None:
    loop = asyncio.new_event_loop()

    class Recorder(loadgen.Client):
        def __init__(self, fast: bool) -> None:
            super().__init__(SimpleNamespace(loop=loop, join_phase=None, now=0.0), "/")
            self.status, self.chunked, self.got, self.fast, self.taken = 200, loadgen.ChunkedDecoder(), [], fast, 0

        def _whole_chunk(self, data: bytes) -> bool:
            taken = self.fast and super()._whole_chunk(data)
            self.taken += taken
            return taken

        def on_event(self, *event: str) -> None:
            self.got.append(event)

    rng = random.Random(7)
    lines = [b"data: x", b"data: ", b"data:y", b"id: 4", b"id: 1\0", b"id", b"event: e", b": ping", b"retry: 9",
             b"data: \xc3\xa9", b"x: 1", b"", b"data: a\rb", b"id: 1732960000000-7"]  # fmt: skip
    clients = Recorder(True), Recorder(False)
    loop.close()  # only for the clients' futures: nothing runs on it
    for _ in range(2000):
        body = b"".join(b"\n".join(rng.choice(lines) for _ in range(rng.randint(1, 4))) + b"\n\n"
                        for _ in range(rng.randint(1, 3)))  # fmt: skip
        frame = b"%x\r\n%s\r\n" % (len(body), body)
        if rng.random() < 0.1:  # sometimes split: the general path, then the fast one again
            cut = rng.randint(1, len(frame) - 1)
            pieces = [frame[:cut], frame[cut:]]
        else:
            pieces = [frame]
        for piece in pieces:
            for client in clients:
                client.data_received(piece)
    fast, general = clients
    assert fast.got == general.got and len(fast.got) > 1000
    assert 100 < fast.taken < 1800 and general.taken == 0  # both paths were taken
    assert fast.parser.last_event_id == general.parser.last_event_id
    assert fast.parser.comments == general.parser.comments
    assert fast.parser.retry == general.parser.retry


class TinySSEServer:
    """A blocking SSE server in a thread: what it sends and when does not depend on the client's loop."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peers: list[str] = []
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []  # answered: send() writes to these
        self.accepted: list[socket.socket] = []  # every one, for close(): a test may end before its answer is counted
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            request = b""
            try:
                while b"\r\n\r\n" not in request:
                    if not (data := conn.recv(4096)):
                        raise ConnectionResetError  # the client left before asking
                    request += data
                self.peers.append(peer[0])
                self.requests.append(request)
                reason = b"OK" if self.status == 200 else b"Unavailable"
                head = b"HTTP/1.1 %d %s\r\nContent-Type: text/event-stream\r\n" % (self.status, reason)
                conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"6\r\n: hi\n\n\r\n")
            except OSError:
                continue  # the client left, or close() ended the test while this one was answered
            self.conns.append(conn)

    def send(self, tag: str, seq: int, event_id: str) -> None:
        body = b'id: %s\ndata: {"p": "%s", "s": %d, "t": %f}\n\n' % (event_id.encode(), tag.encode(), seq, time.time())
        for conn in self.conns:
            conn.sendall(b"%x\r\n%s\r\n" % (len(body), body))

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def test_socket_clients_time_an_event_by_its_arrival_and_keep_the_read_delay_apart() -> None:
    """A process reading thousands of sockets in turn reads some late: that delay is not the server's."""
    server = TinySSEServer()

    async def scenario() -> None:
        gen = loadgen.LoadGen("127.0.0.1", server.port, raw=True)
        opened = [await gen._open("/sse/x/", None, 5, source) for source in ("127.0.0.7", "127.0.0.8")]
        clients = [client for client, _took in opened]
        assert all(isinstance(c, loadgen.SocketClient) for c in clients), gen.errors
        assert sorted(server.peers) == ["127.0.0.7", "127.0.0.8"] == [c.source for c in clients]
        phase = loadgen.Phase("b", 2, clients)
        server.send("b", 0, "1-0")
        time.sleep(0.3)  # the loop is busy elsewhere while the event sits in both sockets
        await asyncio.sleep(0.2)  # read now, alone: a read of several arrivals takes the last one's time
        server.send("b", 1, "1-1")
        assert await phase.wait(5)
        summary = phase.summary()
        assert (summary["delivered"], summary["lost"], summary["duplicated"]) == (4, 0, 0)
        assert max(phase.latencies) < 0.1, phase.latencies  # each arrived at once; the first was read 0.3 s later
        assert sum(1 for lag in phase.read_latencies if lag >= 0.3) == 2, phase.read_latencies
        assert [c.parser.last_event_id for c in clients] == ["1-1", "1-1"]
        assert all(c.parser.comments == 1 for c in clients)
        # A reconnect sends what the browser would, from the same source address.
        again, _ = await gen._open("/sse/x/", clients[0].parser.last_event_id, 5, clients[0].source)
        assert again is not None and b"\r\nLast-Event-ID: 1-1\r\n" in server.requests[-1]
        assert server.peers[-1] == "127.0.0.7"
        # The server ends a stream: counted as dropped, unlike the clients this process closes.
        for client in (*clients, again):
            client.close()
        assert gen.dropped == 0 and all(c.closed for c in clients)

    try:
        asyncio.run(scenario())
    finally:
        server.close()


def test_socket_clients_count_each_failure_by_its_kind() -> None:
    unavailable = TinySSEServer(status=503)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does) but never answers
    closed = socket.create_server(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()

    async def scenario() -> None:
        results = []
        for port, timeout in ((refused_port, 5), (silent.getsockname()[1], 0.3), (unavailable.port, 5)):
            gen = loadgen.LoadGen("127.0.0.1", port, raw=True)
            client, took = await gen._open("/sse/x/", None, timeout, "127.0.0.9")
            results.append((client, dict(gen.errors)))
            if port == silent.getsockname()[1]:
                assert 0.3 <= took < 2
        assert results == [
            (None, {"ConnectionRefusedError": 1}),
            (None, {"TimeoutError": 1}),
            (None, {"HTTP 503": 1}),
        ]
        # A stream the server drops is counted once, and its socket is gone from the loop.
        server = TinySSEServer()
        gen = loadgen.LoadGen("127.0.0.1", server.port, raw=True)
        client, _ = await gen._open("/sse/x/", None, 5)
        assert client is not None
        server.close()
        for _ in range(100):
            if client.closed:
                break
            await asyncio.sleep(0.02)
        assert client.closed and gen.dropped == 1 and client.sock is None

    try:
        asyncio.run(scenario())
    finally:
        unavailable.close()
        silent.close()


def test_parser_keeps_up_with_a_fast_server() -> None:
    event = b'id: 1700000000000-0\nevent: tick\ndata: {"p": "x", "s": 12345, "t": 1700000000.123456}\n\n'
    stream = event * 100_000
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    count = 0

    def on_event(*_: str) -> None:
        nonlocal count
        count += 1

    parser = loadgen.SSEParser(on_event)
    started = time.perf_counter()
    for chunk in chunks:
        parser.feed(chunk)
    rate = count / (time.perf_counter() - started)
    assert count == 100_000
    assert rate > 100_000, f"{rate:.0f} events/s"


def test_ours_over_sse_starlette_is_taken_within_each_run() -> None:
    """Two runs on a machine whose load changed between them: each ratio pairs figures of one run."""
    data: dict = {"config": {"idle_levels": [500, 2000]}, "results": []}
    figures = {  # run: (ours, sse-starlette) for RSS/stream, fan-out p99, max good deliveries/s
        1: ((10, 20), (50, 25), (9000, 3000)),
        2: ((30, 40), (40, math.inf), (12000, 12000)),
    }
    for run, (rss, p99, sat) in figures.items():
        for side, system in enumerate(("ours-channels", "starlette")):
            level = {"level": 2000, "rss_per_stream_kb": rss[side]}
            data["results"] += [
                {"run": run, "system": system, "scenario": "idle", "levels": [level]},
                {"run": run, "system": system, "scenario": "fanout", "latency_ms": {"p99": p99[side]}},
                {"run": run, "system": system, "scenario": "saturation", "max_good_deliveries_per_s": sat[side]},
            ]
    lines = report.peer_table(data, ["ours-channels", "starlette"])
    # RSS: 0.5 and 0.75; p99: 2.0, then 0 (only sse-starlette lost events); deliveries/s: 3.0 and 1.0.
    assert lines[-1] == "| ours, channels mode | 0.62× (0.50–0.75×) | 1.00× (0.00–2.00×) | 2.00× (1.00–3.00×) |"
    assert report.peer_table(data, ["ours-channels"]) == []


@pytest.mark.parametrize("project", [MODES[0]], indirect=True)
def test_bench_smoke(project, tmp_path) -> None:
    """200 clients, 40 events at 20/s through the bench's own driver, ours and sse-starlette: no loss, tables."""
    build = tmp_path / "build"
    (build / f"bake-{project.mode}").mkdir(parents=True)
    (build / f"bake-{project.mode}" / "bench_project").symlink_to(project.path)
    (build / f"venv-ours-{project.mode}").symlink_to(project.venv)
    # The peer's own pinned requirements, as run.sh installs them (uv: a few seconds from its cache).
    venv = build / "venv-starlette"
    uv("venv", "-q", "--seed", "--python", "python3", str(venv), cwd=tmp_path)  # --seed: bench.py asks pip for versions
    requirements = ROOT / "bench" / "starlette" / "requirements.txt"
    uv("pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(requirements), cwd=tmp_path)
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--build", str(build), "--out", str(out)]
    cmd += ["--systems", f"ours-{project.mode},starlette", "--scenarios", "fanout", "--runs", "1"]
    cmd += ["--clients", "200", "--events", "40"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((out / "results.json").read_text())
    assert [r["system"] for r in data["results"]] == [f"ours-{project.mode}", "starlette"]
    for result in data["results"]:
        assert "error" not in result, result
        assert (result["expected"], result["delivered"]) == (8000, 8000), result
        assert result["lost"] == result["duplicated"] == result["out_of_order"] == result["stray"] == 0
        assert result["server_problems"] == [], result
    assert data["machine"]["packages"]["starlette"]["sse-starlette"] == "3.7.0"
    table = (out / "results.md").read_text()
    assert "## 2. Fan-out" in table
    assert "| ours, channels mode | 8,000 / 8,000 | 0 | 0 | 0 |" in table
    assert "| sse-starlette (uvicorn) | 8,000 / 8,000 | 0 | 0 | 0 |" in table
    # Only fan-out ran: the p99 ratio is there, the idle and saturation ones are n/a.
    assert "## Ours ÷ sse-starlette" in table
    assert re.search(r"\| ours, channels mode \| n/a \| [0-9.]+× \| n/a \|", table), table


@pytest.mark.parametrize("project", MODES, indirect=True)
def test_capacity_smoke(project, tmp_path) -> None:
    """The capacity scenario, small: 2,000 streams through the generated nginx site, two unit-started Daphnes."""
    build = tmp_path / "build"
    build.mkdir()
    (build / f"venv-ours-{project.mode}").symlink_to(project.venv)
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "bench" / "capacity.py"), "--build", str(build), "--out", str(out)]
    cmd += ["--systems", f"ours-{project.mode}", "--streams", "2000", "--instances", "2", "--nginx-workers", "2"]
    cmd += ["--rate", "1000", "--hold", "4", "--ticks", "3", "--missed", "5", "--wait", "30"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((out / "capacity.json").read_text())
    [result] = data["results"]
    assert "error" not in result, run.stdout
    streams = 2001  # and the one opened first, so that startup is not measured
    assert result["open"]["opened"] == streams and result["open"]["errors"] == {}, result["open"]
    assert result["held"]["open_now"] == streams and result["held"]["dropped"] == 0
    for phase, events in (("broadcast", 1), ("ticks", 3), ("storm", 5)):
        seen = result[phase]
        assert seen["expected"] == seen["delivered"] == streams * events, (phase, seen)
        assert seen["duplicated"] == seen["out_of_order"] == seen["stray"] == 0, (phase, seen)
        assert seen["ms_to"]["100%"] is not None and seen["read_ms_to"]["100%"] is not None
    assert result["storm"]["open"]["errors"] == {} and result["storm_dropped"]["without_id"] == 0
    assert result["storm"]["all_complete"], result["storm"]
    assert result["nginx_errors"] == {} and result["server_problems"] == []
    assert result["rss_per_stream_kb"]["daphne"] > 0 and result["idle_cpu"]["core_busy_pct"]
    assert result["open_cpu"]["group_pct_of_one_core"]["daphne"] > 0  # the servers did the opening
    # 30 streams per loopback address: the site's limit_conn (32) stayed in force and was not hit.
    assert (
        "limit_conn"
        in (build / f"capacity-{project.mode}-2" / "bench_project" / "deploy" / "nginx")
        .joinpath("bench_project.conf")
        .read_text()
    )
    table = (out / "capacity.md").read_text()
    assert "| streams held after the hold | 2,001 |" in table, table
    assert "| broadcast: 99% read by the load generator |" in table, table
    assert re.search(r"\| storm: CPU of servers / nginx / load generator \| \d+ / \d+ / \d+ % \|", table), table
    if importlib.util.find_spec("matplotlib"):
        assert (out / "capacity.png").stat().st_size > 10_000
