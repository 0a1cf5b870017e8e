"""Redis in trouble, per mode: unreachable, full (maxmemory), killed; and what persistence keeps.

Every Redis here is a real redis-server on a free port that the test starts itself
(or a port with nothing behind it, or a listener that never answers). Daphne runs
as deployed: DEBUG off, the unit's endpoint flags (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import RedisServer, free_port
from tests.test_e2e import connect, send_event


def get(
    daphne, path: str, timeout: float = 60
) -> tuple[int, dict[str, str], bytes, float]:
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
def test_unreachable_redis_gets_a_503_within_about_a_second(
    project, start_daphne, where
):
    with contextlib.ExitStack() as stack:
        port = (
            closed_port()
            if where == "refused"
            else stack.enter_context(silent_listener())
        )
        daphne = start_daphne(REDIS_URL=f"redis://127.0.0.1:{port}/0")
        for attempt in range(
            3
        ):  # the first request, and those while the outage is known
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


def fill_to_maxmemory(port: int, headroom: int = 2_000_000) -> None:
    """Cap Redis a little above what it uses, under noeviction, and write until it refuses."""
    used = int(
        next(
            line
            for line in redis_cli(port, "INFO", "memory").splitlines()
            if line.startswith("used_memory:")
        )[12:]
    )
    redis_cli(port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_cli(port, "CONFIG", "SET", "maxmemory", str(used + headroom))
    redis_cli(
        port,
        stdin="".join(
            f"SET filler:{i} {'x' * 10_000}\n" for i in range(headroom // 5_000)
        ),
    )
    assert "OOM" in redis_cli(port, "SET", "filler:last", "x"), (
        "Redis is not at maxmemory"
    )


def test_redis_at_maxmemory_fails_publishing_clearly_and_streams_get_503_not_500(
    project, start_daphne, tmp_path
):
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
            assert (
                status == 503
                and body["channel_layer"] == "unavailable"
                and body["redis"] == "ok"
            ), body
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
