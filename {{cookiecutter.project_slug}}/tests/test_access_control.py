"""Private streams stay private: before public patterns, after logout, password change and deactivation."""

import asyncio
import json
import logging

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import AsyncClient, Client, RequestFactory

from sse import publish
from sse.encoding import InvalidEvent
from sse.hub import get_hub
from sse.ops import checks, logmask
from sse.security import revocation, tokens
from sse.transports.endpoint import stream_response
from tests.conftest import read_until

rf = RequestFactory()
DEEP = "[" * 32_000 + "]" * 32_000  # deeper than Python's recursion limit, within the demo's 64 KB


async def status(path: str, stream: str | None = None, user=None) -> int:
    request = rf.get(path)
    request.user = user or AnonymousUser()
    response = await stream_response(request, stream)
    if response.streaming:
        response.close()
    return response.status_code


# --- private names come before public patterns --------------------------------------


@pytest.mark.parametrize("patterns", [["*"], ["user.*"], ["u*", "notifications"], ["*.1"]])
async def test_a_public_pattern_never_opens_private_streams(backend, settings, patterns):
    settings.SSE_PUBLIC_STREAMS = patterns
    alice, bob = User(pk=1, username="alice"), User(pk=2, username="bob")
    assert await status("/sse/user.1/", "user.1") == 403
    assert await status("/sse/user.1/", "user.1", bob) == 403
    assert await status("/sse/user.1/", "user.1", alice) == 200
    assert await status("/sse/?stream=user.1") == 403
    assert await status("/sse/?stream=user.1&stream=user.2", user=alice) == 403


@pytest.mark.django_db(transaction=True)
async def test_a_token_for_public_streams_opens_no_private_one(backend, settings):
    settings.SSE_PUBLIC_STREAMS = ["*"]
    user = await User.objects.acreate_user("mallory")
    token = tokens.mint(["notifications"], user=user)
    assert await status(f"/sse/?stream=notifications&token={token}") == 200
    assert await status(f"/sse/?stream=notifications&stream=user.{user.pk + 1}&token={token}") == 403
    assert await status(f"/sse/user.{user.pk + 1}/?token={token}", f"user.{user.pk + 1}") == 403


def test_the_system_check_warns_when_a_public_pattern_matches_private_streams(settings):
    for patterns in (["*"], ["user.*"], ["notifications", "user.?"], ["u*"]):
        settings.SSE_PUBLIC_STREAMS = patterns
        assert [m.id for m in checks.public_patterns()] == ["sse.W007"], patterns
        assert not checks.public_patterns()[0].is_serious(), "a warning: the streams stay private anyway"
    for patterns in ([], ["notifications", "chat"], ["users.*", "team.*", "*.public"]):
        settings.SSE_PUBLIC_STREAMS = patterns
        assert checks.public_patterns() == [], patterns


# --- tokens of users who are gone --------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_token_of_a_deleted_or_inactive_user_is_refused(backend, settings):
    settings.SSE_PUBLIC_STREAMS = ["notifications"]
    user = await User.objects.acreate_user("gone")
    private, public = tokens.mint([f"user.{user.pk}"], user=user), tokens.mint(["notifications"], user=user)
    assert await status(f"/sse/user.{user.pk}/?token={private}", f"user.{user.pk}") == 200
    user.is_active = False
    await user.asave()
    for token in (private, public):
        request = rf.get(f"/sse/?stream=notifications&token={token}")
        request.user = AnonymousUser()
        response = await stream_response(request)
        assert response.status_code == 403 and b"inactive" in response.content
    await User.objects.filter(pk=user.pk).aupdate(is_active=True)
    assert await status(f"/sse/user.{user.pk}/?token={private}", f"user.{user.pk}") == 200
    await user.adelete()
    assert await status(f"/sse/user.{user.pk}/?token={private}", f"user.{user.pk}") == 403
    assert await status(f"/sse/?stream=notifications&token={tokens.mint(['notifications'], user=999_999)}") == 403
    assert await status(f"/sse/?stream=notifications&token={tokens.mint(['notifications'], user='x')}") == 403


# --- open streams are closed when their reader may no longer read them ---------------


async def session_request(path: str, user: User) -> tuple:
    """A request with the user's real session cookie, through Django's session and auth middleware."""
    client = AsyncClient()
    await client.aforce_login(user)
    request = rf.get(path, HTTP_COOKIE=f"sessionid={client.cookies['sessionid'].value}")
    revocation.refresh(request)
    return request, client


async def open_private(path: str, stream: str | None, user: User):
    request, client = await session_request(path, user)
    response = await stream_response(request, stream)
    assert response.status_code == 200, response.content
    chunks = response.streaming_content
    assert (await anext(chunks)).startswith(b"retry:")
    return response, chunks, client


async def ends(chunks, limit: float = 10.0) -> bytes:
    """The rest of a stream the server ends (it must, within ``limit`` seconds)."""
    async with asyncio.timeout(limit):
        return b"".join([chunk async for chunk in chunks])


def disconnect_reason(caplog) -> str:
    (line,) = [r.getMessage() for r in caplog.records if "event=disconnect" in r.getMessage()]
    return line.rsplit("reason=", 1)[1]


async def change_password(user: User, client: AsyncClient) -> None:
    user.set_password("new password")
    await user.asave()


async def deactivate(user: User, client: AsyncClient) -> None:
    user.is_active = False
    await user.asave()


async def log_out(user: User, client: AsyncClient) -> None:
    await client.alogout()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", [change_password, deactivate, log_out])
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
async def test_logout_password_change_and_deactivation_close_open_private_streams(
    backend, settings, caplog, change, multi
):
    settings.SSE_PUBLIC_STREAMS = ["notifications"]
    settings.SSE_RECHECK_INTERVAL = 0  # the signal alone must do it
    user = await User.objects.acreate_user(f"u-{change.__name__}-{multi}", password="old password")
    other = await User.objects.acreate_user(f"o-{change.__name__}-{multi}", password="x")
    stream = f"user.{user.pk}"
    path = f"/sse/?stream=notifications&stream={stream}" if multi else f"/sse/{stream}/"
    with caplog.at_level(logging.INFO, logger="sse"):
        response, chunks, client = await open_private(path, None if multi else stream, user)
        bystander, others, _ = await open_private(f"/sse/user.{other.pk}/", f"user.{other.pk}", other)
        await change(user, client)
        await ends(chunks)
        response.close()
    assert disconnect_reason(caplog) == "revoked"
    assert any("closing" in r.getMessage() and r.name == "sse" for r in caplog.records)
    # Another user's stream is not touched: it still gets its events.
    event_id = publish(f"user.{other.pk}", "n", "still here")
    events = await read_until(others, lambda ev: any(e.get("id") == event_id for e in ev))
    assert events
    bystander.close()


@pytest.mark.django_db(transaction=True)
async def test_a_token_stream_is_closed_when_its_user_is_deleted(backend, settings, caplog):
    settings.SSE_RECHECK_INTERVAL = 0
    user = await User.objects.acreate_user("deleted")
    token = tokens.mint([f"user.{user.pk}"], user=user)
    request = rf.get(f"/sse/user.{user.pk}/?token={token}")
    request.user = AnonymousUser()
    response = await stream_response(request, f"user.{user.pk}")
    chunks = response.streaming_content
    await anext(chunks)
    with caplog.at_level(logging.INFO, logger="sse.access"):
        await user.adelete()
        await ends(chunks)
    response.close()
    assert disconnect_reason(caplog) == "revoked"


async def delete_sessions(user: User) -> None:
    await Session.objects.all().adelete()  # no signal: only the re-check sees it


async def deactivate_quietly(user: User) -> None:
    await User.objects.filter(pk=user.pk).aupdate(is_active=False)  # no signal either


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", [delete_sessions, deactivate_quietly])
async def test_the_periodic_recheck_closes_what_no_signal_told(backend, settings, caplog, change):
    settings.SSE_PUBLIC_STREAMS = ["notifications"]
    settings.SSE_RECHECK_INTERVAL = 0.3
    user = await User.objects.acreate_user(f"r-{change.__name__}")
    response, chunks, _ = await open_private(f"/sse/user.{user.pk}/", f"user.{user.pk}", user)
    public = await stream_response(rf.get("/sse/notifications/"), "notifications")
    await asyncio.sleep(1)  # a few re-checks: still allowed, still open
    event_id = publish(f"user.{user.pk}", "n", 1)
    assert await read_until(chunks, lambda ev: any(e.get("id") == event_id for e in ev))
    with caplog.at_level(logging.INFO, logger="sse.access"):
        await change(user)
        await ends(chunks)
    response.close()
    public.close()
    assert disconnect_reason(caplog) == "revoked"


def guarded() -> int:
    return len(revocation.registry(get_hub()).guarded)


@pytest.mark.django_db(transaction=True)
async def test_only_non_public_streams_are_watched(backend, settings):
    settings.SSE_PUBLIC_STREAMS = ["notifications"]
    user = await User.objects.acreate_user("public-reader")
    before = guarded()
    request, _ = await session_request("/sse/notifications/", user)
    public = await stream_response(request, "notifications")
    assert public.status_code == 200 and guarded() == before
    private, _, _ = await open_private(f"/sse/user.{user.pk}/", f"user.{user.pk}", user)
    assert guarded() == before + 1
    private.close()
    public.close()
    assert guarded() == before, "released when the stream ends"


# --- the demo publish endpoint -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"stream": "notifications", "data": 1}, 200),
        ({"stream": "user.1", "data": "spoofed"}, 403),
        ({"stream": "secret", "data": 1}, 403),
        ({"stream": ["notifications"], "data": 1}, 400),
        (b'{"stream": "notifications", "data": ' + DEEP.encode() + b"}", 400),
    ],
    ids=["public", "private", "not-public", "not-a-name", "deeply-nested"],
)
def test_the_demo_publishes_to_public_streams_only(settings, body, expected):
    settings.SSE_DEMO_PUBLISH = True
    settings.SSE_PUBLIC_STREAMS = ["notifications", "u*"]  # even so, user.<id> is private
    data = body if isinstance(body, bytes) else json.dumps(body)
    response = Client().post("/demo/publish/", data, content_type="application/json")
    assert response.status_code == expected, response.content


def test_deeply_nested_data_is_invalid_not_a_recursion_error(backend, stream):
    data: list = []
    for _ in range(100_000):
        data = [data]
    with pytest.raises(InvalidEvent, match="nested"):
        publish(stream, "n", data)


def test_send_event_with_deep_data_is_a_command_error_with_redis(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # never reached: the data is refused first
    with pytest.raises(CommandError, match="nested"):
        call_command("send_event", "s", "--data", DEEP)


# --- tokens are masked however they are spelled ---------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?token=SECRET",
        "?a=1;token=SECRET",
        "?%74oken=SECRET",
        "?%74%6F%6B%65%6E=SECRET",
        "?a=1&TOKEN=SECRET",
        "?a=1%26token=SECRET",
        "?a=1;%74oken%3DSECRET&b=2",
    ],
)
def test_every_spelling_of_a_token_is_masked(query):
    line = f'127.0.0.1 - - [x] "GET /sse/a/{query} HTTP/1.1" 200'
    masked = logmask.mask(line)
    assert "SECRET" not in masked and "[masked]" in masked and masked.endswith(' HTTP/1.1" 200'), masked


def test_tokens_are_read_only_from_the_literal_name():
    for query in ("a=1;token=T", "%74oken=T", "a=1%26token=T"):
        assert tokens.from_request(rf.get(f"/sse/a/?{query}")) is None, query
