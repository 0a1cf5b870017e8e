"""Daphne's server reaps connections when they end (sse/transports/daphne_server.py).

Daphne's own Server class, driven as Daphne drives it, in a process of its own:
importing ``daphne.server`` installs Twisted's asyncio reactor, which must not leak
into the other tests.
"""

import asyncio
import functools
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sse.transports.daphne_server import Inbox

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, logging, sys, tracemalloc

    import django
    django.setup()
    from daphne import server as daphne_server
    from daphne.http_protocol import WebRequest
    from twisted.internet import reactor
    from sse.transports import daphne_server as reaping

    logs = []
    class Keep(logging.Handler):
        def emit(self, record):
            logs.append((record.name, record.getMessage()))
    for name in ("daphne.server", "sse"):
        logging.getLogger(name).addHandler(Keep())
        logging.getLogger(name).propagate = False

    if sys.argv[1] == "on":
        assert reaping.install() and reaping.install()  # the second call changes nothing

    class Protocol:
        checks = 0
        def __init__(self):
            self.exceptions = []
        def handle_exception(self, exc):
            self.exceptions.append(str(exc))
        def check_timeouts(self):
            self.checks += 1

    class HTTP(WebRequest):
        checks = 0
        def __init__(self):
            pass  # no channel: only the server's bookkeeping is exercised
        def check_timeouts(self):
            self.checks += 1

    async def app(scope, receive, send):
        if scope["path"] == "/raise":
            raise ValueError("boom")
        if scope["path"] == "/done":
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        if scope["path"] == "/stubborn":
            await asyncio.sleep(60)  # ignores the disconnect: the close timeout cancels it
        if scope["path"] == "/slow-cleanup":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)  # still cleaning up when the next sweep comes
                cleaned.append(True)
                raise

    cleaned = []

    async def ticks(n=3):
        for _ in range(n):
            await asyncio.sleep(0)

    async def main():
        # Endpoints are only parsed by run(), which this test does not call.
        server = daphne_server.Server(app, ["tcp:port=0"], application_close_timeout=0.3)
        server.connections = {}  # as run() sets it
        out = {}

        def open_(path, protocol=None):
            protocol = protocol or Protocol()
            server.protocol_connected(protocol)
            queue = server.create_application(protocol, {"type": "http", "path": path})
            return protocol, queue

        # A stream: the client leaves, the application ends on http.disconnect.
        p, queue = open_("/stream")
        await ticks()
        server.protocol_disconnected(p)
        queue.put_nowait({"type": "http.disconnect"})
        await ticks()
        out["stream_reaped"] = p not in server.connections
        # Its close-timeout timer is gone with it: it would hold the connection's objects.
        out["timers_left"] = len([c for c in reactor.getDelayedCalls() if c.active()])

        # The application ends first, the connection later (a finished response).
        p, _ = open_("/done")
        await ticks()
        out["done_kept_while_connected"] = p in server.connections
        server.protocol_disconnected(p)
        server.protocol_disconnected(p)  # Daphne may say it twice (finish, then connectionLost)
        out["done_reaped"] = p not in server.connections

        # An application that ignores the disconnect is cancelled after the close timeout.
        p, queue = open_("/stubborn")
        await ticks()
        server.protocol_disconnected(p)
        queue.put_nowait({"type": "http.disconnect"})
        await asyncio.sleep(0.1)
        out["stubborn_waits"] = p in server.connections
        await asyncio.sleep(0.5)
        out["stubborn_reaped"] = p not in server.connections
        out["stubborn_warned"] = [n for n, m in logs if "took too long to shut down" in m] == ["daphne.server"]

        # Cancelled and cleaning up: a sweep in the meantime neither warns again nor cuts the cleanup short.
        p, queue = open_("/slow-cleanup")
        await ticks()
        server.protocol_disconnected(p)
        queue.put_nowait({"type": "http.disconnect"})
        await asyncio.sleep(0.4)
        server.application_checker()
        await asyncio.sleep(0.5)
        out["cleanup_warned_once"] = len([m for _, m in logs if "took too long to shut down" in m]) == 2
        out["cleanup_finished"] = cleaned == [True]
        out["cleanup_reaped"] = p not in server.connections

        # An application that raises while connected: logged, and the protocol told.
        p, _ = open_("/raise")
        await ticks()
        out["raise_logged"] = ("daphne.server", "Exception inside application: boom") in logs
        out["raise_told"] = p.exceptions == ["boom"]
        server.protocol_disconnected(p)
        out["raise_reaped"] = p not in server.connections

        # Timeouts: without --http-timeout only non-HTTP connections are checked.
        ws, http = Protocol(), HTTP()
        server.protocol_connected(ws)
        server.protocol_connected(http)
        server.timeout_checker()
        out["checked_without_http_timeout"] = [ws.checks, http.checks]
        server.http_timeout = 60
        server.timeout_checker()
        out["checked_with_http_timeout"] = [ws.checks, http.checks]

        # What 200 open streams keep, each waiting for its next message.
        opened = []
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            opened.append(open_("/stream"))
        await ticks()
        out["bytes_per_stream"] = (tracemalloc.get_traced_memory()[0] - before) // 200
        tracemalloc.stop()
        # Each gets its messages in order, then ends.
        for p, queue in opened:
            queue.put_nowait({"type": "http.request"})
            queue.put_nowait({"type": "http.disconnect"})
            server.protocol_disconnected(p)
        await ticks(5)
        out["streams_ended"] = sum(p not in server.connections for p, _ in opened)
        print(json.dumps(out))

    daphne_server.twisted_loop.run_until_complete(main())
    """
)


@functools.cache
def run(mode: str) -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.test_settings"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_connections_are_reaped_when_they_end_not_by_a_sweep():
    seen = dict(run("on"))
    seen.pop("bytes_per_stream")
    assert seen == {
        "stream_reaped": True,
        "timers_left": 0,
        "done_kept_while_connected": True,
        "done_reaped": True,
        "stubborn_waits": True,
        "stubborn_reaped": True,
        "stubborn_warned": True,
        "cleanup_warned_once": True,
        "cleanup_finished": True,
        "cleanup_reaped": True,
        "raise_logged": True,
        "raise_told": True,
        "raise_reaped": True,
        "checked_without_http_timeout": [1, 0],
        "checked_with_http_timeout": [2, 1],
        "streams_ended": 200,
    }


def test_without_it_daphne_leaves_them_to_its_once_a_second_sweep():
    # The control: Daphne's own Server keeps every ended connection until its sweep.
    seen = run("off")
    assert not seen["stream_reaped"] and not seen["done_reaped"] and not seen["stubborn_reaped"]
    assert seen["checked_without_http_timeout"] == [1, 1]


def test_an_open_stream_waits_for_its_messages_without_daphnes_queue():
    # Daphne's asyncio.Queue per connection is four deques (~3 KB) kept for as long as a stream is open.
    ours, daphnes = run("on")["bytes_per_stream"], run("off")["bytes_per_stream"]
    assert ours <= daphnes - 2_000, (ours, daphnes)


async def _inbox_order_and_wakeups() -> None:
    inbox = Inbox()
    assert inbox and inbox.empty() and inbox.qsize() == 0  # Daphne tests `if self.application_queue:`
    inbox.put_nowait({"n": 1})
    inbox.put_nowait({"n": 2})
    assert [await inbox.get(), await inbox.get()] == [{"n": 1}, {"n": 2}]
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()
    # Waiting getters are served first come, first served, one message each.
    first, second = asyncio.ensure_future(inbox.get()), asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 3})
    await asyncio.sleep(0)
    assert first.done() and not second.done()
    inbox.put_nowait({"n": 4})
    assert [await first, await second] == [{"n": 3}, {"n": 4}]
    # A getter cancelled after it was woken hands its message to the next one.
    woken, waiting = asyncio.ensure_future(inbox.get()), asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 5})
    woken.cancel()
    assert await waiting == {"n": 5}
    assert woken.cancelled()
    # A getter cancelled while waiting leaves nothing behind.
    gone = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert not inbox.waiters
    inbox.put_nowait({"n": 6})
    assert inbox.get_nowait() == {"n": 6}


def test_the_inbox_gives_messages_as_asyncio_queue_does():
    asyncio.run(_inbox_order_and_wakeups())


async def _inbox_watch() -> None:
    inbox = Inbox()
    watched = inbox.watch()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not watched.done()
    inbox.put_nowait({"type": "http.disconnect"})
    assert watched.done(), "at once, not on the next pass of the loop"
    assert await getter == {"type": "http.disconnect"}, "a getter still gets the message"
    inbox.put_nowait({"n": 2})
    assert inbox.watch().done(), "a message already waiting"
    assert inbox.get_nowait() == {"n": 2}, "and it stays for get()"
    cancelled = inbox.watch()
    cancelled.cancel()
    inbox.put_nowait({"n": 3})  # nothing to set: no InvalidStateError
    assert inbox.get_nowait() == {"n": 3}


def test_a_watch_says_a_message_waits_and_leaves_it_for_get():
    asyncio.run(_inbox_watch())
