"""What a server process does once its ASGI application is built.

Daphne runs no ASGI lifespan and, with the project's logging, prints nothing when it
starts: ``announce()`` logs one line once it listens, so journald shows the service
came up, where, and with which broker. ``serve_static_in_debug()`` lets Daphne run
directly serve ``/static/`` in development, as ``runserver`` does.
"""

import logging
import resource
import sys
from typing import Any

from django.apps import apps
from django.conf import settings

from sse.conf import setting
from sse.ops import collector
from sse.transports import daphne_server

logger = logging.getLogger("sse")


def serve_static_in_debug(application: Any) -> Any:
    """``application``, serving static files in front of it when DEBUG is on.

    runserver wraps the application this way itself; Daphne started directly does not, and
    the demo page would load without its CSS and JS. With DEBUG off nginx serves /static/.
    """
    if not (settings.DEBUG and apps.is_installed("django.contrib.staticfiles")):
        return application
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(application)


def describe_broker() -> str:
    """The broker in use, without a password."""
    if path := setting("SSE_BROKER", None):
        return path  # a backend of the project's own: its settings are its own
    if nodes := setting("REDIS_CLUSTER_NODES", []):
        return "redis-cluster:" + ",".join(f"{host}:{port}" for host, port in nodes)
    sentinels = setting("REDIS_SENTINELS", [])
    if sentinels:
        hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
        return f"redis-sentinel:{setting('REDIS_SENTINEL_MASTER', 'mymaster')}@{hosts}"
    url = setting("REDIS_URL", None)
    if not url:
        return "memory"  # this process only
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:  # user, password, or a password written as a user name: never logged
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{slash}{path}"


def listening_addresses(reactor: Any) -> list[str]:
    """The addresses Twisted listens on, through its public interfaces."""
    from twisted.internet.interfaces import IListeningPort

    addresses = []
    for reader in reactor.getReaders():
        if not IListeningPort.providedBy(reader):
            continue
        host = reader.getHost()
        if hasattr(host, "port"):
            addresses.append(f"tcp:{host.host}:{host.port}")
        else:
            name = host.name.decode() if isinstance(host.name, bytes) else host.name
            addresses.append(f"unix:{name}")
    return sorted(addresses)


def startup_line(mode: str, addresses: list[str]) -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    parts = [
        f"listening={','.join(addresses) or '?'}",
        f"mode={mode}",
        f"broker={describe_broker()}",
        f"max_streams={setting('SSE_MAX_STREAMS', 20_000)}",
        f"open_files={'unlimited' if soft == resource.RLIM_INFINITY else soft}",
        f"debug={'on' if settings.DEBUG else 'off'}",
    ]
    return "serving " + " ".join(parts)


def announce(mode: str) -> None:
    """Log ``startup_line()`` once, when the server is listening; tune the process for long streams first.

    Daphne imports the application before it opens its ports, and has no lifespan
    events: the line is logged when Twisted's reactor starts running, by then listening.
    Under another server it is logged at once, without addresses.
    """
    collector.tune()  # sse/ops/collector.py: fewer passes over streams that live for hours
    daphne_server.install()  # sse/transports/daphne_server.py: no per-second sweep of every stream
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        logger.info(startup_line(mode, []))
        return
    reactor.callWhenRunning(lambda: logger.info(startup_line(mode, listening_addresses(reactor))))
