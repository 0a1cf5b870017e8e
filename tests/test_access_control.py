"""Access control on running projects: real Daphne processes, real sessions, real Redis (or none).

Every bad request is a 4xx in both modes; private streams stay private after they open
(logout, password change, deactivation, in every process); tokens stay out of every log.
"""

from __future__ import annotations

import http.client
import re
import socket
import time

from tests.conftest import Project, bake
from tests.sse_client import SSEConnection
from tests.test_deploy import free_port_pair, serve_behind_nginx
from tests.test_e2e import SESSION_SCRIPT, send_event

# A staff user (the admin's logout view is for staff) with a password and a fresh session.
NEW_SESSION_USER = "user, _ = get_user_model().objects.get_or_create(username=sys.argv[1])"
LOGIN_SCRIPT = SESSION_SCRIPT.replace(
    NEW_SESSION_USER,
    "user = get_user_model().objects.filter(username=sys.argv[1]).first()\n"
    "if user is None:\n"
    '    user = get_user_model().objects.create_user(sys.argv[1], password="first password", is_staff=True)',
)
assert LOGIN_SCRIPT != SESSION_SCRIPT

CHANGE_PASSWORD = """
import sys, django
django.setup()
from django.contrib.auth import get_user_model
user = get_user_model().objects.get(pk=sys.argv[1])
user.set_password("second password")
user.save()
"""

DEACTIVATE_QUIETLY = """
import sys, django
django.setup()
from django.contrib.auth import get_user_model
get_user_model().objects.filter(pk=sys.argv[1]).update(is_active=False)  # no signal
"""

DELETE_USER = """
import sys, django
django.setup()
from django.contrib.auth import get_user_model
get_user_model().objects.get(pk=sys.argv[1]).delete()
"""


class RawStream:
    """A stream read on a raw socket with ``Connection: close``, to see how the server ends it."""

    def __init__(self, port: int, path: str, cookie: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        headers = ["Host: 127.0.0.1", "Connection: close"] + ([f"Cookie: {cookie}"] if cookie else [])
        self.sock.sendall(f"GET {path} HTTP/1.1\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n".encode())
        self.raw = b""
        while b"retry:" not in self.raw:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before the stream started: {self.raw!r}"
            self.raw += chunk
        assert self.raw.startswith(b"HTTP/1.1 200"), self.raw

    def rest(self, timeout: float) -> bytes:
        """Everything until the server closes the connection (it must, within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout  # in all: heartbeats would reset a per-read timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    return self.raw
                self.raw += chunk
        finally:
            self.sock.close()
        raise AssertionError(f"still open after {timeout} s: {self.raw[-300:]!r}")

    def ended_cleanly(self, timeout: float = 30.0) -> bool:
        return self.rest(timeout).endswith(b"\r\n0\r\n\r\n")  # the last chunk: not a reset connection


def status_of(port: int, path: str, cookie: str | None = None) -> int:
    client = SSEConnection("127.0.0.1", port, path, {"Cookie": cookie} if cookie else {})
    try:
        return client.wait_status()
    finally:
        client.close()


def admin_logout(port: int, session: str) -> None:
    """Log out as a browser does: the admin's logout form, with its CSRF token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/", headers={"Cookie": f"sessionid={session}"})
    response = conn.getresponse()
    response.read()
    csrf = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "").group(1)
    cookie = f"sessionid={session}; csrftoken={csrf}"
    conn.request("POST", "/admin/logout/", body=b"", headers={"Cookie": cookie, "X-CSRFToken": csrf})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200 and b"Log in again" in body, (response.status, body[:300])


def reasons(daphne) -> list[str]:
    return re.findall(r"event=disconnect .*reason=(\S+)", daphne.output())


# --- item: every bad request is a 4xx -------------------------------------------------


def raw_response(port: int, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
        return raw


def test_too_many_query_fields_is_a_400_with_one_log_line_in_both_modes(project, start_daphne):
    daphne = start_daphne()
    many = "&".join(f"f{i}=1" for i in range(1_200))
    for path in (f"/sse/ok/?{many}", f"/sse/?stream=ok&{many}"):
        raw = raw_response(daphne.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
        assert len(raw.split(b"\r\n\r\n", 1)[1]) < 2_000, "a short answer"
    deadline = time.monotonic() + 5
    while daphne.output().count("TooManyFieldsSent") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daphne.output().count("TooManyFieldsSent") == 2, daphne.output()  # one line each, as Django logs it
    # start_daphne's teardown: no traceback in the log.


def test_stream_responses_vary_on_cookie_in_both_modes(project, start_daphne):
    daphne = start_daphne(SSE_PUBLIC_STREAMS="notifications")
    for path, expected in [("/sse/notifications/", 200), ("/sse/user.1/", 403), ("/sse/?stream=notifications", 200)]:
        client = SSEConnection("127.0.0.1", daphne.port, path)
        assert client.wait_status() == expected
        vary = {v.strip().lower() for v in client.response_headers.get("vary", "").split(",")}
        assert "cookie" in vary, (path, client.response_headers)
        client.close()


# --- item: private streams stay private, in every process ------------------------------


def test_a_public_wildcard_opens_no_private_stream(project, redis_server, start_daphne):
    daphne = start_daphne(SSE_PUBLIC_STREAMS="*")
    alice_pk, alice_session = project.run("-c", LOGIN_SCRIPT, "wild-alice").stdout.split()
    token = project.manage("sse_token", "notifications", env=project.env(REDIS_URL=redis_server.url)).stdout.strip()
    for path in [f"/sse/user.{alice_pk}/", f"/sse/?stream=notifications&stream=user.{alice_pk}&token={token}"]:
        assert status_of(daphne.port, path) == 403, path
    assert status_of(daphne.port, f"/sse/user.{alice_pk}/", f"sessionid={alice_session}") == 200
    check = project.manage("check", env=project.env(SSE_PUBLIC_STREAMS="*"))
    assert "sse.W007" in check.stderr, check.stderr


def test_logout_and_password_change_close_private_streams_in_every_process(project, redis_server, start_daphne):
    env = {"SSE_PUBLIC_STREAMS": "notifications", "SSE_RECHECK_INTERVAL": "0"}  # the signals alone
    first, second = start_daphne(**env), start_daphne(**env)
    pk, session = project.run("-c", LOGIN_SCRIPT, "every-alice").stdout.split()
    _, other_session = project.run("-c", LOGIN_SCRIPT, "every-alice").stdout.split()
    bob_pk, bob_session = project.run("-c", LOGIN_SCRIPT, "every-bob").stdout.split()
    # One process logs alice out (the admin's form): her streams end in both processes.
    streams = [
        RawStream(first.port, f"/sse/user.{pk}/", f"sessionid={session}"),
        RawStream(second.port, f"/sse/?stream=notifications&stream=user.{pk}", f"sessionid={other_session}"),
    ]
    bob = SSEConnection("127.0.0.1", second.port, f"/sse/user.{bob_pk}/", {"Cookie": f"sessionid={bob_session}"})
    assert bob.wait_status() == 200
    admin_logout(first.port, session)
    assert all(stream.ended_cleanly() for stream in streams)
    assert status_of(first.port, f"/sse/user.{pk}/", f"sessionid={session}") == 403, "that session is gone"
    # A password change in a third process: every process closes her streams.
    streams = [RawStream(daphne.port, f"/sse/user.{pk}/", f"sessionid={other_session}") for daphne in (first, second)]
    project.run("-c", CHANGE_PASSWORD, pk, env=project.env(REDIS_URL=redis_server.url))
    assert all(stream.ended_cleanly() for stream in streams)
    for daphne in (first, second):
        assert status_of(daphne.port, f"/sse/user.{pk}/", f"sessionid={other_session}") == 403
    # Bob was never touched.
    event_id = send_event(project, redis_server.url, f"user.{bob_pk}", "n", "still here")
    assert bob.wait_events(1)[0].id == event_id
    bob.close()
    assert reasons(first).count("revoked") == 2 and reasons(second).count("revoked") == 2
    assert "closing user." in first.output() and "closing notifications,user." in second.output()


def test_in_memory_mode_logout_and_the_periodic_recheck_close_private_streams(project, start_daphne):
    daphne = start_daphne(REDIS_URL="", SSE_PUBLIC_STREAMS="notifications", SSE_RECHECK_INTERVAL="1")
    pk, session = project.run("-c", LOGIN_SCRIPT, "memory-alice").stdout.split()
    _, other_session = project.run("-c", LOGIN_SCRIPT, "memory-alice").stdout.split()
    public = RawStream(daphne.port, "/sse/notifications/")
    stream = RawStream(daphne.port, f"/sse/user.{pk}/", f"sessionid={session}")
    admin_logout(daphne.port, session)
    assert stream.ended_cleanly()
    # Deactivated behind Django's back (no signal reaches this process): the re-check sees it.
    stream = RawStream(daphne.port, f"/sse/user.{pk}/", f"sessionid={other_session}")
    time.sleep(2.5)  # re-checked at least twice while still allowed
    project.run("-c", DEACTIVATE_QUIETLY, pk)
    assert stream.ended_cleanly()
    assert status_of(daphne.port, f"/sse/user.{pk}/", f"sessionid={other_session}") == 403
    assert reasons(daphne) == ["revoked", "revoked"], daphne.output()
    public.sock.settimeout(0.5)
    try:
        assert public.sock.recv(1) != b"", "the public stream was closed"  # a heartbeat, at most
    except TimeoutError:
        pass  # open, and nothing to read
    public.sock.close()


def test_a_token_outlives_neither_its_user_nor_its_activity(project, redis_server, start_daphne):
    daphne = start_daphne(SSE_PUBLIC_STREAMS="notifications", SSE_RECHECK_INTERVAL="1")
    env = project.env(REDIS_URL=redis_server.url)
    pk, _ = project.run("-c", LOGIN_SCRIPT, "token-carol").stdout.split()
    token = project.manage("sse_token", f"user.{pk}", "--user", pk, env=env).stdout.strip()
    public = project.manage("sse_token", "notifications", "--user", pk, env=env).stdout.strip()
    stream = RawStream(daphne.port, f"/sse/user.{pk}/?token={token}")
    project.run("-c", DEACTIVATE_QUIETLY, pk)
    assert stream.ended_cleanly(), "closed by the re-check"
    for path in [f"/sse/user.{pk}/?token={token}", f"/sse/notifications/?token={public}"]:
        client = SSEConnection("127.0.0.1", daphne.port, path)
        assert client.wait_status() == 403, path
        assert client.wait(lambda c: b"inactive" in c.body, 5), bytes(client.body)
        client.close()
    project.run("-c", DELETE_USER, pk)
    assert status_of(daphne.port, f"/sse/user.{pk}/?token={token}") == 403


def test_the_demo_publishes_to_public_streams_only(project, start_daphne):
    daphne = start_daphne(SSE_DEMO_PUBLISH="1", SSE_PUBLIC_STREAMS="notifications")
    conn = http.client.HTTPConnection("127.0.0.1", daphne.port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    csrf = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie")).group(1)
    results = []
    for body in [
        b'{"stream": "notifications", "data": 1}',
        b'{"stream": "user.1", "data": "spoofed"}',
        b'{"stream": "notifications", "data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    ]:
        headers = {"Cookie": f"csrftoken={csrf}", "X-CSRFToken": csrf, "Content-Type": "application/json"}
        conn.request("POST", "/demo/publish/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        results.append(response.status)
    conn.close()
    assert results == [200, 403, 400]


# --- tokens stay out of every log, however they are spelled ------------------------------


def test_every_spelling_of_a_token_is_masked_in_nginx_and_daphne_logs(project, redis_server, tmp_path):
    path = bake(tmp_path / "bake", sse_mode=project.mode, project_name="Mask", daphne_port=str(free_port_pair()))
    baked = Project(path, project.mode, project.venv)
    daphnes, nginx, _ = serve_behind_nginx(baked, redis_server.url, tmp_path, SSE_PUBLIC_STREAMS="notifications")
    try:
        secrets = [f"SECRET{n}x" for n in range(5)]
        paths = [
            f"/sse/user.1/?a=1;token={secrets[0]}",
            f"/sse/user.1/?%74oken={secrets[1]}",
            f"/sse/user.1/?a=1%26token={secrets[2]}&b=2",
            f"/sse/user.1/?TOKEN={secrets[3]}",
            f"/sse/user.1/?a=1;%74%6F%6B%65%6E%3D{secrets[4]}",
        ]
        for path in paths:  # refused: Django reads only the literal "token=" after "?" or "&"
            client = SSEConnection("127.0.0.1", nginx.https, path, tls=True)
            assert client.wait_status() == 403, path
            client.close()
        log = nginx.workdir / "access.log"
        deadline = time.monotonic() + 10
        while log.read_text().count("[masked]") < len(paths) and time.monotonic() < deadline:
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while sum(d.output().count("[masked]") for d in daphnes) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.2)  # Daphne logs each request when its response ends
        for text in [log.read_text(), *(d.output() for d in daphnes)]:
            assert not [s for s in secrets if s in text], text
        assert log.read_text().count("[masked]") == len(paths), log.read_text()
        assert sum(d.output().count("[masked]") for d in daphnes) == len(paths)
    finally:
        nginx.stop()
        for daphne in daphnes:
            daphne.stop()
    for daphne in daphnes:
        assert "Traceback" not in daphne.output(), daphne.output()
