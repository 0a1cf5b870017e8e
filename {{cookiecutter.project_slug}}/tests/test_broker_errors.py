"""Redis failing after a stream's 200: the stream ends cleanly, so that the client reconnects."""

import logging

import pytest
from django.test import RequestFactory

from sse import apublish, broker
from sse.broker import BrokerUnavailable, get_broker
from sse.stream import stream_response


async def failing_replay(*args, **kwargs):
    raise BrokerUnavailable("Redis at redis://example is unavailable: Connection closed by server.")


@pytest.mark.parametrize("path", ["/sse/{stream}/", "/sse/?stream={stream}&stream=other"])
async def test_a_replay_that_fails_ends_the_stream_cleanly(stream, settings, monkeypatch, caplog, path):
    settings.REDIS_URL = None  # the failure is injected: the broker is not what is tested
    first = await apublish(stream, "n", 1)
    await apublish(stream, "n", 2)
    monkeypatch.setattr(get_broker(), "areplay", failing_replay)
    last_id = first if "?" not in path else f"{stream}:{first}"
    request = RequestFactory().get(path.format(stream=stream), HTTP_LAST_EVENT_ID=last_id)
    response = await stream_response(request, None if "?" in path else stream)
    assert response.status_code == 200
    with caplog.at_level(logging.WARNING, logger="sse"):
        chunks = [chunk async for chunk in response.streaming_content]  # ends, does not raise
    assert chunks[0].startswith(b"retry:") and b"data:" not in b"".join(chunks)
    assert any("ended a stream" in r.getMessage() and "unavailable" in r.getMessage() for r in caplog.records)
    await broker.aclose()
