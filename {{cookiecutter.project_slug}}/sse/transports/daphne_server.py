"""Daphne's server: reap connections when they end, not by sweeping all of them every second.

Daphne's ``Server.application_checker`` walks every connection once a second, and
``timeout_checker`` every two, whether anything changed or not. A stream lasts hours,
so with 10,000 open the walk is nearly all of an idle server's CPU: measured with
py-spy and gc.callbacks, it copies 10,000 (connection, details) pairs a second, and
those short-lived tuples set off the garbage collector, whose full passes then visit
every object of every open stream (README, Benchmarks: idle cost).

:func:`install` keeps Daphne's rules and moves them to the moments they can change:
when an application instance finishes (a done callback) and when a client disconnects
(then once more after ``--application-close-timeout``, to cancel an application that
did not stop). The old sweep still runs, once every :data:`SWEEP` seconds, as a net.
``timeout_checker`` skips HTTP connections when Daphne has no ``--http-timeout`` (their
check does nothing then); WebSocket connections keep their pings and timeouts.

Each connection's ASGI ``receive`` reads an :class:`Inbox` instead of Daphne's
``asyncio.Queue``: three deques and an ``Event`` (a fourth) of some 760 bytes each, 3 KB
of every open stream's memory for the one or two messages a stream ever receives.

Like :mod:`sse.transports.daphne`, this reads Daphne internals (:data:`SERVER_INTERNALS`);
a Daphne without them keeps its own sweeps and the server logs one warning.
"""

import asyncio
import logging
import sys
import time
from functools import partial
from typing import Any

log = logging.getLogger("sse")
daphne_log = logging.getLogger("daphne.server")  # what the sweep finds goes where Daphne logs it

SWEEP = 30.0  # seconds between full sweeps, a net for anything no event reached
# Read on the Server: these methods (replaced), and its connections, application_close_timeout and http_timeout.
SERVER_INTERNALS = (
    "protocol_connected",
    "create_application",
    "protocol_disconnected",
    "application_checker",
    "timeout_checker",
    "stop",
)


class Inbox:
    """A connection's ASGI messages, as Daphne's ``asyncio.Queue`` gives them, without its deques.

    What Daphne and an application use of the queue: ``put_nowait()`` from the
    server, ``get()`` from the application (first come, first served, as there),
    and ``qsize()``/``empty()``. Unbounded, as Daphne makes it.
    """

    __slots__ = ("items", "waiters", "watcher")  # one per open connection

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.waiters: list[asyncio.Future[None]] | None = None  # getters waiting, oldest first
        self.watcher: asyncio.Future[None] | None = None

    def put_nowait(self, message: dict[str, Any]) -> None:
        self.items.append(message)
        if self.watcher is not None and not self.watcher.done():
            self.watcher.set_result(None)
        self.wake()

    def watch(self) -> asyncio.Future[None]:
        """A future done when a message is waiting; the message stays for ``get()``.

        For async_view's disconnect listener: a future and a callback where a task
        blocked in ``get()`` took some 10 µs to start and 1 KB while the stream is open.
        """
        self.watcher = asyncio.get_running_loop().create_future()
        if self.items:
            self.watcher.set_result(None)
        return self.watcher

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> dict[str, Any]:
        while not self.items:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                if self.items and not waiter.cancelled():
                    self.wake()  # woken for a message it will not take: the next getter's
                raise
        return self.items.pop(0)

    def get_nowait(self) -> dict[str, Any]:
        if not self.items:
            raise asyncio.QueueEmpty
        return self.items.pop(0)

    def qsize(self) -> int:
        return len(self.items)

    def empty(self) -> bool:
        return not self.items


def timed(server: Any) -> set[Any]:
    """The server's connections whose timeouts are checked without ``--http-timeout``: not HTTP ones."""
    if "sse_timed" not in server.__dict__:
        server.sse_timed = set()
    return server.sse_timed


def reap(server: Any, protocol: Any, overdue: bool = False) -> None:
    """Daphne's ``application_checker`` for one connection (``overdue``: its close timeout has passed)."""
    details = server.connections.get(protocol)
    if details is None:
        return
    disconnected = details.get("disconnected")
    instance = details.get("application_instance")
    if (
        disconnected
        and instance is not None
        and not instance.done()
        and (overdue or time.time() - disconnected > server.application_close_timeout)
    ):
        if instance.cancelling():
            return  # cancelled already and cleaning up: a second cancel would cut its cleanup short
        daphne_log.warning(
            "Application instance %r for connection %s took too long to shut down and was killed.",
            instance,
            repr(protocol),
        )
        instance.cancel()
        return  # reaped by its done callback, once the cancellation has run
    if instance is not None and instance.done():
        try:
            exception = instance.exception()
        except asyncio.CancelledError:
            exception = None
        if isinstance(exception, KeyboardInterrupt):
            server.stop()  # the protocol asks the server to exit (tests)
        elif exception is not None:
            daphne_log.error("Exception inside application: %s", exception, exc_info=exception)
            if not disconnected:
                protocol.handle_exception(exception)
        del details["application_instance"]
        instance = None
    if instance is None and disconnected:
        del server.connections[protocol]
        if (timer := details.get("sse_close_timer")) is not None and timer.active():
            timer.cancel()  # it would hold the connection's objects until the timeout
        timed(server).discard(protocol)


def install() -> bool:
    """Reap Daphne's connections on events (once per process; False where Daphne is not serving)."""
    module = sys.modules.get("daphne.server")
    if module is None:
        return False  # not under Daphne: nothing to change
    server_class = module.Server
    if getattr(server_class, "_sse_reaping", False):
        return True
    missing = [name for name in SERVER_INTERNALS if not hasattr(server_class, name)]
    if missing:
        log.warning("sse: this Daphne has no Server.%s: it keeps sweeping every connection", ", Server.".join(missing))
        return False
    from daphne.http_protocol import WebRequest
    from twisted.internet import reactor

    protocol_connected = server_class.protocol_connected
    protocol_disconnected = server_class.protocol_disconnected

    def connected(self: Any, protocol: Any) -> None:
        protocol_connected(self, protocol)
        if not isinstance(protocol, WebRequest):
            timed(self).add(protocol)  # WebSockets: their pings and handshake timeout

    def create(self: Any, protocol: Any, scope: dict[str, Any]) -> Inbox | None:
        # Daphne's create_application, with an Inbox for its asyncio.Queue.
        assert "application_instance" not in self.connections[protocol]
        inbox = Inbox()
        scope.setdefault("asgi", {"version": "3.0"})
        application = self.application(scope=scope, receive=inbox.get, send=partial(self.handle_reply, protocol))
        if protocol not in self.connections:
            return None
        instance = asyncio.ensure_future(application)
        self.connections[protocol]["application_instance"] = instance
        instance.add_done_callback(lambda _: reap(self, protocol))
        return inbox

    def disconnected(self: Any, protocol: Any) -> None:
        details = self.connections.get(protocol)
        if details is None:
            return  # reaped already: nothing left to mark
        first = "disconnected" not in details
        protocol_disconnected(self, protocol)
        if first:
            reap(self, protocol)
            if protocol in self.connections:  # its application is still running
                timeout = self.application_close_timeout
                details["sse_close_timer"] = reactor.callLater(timeout, reap, self, protocol, True)

    def application_checker(self: Any) -> None:
        for protocol in list(self.connections):
            reap(self, protocol)
        reactor.callLater(SWEEP, self.application_checker)

    def timeout_checker(self: Any) -> None:
        # An HTTP connection's check does something only with --http-timeout.
        for protocol in list(self.connections if self.http_timeout else timed(self)):
            protocol.check_timeouts()
        reactor.callLater(2, self.timeout_checker)

    server_class.protocol_connected = connected
    server_class.create_application = create
    server_class.protocol_disconnected = disconnected
    server_class.application_checker = application_checker
    server_class.timeout_checker = timeout_checker
    server_class._sse_reaping = True
    return True
