"""Redis in trouble, per mode: unreachable, full (maxmemory), killed; and what persistence keeps.

Every Redis here is a real redis-server on a free port that the test starts itself
(or a port with nothing behind it, or a listener that never answers). Daphne runs
as deployed: DEBUG off, the unit's endpoint flags (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer, free_port, wait_for_port
from tests.test_e2e import connect, send_event


def get(daphne, path: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes, float]:
    """One plain GET: status, headers, the body's first bytes, and how long the status took."""
    conn = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        elapsed = time.monotonic() - started
        headers = {k.lower(): v for k, v in response.getheaders()}
        body = response.read() if response.status != 200 else response.read1(200)
        return response.status, headers, body, elapsed
    finally:
        conn.close()


def health(daphne) -> tuple[int, dict]:
    status, _, body, _ = get(daphne, "/health/")
    return status, json.loads(body)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose listener never accepts: the kernel completes the TCP handshake for
    the backlog, and then nothing ever answers (a hung or blackholed Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def closed_port() -> int:
    return free_port()  # nothing listens there: connections are refused at once


@pytest.mark.parametrize("where", ["refused", "silent"])
def test_unreachable_redis_gets_a_503_within_about_a_second(project, start_daphne, where):
    with contextlib.ExitStack() as stack:
        port = closed_port() if where == "refused" else stack.enter_context(silent_listener())
        daphne = start_daphne(REDIS_URL=f"redis://127.0.0.1:{port}/0")
        for attempt in range(3):  # the first request, and those while the outage is known
            status, headers, body, elapsed = get(daphne, f"/sse/down-{attempt}/")
            assert status == 503, body
            assert headers.get("retry-after") == "5"
            # SSE_REDIS_CONNECT_TIMEOUT is 1 s; it used to be ~10 s. Generous for a loaded machine.
            assert elapsed < 4, f"{where}: the 503 took {elapsed:.1f}s"
        status, body = health(daphne)
        assert status == 503 and body["redis"] == "unavailable", body
        if project.mode == "channels":
            assert body["channel_layer"] == "unavailable", body
        daphne.stop()
    assert "Traceback" not in daphne.output()


def redis_cli(port: int, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def used_memory(port: int) -> int:
    info = redis_cli(port, "INFO", "memory").splitlines()
    return int(next(line for line in info if line.startswith("used_memory:")).split(":")[1])


def fill_to_maxmemory(port: int) -> None:
    """Write some data, then cap Redis just under what it uses, under noeviction: it refuses writes.

    (Filling up to a cap is not stable: the writer's own buffers are freed when it leaves.)"""
    redis_cli(port, stdin="".join(f"SET filler:{i} {'x' * 10_000}\n" for i in range(100)))
    redis_cli(port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_cli(port, "CONFIG", "SET", "maxmemory", str(used_memory(port) - 200_000))
    assert "OOM" in redis_cli(port, "SET", "filler:last", "x"), "Redis is not at maxmemory"


def test_redis_at_maxmemory_fails_publishing_clearly_and_streams_get_503_not_500(project, start_daphne, tmp_path):
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        daphne = start_daphne(REDIS_URL=redis.url)
        before = send_event(project, redis.url, "full-open", "n", 1)
        open_stream = connect(daphne, "full-open", **{"Last-Event-ID": before})
        fill_to_maxmemory(redis.port)

        down = project.manage(
            "send_event",
            "full",
            "--data",
            "1",
            env=project.env(REDIS_URL=redis.url),
            check=False,
        )
        assert down.returncode != 0 and "Traceback" not in down.stderr, down.stderr
        assert "out of memory (maxmemory" in down.stderr, down.stderr

        status, headers, body, _ = get(daphne, "/sse/full-new/")
        if project.mode == "channels":
            # A new stream must join the channel layer's group, a write Redis refuses.
            assert status == 503 and headers.get("retry-after") == "5", (status, body)
            status, body = health(daphne)
            assert status == 503 and body["channel_layer"] == "unavailable" and body["redis"] == "ok", body
        else:
            # async_view: a stream only reads (SUBSCRIBE, XRANGE), which a full Redis still serves.
            assert status == 200, body
            status, body = health(daphne)
            assert status == 200 and body["redis"] == "ok", body
        assert not open_stream.closed, "open streams stay open"

        redis_cli(redis.port, "CONFIG", "SET", "maxmemory", "0")
        after = send_event(project, redis.url, "full-open", "n", 2)
        assert [e.id for e in open_stream.wait_events(1)] == [after]
        assert get(daphne, "/sse/full-new/")[0] == 200
        assert health(daphne)[0] == 200
        open_stream.close()
    finally:
        redis.stop()


PUBLISH_SCRIPT = """
import sys, django
django.setup()
from sse import publish
for i in range(int(sys.argv[2])):
    print(publish(sys.argv[1], "n", i), flush=True)
"""


class ConfiguredRedis(RedisServer):
    """redis-server run with the project's deploy/redis snippet, and ``overrides`` on top."""

    def __init__(self, workdir: Path, snippet: Path, overrides: list[str]) -> None:
        super().__init__(workdir)
        self.snippet, self.overrides = snippet, overrides

    def start(self) -> None:
        cmd = [
            "redis-server",
            str(self.snippet),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
        ]
        cmd += ["--dir", str(self.workdir), *self.overrides]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)
        # Loading the append-only file takes a moment after the port opens.
        deadline = time.monotonic() + 30
        while "loading:0" not in redis_cli(self.port, "INFO", "persistence"):
            assert time.monotonic() < deadline, "Redis did not finish loading"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None


# What each setting keeps through `kill -9` of redis-server, as deploy/README.md states it.
PERSISTENCE = {
    "appendfsync-always": (["--appendfsync", "always"], "everything"),
    "appendfsync-everysec": ([], "everything"),  # the snippet's own setting
    # The distribution's default: RDB snapshots at most every 60 s, no append-only file.
    "no-aof": (["--appendonly", "no", "--save", "3600 1 300 100 60 10000"], "nothing"),
}


@pytest.mark.parametrize("setting", PERSISTENCE)
def test_what_redis_persistence_keeps_through_sigkill(project, start_daphne, tmp_path, setting):
    overrides, kept = PERSISTENCE[setting]
    snippet = project.path / "deploy" / "redis" / f"{project.path.name}.conf"
    config = redis_cli_config(snippet)
    assert config == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }
    redis = ConfiguredRedis(tmp_path, snippet, overrides)
    redis.start()
    try:
        daphne = start_daphne(REDIS_URL=redis.url)
        env = project.env(REDIS_URL=redis.url)
        staying = connect(daphne, "durable")
        ids = project.run("-c", PUBLISH_SCRIPT, "durable", "40", env=env).stdout.split()
        assert [e.id for e in staying.wait_events(40)] == ids
        away_since = ids[9]  # a client that left after the 10th event

        redis.kill()
        time.sleep(1)
        redis.start()
        log = redis_cli(
            redis.port,
            "XRANGE",
            f"{project.path.name}:sse:durable",
            "-",
            "+",
            "COUNT",
            "100",
        )

        if kept == "everything":
            assert ids[-1] in log
        else:
            assert ids[-1] not in log, "the log died with Redis"
            # The open stream's position is gone from the log: its process ends it once
            # resubscribed, so that the client's reconnect is told (reset) rather than
            # silently missing events.
            assert staying.wait(lambda c: c.closed, 15), "the open stream was not ended"
            staying = connect(daphne, "durable", **{"Last-Event-ID": ids[-1]})
            assert staying.wait_events(1)[0].type == "reset"

        back = connect(daphne, "durable", **{"Last-Event-ID": away_since})
        if kept == "everything":
            assert [e.id for e in back.wait_events(30)] == ids[10:], "replay across the crash, nothing lost"
        else:
            (reset,) = back.wait_events(1)
            assert reset.type == "reset" and json.loads(reset.data)["last_event_id"] == away_since
        time.sleep(3)  # the processes have resubscribed and caught up
        seen = [(client, len(client.events)) for client in (back, staying)]
        after = project.run("-c", PUBLISH_SCRIPT, "durable", "1", env=env).stdout.split()
        for client, count in seen:
            assert client.wait_events(count + 1)[-1].id == after[0]
            assert not client.closed
        if kept == "everything":
            assert [e.id for e in staying.events] == [*ids, *after], "the open stream lost nothing either"
            assert not any(e.type == "reset" for e in back.events + staying.events)
        back.close()
        staying.close()
    finally:
        redis.stop()


def redis_cli_config(snippet: Path) -> dict[str, str]:
    """The snippet's directives (comments and blank lines skipped)."""
    lines = [line.split(None, 1) for line in snippet.read_text().splitlines()]
    return {words[0]: words[1].strip() for words in lines if words and not words[0].startswith("#")}
