"""Who may read which stream: the default policy and a custom one."""

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import RequestFactory

from sse.transports.endpoint import stream_response

rf = RequestFactory()
DEFAULT = ["notifications", "chat"]


async def status(stream: str, user) -> int:
    request = rf.get(f"/sse/{stream}/")
    request.user = user
    response = await stream_response(request, stream)
    if response.streaming:
        response.close()
    return response.status_code


@pytest.mark.parametrize(
    ("stream", "who", "expected"),
    [
        ("notifications", "anonymous", 200),
        ("chat", "alice", 200),
        ("user.1", "anonymous", 403),
        ("user.1", "bob", 403),
        ("user.1", "alice", 200),
        ("user.2", "alice", 403),
        ("user.", "alice", 403),
        ("secret", "alice", 403),
        ("notifications.extra", "anonymous", 403),
    ],
)
async def test_default_policy(backend, settings, stream, who, expected):
    settings.SSE_PUBLIC_STREAMS = DEFAULT
    users = {"anonymous": AnonymousUser(), "alice": User(pk=1, username="alice"), "bob": User(pk=2, username="bob")}
    assert await status(stream, users[who]) == expected


def only_team_streams(request, stream):
    return stream.startswith("team.")


async def only_even_users(request, stream):
    return request.user.pk % 2 == 0


async def test_custom_policies_sync_or_async(backend, settings):
    settings.SSE_AUTHORIZE = "tests.test_auth.only_team_streams"
    assert await status("team.red", AnonymousUser()) == 200
    assert await status("notifications", AnonymousUser()) == 403
    settings.SSE_AUTHORIZE = "tests.test_auth.only_even_users"
    assert await status("anything", User(pk=2)) == 200
    assert await status("anything", User(pk=3)) == 403
