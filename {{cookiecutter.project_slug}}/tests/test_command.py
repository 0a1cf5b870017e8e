import io
import json

import pytest
from django.core.management import CommandError, call_command

from sse import publish
from sse.backends import get_broker


async def test_send_event_prints_the_id_and_logs_the_event(backend, stream, capsys):
    if backend == "memory":
        pytest.skip("the command needs REDIS_URL: see test_without_redis_the_command_refuses")
    before = publish(stream, "n", 0)
    call_command("send_event", stream, "--event", "notification", "--data", '{"msg": "hi"}')
    event_id = capsys.readouterr().out.strip()
    entries = await get_broker().areplay(stream, before, 10)
    assert entries == [(event_id, "notification", '{"msg":"hi"}')]


async def test_send_event_html_and_template(backend, stream, capsys, monkeypatch):
    if backend == "memory":
        pytest.skip("the command needs REDIS_URL: see test_without_redis_the_command_refuses")
    before = publish(stream, "n", 0)
    fragment = "<li>one</li>\n\n<li>two & <b>three</b></li>"
    call_command("send_event", stream, "--event", "row", "--html", fragment)
    monkeypatch.setattr("sys.stdin", io.StringIO("<p>from stdin</p>\n"))
    call_command("send_event", stream, "--html", "-")
    context = json.dumps({"order": {"pk": 3, "customer": "<Eve>", "status": "paid"}})
    call_command(
        "send_event", stream, "--event", "order", "--template", "sse_tests/orders.html#row", "--context", context
    )
    ids = capsys.readouterr().out.split()
    entries = await get_broker().areplay(stream, before, 10)
    assert [entry[0] for entry in entries] == ids
    assert entries[0][1:] == ("row", fragment), "--html is sent as given"
    assert entries[1][1:] == ("message", "<p>from stdin</p>\n")
    assert entries[2][1] == "order" and "<td>&lt;Eve&gt;</td>" in entries[2][2], "--template autoescapes"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ok", "--html", "<p>", "--data", "1"], "only one of --data, --html and --template, not --data and --html"),
        (["ok", "--template", "sse_tests/orders.html", "--html", "x"], "only one of"),
        (["ok", "--data", "1", "--context", "{}"], "--context only goes with --template"),
        (["ok", "--template", "sse_tests/missing.html"], "template not found: sse_tests/missing.html"),
        (["ok", "--template", "sse_tests/orders.html#nope"], "template not found: "),
        (["ok", "--template", "sse_tests/orders.html", "--context", "{nope"], "--context is not valid JSON"),
        (["ok", "--template", "sse_tests/orders.html", "--context", "[1]"], "must be a JSON object, not list"),
        (["ok", "--html", "a\0b"], "NUL"),
        (["bad name"], "invalid stream name"),
        (["ok", "--data", "{nope"], "not valid JSON"),
        (["ok", "--event", "a\nb"], "CR, LF or NUL"),
        (["ok", "--data", json.dumps("x" * 2_000_000)], "SSE_MAX_DATA_BYTES"),
    ],
    ids=[
        "data+html",
        "template+html",
        "context",
        "template",
        "partial",
        "context-json",
        "context-list",
        "nul",
        "stream",
        "json",
        "event",
        "size",
    ],
)
def test_bad_input_is_a_one_line_command_error(backend, args, message, settings):
    settings.REDIS_URL = settings.REDIS_URL or "redis://127.0.0.1:1/0"
    with pytest.raises(CommandError, match=message) as info:
        call_command("send_event", *args)
    assert "\n" not in str(info.value)


def test_without_redis_the_command_refuses_and_says_what_to_set(settings):
    settings.REDIS_URL = None
    with pytest.raises(CommandError, match="REDIS_URL is not set") as info:
        call_command("send_event", "ok")
    assert "REDIS_URL=redis://127.0.0.1:6379/0 to .env" in str(info.value)
    assert "\n" not in str(info.value)


def test_unreachable_redis_is_a_command_error(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with pytest.raises(CommandError, match="unavailable"):
        call_command("send_event", "ok", "--data", "1")
