import json

import pytest
from django.core.management import CommandError, call_command

from sse import publish
from sse.broker import get_broker


async def test_send_event_prints_the_id_and_logs_the_event(backend, stream, capsys):
    if backend == "memory":
        pytest.skip("the command needs REDIS_URL: see test_without_redis_the_command_refuses")
    before = publish(stream, "n", 0)
    call_command("send_event", stream, "--event", "notification", "--data", '{"msg": "hi"}')
    event_id = capsys.readouterr().out.strip()
    entries = await get_broker().areplay(stream, before, 10)
    assert entries == [(event_id, "notification", '{"msg":"hi"}')]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name"], "invalid stream name"),
        (["ok", "--data", "{nope"], "not valid JSON"),
        (["ok", "--event", "a\nb"], "CR, LF or NUL"),
        (["ok", "--data", json.dumps("x" * 2_000_000)], "SSE_MAX_DATA_BYTES"),
    ],
    ids=["stream", "json", "event", "size"],
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
