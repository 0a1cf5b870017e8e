"""Startup: the settings checks Daphne also runs, the Twisted probe, and /health/ for probes."""

import contextvars
import functools
import gc
import logging
from types import SimpleNamespace

import pytest
from django.core.checks import run_checks
from django.test import AsyncClient, Client

from sse.ops import checks, collector, startup
from sse.transports import daphne


async def my_policy(request, stream: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("sse.auth.defualt_policy", "sse.E010"),
        ("no_such_module.policy", "sse.E010"),
        ("sse", "sse.E010"),  # not a dotted path to an attribute
        ("sse.encoding.STREAM_NAME", "sse.E011"),  # a pattern, not a callable
    ],
)
def test_a_bad_authorize_policy_is_a_check_error(settings, path, code):
    settings.SSE_AUTHORIZE = path
    errors = checks.authorize_policy()
    assert [e.id for e in errors] == [code]
    assert path in errors[0].msg
    assert code in [e.id for e in run_checks(tags=["sse"])]


def test_the_default_and_a_custom_policy_pass(settings):
    assert checks.authorize_policy() == []
    settings.SSE_AUTHORIZE = f"{__name__}.my_policy"
    assert checks.authorize_policy() == []


def test_fail_fast_refuses_a_bad_policy(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.SSE_AUTHORIZE = "sse.auth.nothing"
    with pytest.raises(ImproperlyConfigured, match=r"sse\.E010"):
        checks.fail_fast()


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("sse.backends.memory.NoSuchBroker", "sse.E012"),
        ("sse.memory.MemoryBroker", "sse.E012"),  # the path before sse/backends/
        ("sse.backends.base.prepare", "sse.E013"),  # not a class
        ("sse.hub.Hub", "sse.E013"),  # a class, not a backend
    ],
)
def test_a_bad_broker_backend_is_a_check_error(settings, path, code):
    settings.SSE_BROKER = path
    errors = checks.broker_backend()
    assert [e.id for e in errors] == [code]
    assert path in errors[0].msg
    assert code in [e.id for e in run_checks(tags=["sse"])]


def test_the_automatic_and_a_named_broker_pass(settings):
    assert checks.broker_backend() == []
    settings.SSE_BROKER = "sse.backends.memory.MemoryBroker"
    assert checks.broker_backend() == []
    assert startup.describe_broker() == "sse.backends.memory.MemoryBroker"


def twisted_like(**missing: bool) -> tuple[SimpleNamespace, SimpleNamespace]:
    request = SimpleNamespace(**{name: 0 for name in daphne.REQUEST_INTERNALS if name not in missing})
    transport = SimpleNamespace(**{name: 0 for name in daphne.TRANSPORT_INTERNALS if name not in missing})
    return request, transport


def test_the_twisted_probe_warns_once_and_names_what_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(daphne, "_internals", None)
    request, transport = twisted_like(_tempDataLen=True, _disconnected=True)
    with caplog.at_level(logging.WARNING, logger="sse"):
        assert daphne.internals(request, transport) is False
        assert daphne.internals(*twisted_like()) is False  # decided once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Request._disconnected" in warnings[0] and "SimpleNamespace._tempDataLen" in warnings[0]
    assert "dataBuffer" not in warnings[0]


def test_the_twisted_probe_is_silent_when_everything_is_there(monkeypatch, caplog):
    monkeypatch.setattr(daphne, "_internals", None)
    with caplog.at_level(logging.WARNING, logger="sse"):
        assert daphne.internals(*twisted_like()) is True
    assert not caplog.records


def test_twisted_lets_go_of_a_response_head_once_it_is_written():
    # Twisted's own Request on its test channel: the head goes out whole with the
    # first body chunk, then the stream need not keep it for hours.
    from twisted.web.http import Request
    from twisted.web.test.requesthelper import DummyChannel

    channel = DummyChannel()
    request = Request(channel)
    request.clientproto = b"HTTP/1.1"
    request.setResponseCode(200)
    request.responseHeaders.addRawHeader(b"Content-Type", b"text/event-stream")
    request.responseHeaders.addRawHeader(b"X-Accel-Buffering", b"no")
    daphne.forget_head(request)  # nothing written yet: the head must stay
    assert request.responseHeaders.hasHeader(b"X-Accel-Buffering")
    request.write(b"retry: 3000\n\n")
    daphne.forget_head(request)
    assert not list(request.responseHeaders.getAllRawHeaders())
    wire = channel.transport.written.getvalue()
    assert b"Content-Type: text/event-stream" in wire and b"X-Accel-Buffering: no" in wire
    request.write(b": ping\n\n")  # the stream goes on, chunked as before
    assert channel.transport.written.getvalue().endswith(b"8\r\n: ping\n\n\r\n")


def test_a_daphne_send_that_leads_nowhere_is_reported_once(monkeypatch, caplog):
    monkeypatch.setattr(daphne, "_unreachable_warned", False)

    async def send(message: dict) -> None:
        pass

    # guard() binds the connection in its context (sse.security.access): a context of
    # its own, as each connection has, not the one later tests inherit.
    guard = functools.partial(contextvars.Context().run, daphne.guard)
    with caplog.at_level(logging.WARNING, logger="sse"):
        guard(send)  # another server's send: nothing to say
        assert not caplog.records
        send.__module__ = "daphne.server"  # as a future Daphne's might look
        for _ in range(3):
            assert guard(send) is send
    assert len(caplog.records) == 1 and "Daphne's ASGI send" in caplog.records[0].getMessage()


class Consumer:
    """What Twisted calls on a registered producer, recorded."""

    def __init__(self) -> None:
        self.producer = None
        self.channel = object()  # Twisted sets it to None when the connection is lost

    def registerProducer(self, producer, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        assert self.channel is not None, "Twisted's Request raises AttributeError here"
        self.producer = None


async def test_the_producer_guard_waits_while_twisted_is_paused_and_aborts_past_the_timeout(settings):
    settings.SSE_SEND_TIMEOUT = 0.2
    request, sent = Consumer(), []
    transport = SimpleNamespace(aborted=False)
    transport.abortConnection = lambda: setattr(transport, "aborted", True)

    async def send(message: dict) -> None:
        sent.append(message)

    guarded = daphne.producer_guard(send, request, transport)
    await guarded({"type": "http.response.start", "status": 200})
    await guarded({"type": "http.response.body", "body": b"a", "more_body": True})
    assert request.producer is not None
    request.producer.pauseProducing()
    request.producer.resumeProducing()  # the client read it: no wait
    await guarded({"type": "http.response.body", "body": b"b", "more_body": True})
    assert not transport.aborted
    request.producer.pauseProducing()  # the client stopped reading
    await guarded({"type": "http.response.body", "body": b"c", "more_body": True})
    assert transport.aborted
    await guarded({"type": "http.response.body", "body": b"", "more_body": False})
    assert request.producer is None, "unregistered before the response ends"
    assert [m.get("body") for m in sent] == [None, b"a", b"b", b"c", b""]


async def test_the_producer_guard_ends_quietly_after_the_client_is_gone(settings):
    request, sent = Consumer(), []

    async def send(message: dict) -> None:
        sent.append(message)

    guarded = daphne.producer_guard(send, request, SimpleNamespace())
    await guarded({"type": "http.response.body", "body": b"a", "more_body": True})
    request.producer.stopProducing()
    request.channel = None  # and Twisted can no longer unregister anything
    await guarded({"type": "http.response.body", "body": b""})
    assert len(sent) == 2


@pytest.fixture
def production(settings) -> None:
    settings.ALLOWED_HOSTS = ["example.com"]
    settings.SECURE_SSL_REDIRECT = True


async def test_health_answers_a_probe_at_any_host_over_plain_http(production):
    client = AsyncClient()  # Host: testserver, not an allowed host, as a probe's 127.0.0.1:9095 is not
    response = await client.get("/health/")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response["X-Content-Type-Options"] == "nosniff", "SecurityMiddleware still adds its headers"
    assert (await client.get("/")).status_code == 400
    assert (await client.get("/health")).status_code == 400


def test_health_answers_a_probe_under_wsgi_too_and_other_paths_are_unchanged(production):
    probe = {"host": "10.0.0.5:9095"}  # how a load balancer reaches one instance
    response = Client().get("/health/", headers=probe)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert Client().get("/", headers=probe).status_code == 400
    redirect = Client().get("/", headers={"host": "example.com"})
    assert redirect.status_code == 301 and redirect["Location"] == "https://example.com/"
    assert Client().get("/health/x", headers={"host": "example.com"}).status_code == 301


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (None, "memory"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis.internal:6380/2", "redis://***@redis.internal:6380/2"),
        ("rediss://user:s3cret@redis.internal/0", "rediss://***@redis.internal/0"),
        ("redis://s3cret@redis.internal", "redis://***@redis.internal"),
    ],
)
def test_the_startup_line_names_the_broker_without_its_password(settings, url, logged):
    settings.REDIS_URL, settings.REDIS_SENTINELS = url, []
    assert startup.describe_broker() == logged
    line = startup.startup_line("test", ["tcp:127.0.0.1:8000"])
    assert f"broker={logged} " in line and "s3cret" not in line
    assert "listening=tcp:127.0.0.1:8000 mode=test " in line and "max_streams=" in line and "open_files=" in line


def test_the_startup_line_names_sentinels(settings):
    settings.REDIS_URL, settings.REDIS_SENTINEL_MASTER = "redis://:s3cret@/0", "main"
    settings.REDIS_SENTINELS = [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert startup.describe_broker() == "redis-sentinel:main@10.0.0.1:26379,10.0.0.2:26379"


def test_static_files_are_served_by_the_application_in_debug_only(settings):
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    app = object()
    settings.DEBUG = False
    assert startup.serve_static_in_debug(app) is app
    settings.DEBUG = True
    wrapped = startup.serve_static_in_debug(app)
    assert isinstance(wrapped, ASGIStaticFilesHandler) and wrapped.application is app


def test_variables_from_dotenv_are_a_deploy_warning_when_debug_is_off(settings):
    settings.DOTENV_VARIABLES = ["DJANGO_ALLOWED_HOSTS", "REDIS_URL"]
    settings.DEBUG = False
    (warning,) = checks.dotenv_in_production()
    assert warning.id == "sse.W008" and "DJANGO_ALLOWED_HOSTS, REDIS_URL" in warning.msg
    assert "sse.W008" in [m.id for m in run_checks(tags=["sse"], include_deployment_checks=True)]
    assert "sse.W008" not in [m.id for m in run_checks(tags=["sse"])], "a deploy check only"
    settings.DEBUG = True
    assert checks.dotenv_in_production() == []
    settings.DEBUG, settings.DOTENV_VARIABLES = False, []
    assert checks.dotenv_in_production() == []


@pytest.fixture
def collector_state():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_a_server_process_freezes_its_startup_and_raises_the_collector_thresholds(settings, collector_state):
    gc.set_threshold(700, 10, 10)  # Python's own
    assert collector.tune() == (10_000, 0, 2_500)  # the default, also without the setting
    assert gc.get_threshold() == (10_000, 0, 2_500)
    assert gc.get_freeze_count() > 1000  # modules, classes, Django's registries


def test_what_outlives_a_young_pass_goes_on_at_the_next_pass_not_after_fifty(settings, collector_state):
    # Long-lived objects (as an open stream's are) are visited in at most two passes
    # before the old generation: every other automatic pass is a middle-generation one.
    gc.set_threshold(700, 10, 10)
    collector.tune()
    before = [stats["collections"] for stats in gc.get_stats()]
    kept = [[] for _ in range(100_000)]  # each list is an object the collector tracks
    after = [stats["collections"] for stats in gc.get_stats()]
    young, middle, old = (a - b for a, b in zip(after, before, strict=True))
    assert len(kept) == 100_000
    assert young >= 4  # 100,000 allocations, a pass every 10,000
    assert abs(young - middle) <= 1  # with Python's 10 or our old 50: no middle pass at all
    assert old == 0


@pytest.mark.parametrize(
    ("value", "wanted"),
    [(["20000", "20", "50"], (20_000, 20, 50)), ("5000,10,10", (5_000, 10, 10)), ([], None), ([""], None)],
)
def test_the_thresholds_come_from_the_setting_and_empty_keeps_pythons(settings, collector_state, value, wanted):
    gc.set_threshold(700, 10, 10)
    settings.SSE_GC_THRESHOLDS = value
    assert collector.tune() == wanted
    assert gc.get_threshold() == (wanted or (700, 10, 10))


@pytest.mark.parametrize("value", [["10000", "50"], ["a", "b", "c"], ["-1", "10", "10"]])
def test_bad_thresholds_are_one_warning_and_pythons_own(settings, collector_state, caplog, value):
    gc.set_threshold(700, 10, 10)
    settings.SSE_GC_THRESHOLDS = value
    with caplog.at_level(logging.WARNING, logger="sse"):
        assert collector.tune() is None
    assert gc.get_threshold() == (700, 10, 10)
    assert [r.getMessage() for r in caplog.records] == [
        f"sse: SSE_GC_THRESHOLDS must be three non-negative integers, like 10000,0,2500: got {value!r}; "
        "keeping Python's own"
    ]
