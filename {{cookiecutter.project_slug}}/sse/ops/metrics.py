"""This process's counters, served in Prometheus' text format at ``GET /metrics/``.

Off unless ``SSE_METRICS`` is set (404). Then only addresses in
``SSE_METRICS_ALLOWED_IPS`` (exact addresses or CIDR networks) and staff users
may read them; others get 403. Behind nginx, Daphne's ``--proxy-headers`` makes
the client's own address the one checked, and the nginx site refuses
``/metrics/`` to anyone but the machine itself.

Every value is per process: Prometheus sums them over the instances it scrapes.
No client library: the text format is a few lines, written here.
"""

import ipaddress
import threading
from collections.abc import Callable
from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Counter:
    """A monotonic count, safe to increment from any thread (publishers may be threads)."""

    __slots__ = ("_lock", "description", "name", "values")

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        with self._lock:
            self.values[key] = self.values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)


COUNTERS: list[Counter] = []


def counter(name: str, description: str) -> Counter:
    COUNTERS.append(made := Counter(name, description))
    return made


CONNECTIONS = counter("sse_connections_total", "Streams opened by this process.")
DISCONNECTS = counter("sse_disconnects_total", "Streams closed, by reason.")
PUBLISHED = counter("sse_events_published_total", "Events this process published (publish, apublish, on commit).")
PUBLISH_FAILURES = counter("sse_publish_failures_total", "Publish attempts that failed because the broker was down.")
FANNED_OUT = counter("sse_hub_events_total", "Events the hub received and encoded once for its local clients.")
EVENTS_SENT = counter("sse_events_sent_total", "Events written to clients, live and replayed.")
BYTES_SENT = counter("sse_bytes_sent_total", "Bytes written to clients, heartbeats included.")
SLOW_CLIENTS = counter("sse_slow_client_disconnects_total", "Clients closed because they fell behind.")
REPLAYS = counter("sse_replay_requests_total", "Streams opened with a Last-Event-ID.")
STREAM_ERRORS = counter("sse_stream_errors_total", "Streams ended by an error (logged): clients reconnect and replay.")
RESETS = counter("sse_resets_total", "Reset events sent for ids no longer (or never) in the log.")


class Gauge:
    """A value read when scraped, from ``read``, which the module that knows it sets (sse.hub)."""

    __slots__ = ("description", "name", "read")

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.read: Callable[[], float] = lambda: 0


# This module imports nothing from sse: what it shows is handed to it.
OPEN_STREAMS = Gauge("sse_open_streams", "Streams open in this process now.")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def sample(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    text = ",".join(f'{key}="{escape_label(str(val))}"' for key, val in labels)
    number = int(value) if float(value).is_integer() else value
    # Braces by concatenation: this file is a cookiecutter template, where two make a tag.
    return f"{name}{'{' + text + '}' if text else ''} {number}"


def render() -> str:
    """Every metric, with its HELP and TYPE lines, in the text exposition format 0.0.4."""
    gauge = OPEN_STREAMS
    lines = [
        f"# HELP {gauge.name} {escape_help(gauge.description)}",
        f"# TYPE {gauge.name} gauge",
        sample(gauge.name, (), gauge.read()),
    ]
    for metric in COUNTERS:
        lines += [f"# HELP {metric.name} {escape_help(metric.description)}", f"# TYPE {metric.name} counter"]
        with metric._lock:
            values = dict(metric.values) or {(): 0}
        lines += [sample(metric.name, labels, value) for labels, value in sorted(values.items())]
    return "\n".join(lines) + "\n"


@cache
def networks(allowed: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in allowed if entry.strip()]


def address_allowed(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").strip("[]"))
    except ValueError:  # a unix socket peer, or no address at all
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks(tuple(getattr(settings, "SSE_METRICS_ALLOWED_IPS", []))))


async def metrics_view(request: HttpRequest) -> HttpResponse:
    if not getattr(settings, "SSE_METRICS", False):
        return HttpResponse("metrics are off (SSE_METRICS)\n", status=404, content_type="text/plain")
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if not address_allowed(request.META.get("REMOTE_ADDR")):
        user = await request.auser()
        if not (user.is_active and user.is_staff):
            return HttpResponse("metrics are for allowed addresses and staff\n", status=403, content_type="text/plain")
    response = HttpResponse(render(), content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
