"""Cross-origin clients: CORS from listed origins, signed tokens, and tokens kept out of logs."""

import logging
import time

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory

from sse import apublish
from sse.ops import checks, logmask
from sse.security import tokens
from sse.transports.endpoint import stream_response
from tests.conftest import data_events, read_until

rf = RequestFactory()
APP = "https://app.example.com"


async def respond(path: str, stream: str | None = None, method: str = "get", user=None, **headers):
    request = getattr(rf, method)(path, **headers)
    request.user = user or AnonymousUser()
    response = await stream_response(request, stream)
    if response.streaming:
        response.close()
    return response


async def test_a_listed_origin_gets_credentialed_cors_headers_and_events(backend, stream, settings):
    settings.SSE_CORS_ORIGINS = [APP, "https://other.example.com"]
    response = await stream_response(rf.get(f"/sse/{stream}/", HTTP_ORIGIN=APP), stream)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == APP
    assert response["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in response["Vary"]
    chunks = response.streaming_content
    await anext(chunks)
    event_id = await apublish(stream, "n", 1)
    assert data_events(await read_until(chunks, data_events))[0]["id"] == event_id
    await chunks.aclose()


async def test_an_unlisted_origin_is_403_and_opens_no_stream(backend, stream, settings):
    from sse.hub import get_hub

    settings.SSE_CORS_ORIGINS = [APP]
    for origin in ["https://evil.example", "null", APP + "/", "http://app.example.com", "https://app.example.com:8443"]:
        for path, name in [(f"/sse/{stream}/", stream), (f"/sse/?stream={stream}", None)]:
            response = await respond(path, name, HTTP_ORIGIN=origin)
            assert response.status_code == 403, origin
            assert b"SSE_CORS_ORIGINS" in response.content
            assert "Access-Control-Allow-Origin" not in response
    assert get_hub().open == 0


async def test_same_origin_and_no_origin_need_no_listing(backend, stream, settings):
    settings.SSE_CORS_ORIGINS = []
    for headers in [{}, {"HTTP_ORIGIN": "http://testserver"}]:
        response = await respond(f"/sse/{stream}/", stream, **headers)
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response


async def test_errors_carry_cors_headers_so_the_client_can_read_the_status(backend, settings):
    settings.SSE_CORS_ORIGINS = [APP]
    settings.SSE_PUBLIC_STREAMS = []
    response = await respond("/sse/secret/", "secret", HTTP_ORIGIN=APP)
    assert response.status_code == 403
    assert response["Access-Control-Allow-Origin"] == APP


async def test_preflight(backend, stream, settings):
    settings.SSE_CORS_ORIGINS = [APP]
    for path, name in [(f"/sse/{stream}/", stream), (f"/sse/?stream={stream}", None)]:
        response = await respond(
            path,
            name,
            method="options",
            HTTP_ORIGIN=APP,
            HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
            HTTP_ACCESS_CONTROL_REQUEST_HEADERS="last-event-id",
        )
        assert response.status_code == 204
        assert response["Access-Control-Allow-Origin"] == APP
        assert response["Access-Control-Allow-Credentials"] == "true"
        assert response["Access-Control-Allow-Methods"] == "GET"
        assert "Last-Event-ID" in response["Access-Control-Allow-Headers"]
        assert int(response["Access-Control-Max-Age"]) > 0
    refused = await respond(f"/sse/{stream}/", stream, method="options", HTTP_ORIGIN="https://evil.example")
    assert refused.status_code == 403


def test_wildcards_and_non_origins_fail_the_system_check(settings):
    settings.SSE_CORS_ORIGINS = [APP, "http://localhost:8000", "http://[::1]:3000"]
    assert checks.cors_origins() == []
    for bad, code in [
        ("*", "sse.E002"),
        ("https://*.example.com", "sse.E002"),
        ("https://app.example.com/", "sse.E003"),
    ]:
        settings.SSE_CORS_ORIGINS = [bad]
        assert [e.id for e in checks.cors_origins()] == [code]
        with pytest.raises(Exception, match=code):
            checks.fail_fast()
    settings.SSE_CORS_ORIGINS = "https://a.example"
    assert [e.id for e in checks.cors_origins()] == ["sse.E001"]


# --- tokens -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_token_grants_its_streams_without_a_session(backend, settings):
    settings.SSE_PUBLIC_STREAMS = []
    await User.objects.acreate(pk=7, username="seven")  # a token's user must exist
    token = tokens.mint(["team.red", "user.7"], user=7)
    assert (await respond("/sse/?stream=team.red&stream=user.7&token=" + token)).status_code == 200
    assert (await respond(f"/sse/user.7/?token={token}", "user.7")).status_code == 200
    assert (await respond("/sse/user.7/", "user.7")).status_code == 403, "without the token"


async def test_a_token_for_another_stream_is_403(backend, settings):
    settings.SSE_PUBLIC_STREAMS = ["public"]
    token = tokens.mint(["team.red"])
    response = await respond(f"/sse/team.blue/?token={token}", "team.blue")
    assert response.status_code == 403 and b"'team.blue'" in response.content
    both = await respond(f"/sse/?stream=team.red&stream=team.blue&token={token}")
    assert both.status_code == 403 and b"'team.blue'" in both.content
    # Other streams still go through SSE_AUTHORIZE with the request's own session.
    assert (await respond(f"/sse/?stream=team.red&stream=public&token={token}")).status_code == 200
    alice = User(pk=3, username="alice")
    assert (await respond(f"/sse/?stream=team.red&stream=user.3&token={token}", user=alice)).status_code == 200


async def test_expired_forged_and_damaged_tokens_are_403_with_a_reason(backend, stream, settings, monkeypatch):
    token = tokens.mint([stream], ttl=1)
    real = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real() + 5)
    expired = await respond(f"/sse/{stream}/?token={token}", stream)
    assert expired.status_code == 403 and b"expired" in expired.content
    monkeypatch.undo()
    _value, stamp, signature = token.rsplit(":", 2)
    forged = signing.b64_encode(b'{"s":["user.1"],"u":"1","t":60}').decode()
    other_key = signing.TimestampSigner(key="not-the-secret", salt=tokens.SALT).sign_object(
        {"s": [stream], "u": None, "t": 60}
    )
    other_salt = signing.TimestampSigner(salt="other").sign_object({"s": [stream], "u": None, "t": 60})
    for bad in [f"{forged}:{stamp}:{signature}", other_key, other_salt, "x", token[:-2], "", "a:b:c"]:
        response = await respond(f"/sse/{stream}/?token={bad}", stream)
        assert response.status_code == 403, bad
        assert b"token: invalid" in response.content
        assert response.content.count(b"\n") == 1
    twice = await respond(f"/sse/{stream}/?token={token}&token={token}", stream)
    assert twice.status_code == 403


def test_mint_refuses_what_it_cannot_grant():
    for streams, user, ttl in [([], None, 60), (["bad name"], None, 60), (["a"], None, 0), (["a"], None, 10**6)]:
        with pytest.raises(ValueError):
            tokens.mint(streams, user=user, ttl=ttl)
    with pytest.raises(ValueError, match=r"user\.5"):
        tokens.mint(["user.5"])
    with pytest.raises(ValueError, match=r"user\.5"):
        tokens.mint(["user.5"], user=6)
    assert tokens.read(tokens.mint("a", user=User(pk=5))) == ({"a"}, "5")


@pytest.mark.django_db
def test_sse_token_command(capsys):
    user = User.objects.create_user("bob", password="x")
    call_command("sse_token", "notifications", f"user.{user.pk}", "--user", str(user.pk), "--ttl", "30")
    token = capsys.readouterr().out.strip()
    assert tokens.read(token) == ({"notifications", f"user.{user.pk}"}, str(user.pk))
    for args, message in [
        (["x", "--user", "999999"], "no user"),
        (["bad name"], "invalid stream name"),
        (["user.1"], "must name that user"),
        (["x", "--ttl", "0"], "ttl"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("sse_token", *args)


def test_tokens_are_masked_in_log_lines(caplog):
    line = '127.0.0.1 - - [x] "GET /sse/?stream=a&token=abc:def:ghi&last_event_id=a:1-0 HTTP/1.1" 200'
    assert "abc" not in logmask.mask(line) and "last_event_id=a:1-0" in logmask.mask(line)
    assert logmask.mask("/sse/a/?token=t1&token=t2") == "/sse/a/?token=[masked]&token=[masked]"
    logger = logging.getLogger("django.channels.server")  # runserver's request lines
    with caplog.at_level(logging.INFO, logger="django.channels.server"):
        logger.info(
            "HTTP %(method)s %(path)s %(status)s", {"method": "GET", "path": "/sse/a/?token=SECRET", "status": 200}
        )
    assert "SECRET" not in caplog.text and "token=[masked]" in caplog.text


async def test_django_request_warnings_name_the_path_only(backend, settings, caplog):
    from django.test import AsyncClient

    settings.SSE_PUBLIC_STREAMS = []
    token = tokens.mint(["team.red"])
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = await AsyncClient().get(f"/demo-does-not-exist/?token={token}")
    assert response.status_code == 404
    assert caplog.records, "Django logged the 404"
    assert token not in caplog.text
