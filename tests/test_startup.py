"""What a first deploy meets at startup, per mode, against real Daphne processes and Redis.

- A Twisted whose internals were renamed (as an upgrade might) still serves every
  stream: one warning, then the ASGI path with Twisted's public flow control.
- Settings mistakes stop Daphne and ``manage.py check`` instead of turning every
  request into a 500.
- ``/health/`` answers a probe sent straight to an instance's address, with
  production settings, while every other path keeps its Host check and HTTPS redirect.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.sse_client import events_until_closed
from tests.test_e2e import Reconnecting, connect, health, raw_status, send_event

# Loaded at interpreter start (PYTHONPATH) in Daphne's process: Twisted's own modules,
# recompiled with the internals the fast path reads renamed everywhere in them, so
# Twisted itself still works as a new release would.
RENAMED_TWISTED = r"""
import importlib.util
import re
import sys


def renamed(name, renames):
    spec = importlib.util.find_spec(name)
    source = spec.loader.get_source(name)
    for old, new in renames.items():
        source, count = re.subn(rf"\b{old}\b", new, source)
        assert count, (name, old)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, spec.origin, "exec"), module.__dict__)
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


renamed(
    "twisted.internet.abstract",
    {"dataBuffer": "_pendingData", "offset": "_pendingOffset", "_tempDataLen": "_pendingLength"},
)
renamed("twisted.web.http", {"_disconnected": "_connectionGone"})
"""

WARNING = "live events go through ASGI"


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def renamed_twisted(tmp_path: Path) -> str:
    folder = tmp_path / "renamed-twisted"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(RENAMED_TWISTED)
    return str(folder)


def test_a_twisted_without_the_fast_paths_internals_still_serves_streams(project, redis_server, start_daphne, tmp_path):
    """Streams deliver, replay works, a stalled client is closed, and the process says so once."""
    daphne = start_daphne(PYTHONPATH=renamed_twisted(tmp_path), SSE_SEND_TIMEOUT="2")
    # Like browsers, readers reconnect with their last id if they are ever closed (a
    # loaded machine can leave one behind in a burst): they must get every event once.
    readers = [Reconnecting([daphne.port], "renamed") for _ in range(3)]
    stalled = socket.create_connection(("127.0.0.1", daphne.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /sse/renamed/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    stalled.recv(1)  # the response has started; from here it reads nothing

    ids = [send_event(project, redis_server.url, "renamed", "small", {"i": i}) for i in range(3)]
    for reader in readers:
        assert wait_for(lambda r=reader: len(r.all_events()) >= 3, 30)
        assert [e.id for e in reader.all_events()] == ids
    assert health(daphne)["direct"] == 0, "no stream on the fast path without its internals"
    # 6 MB: far more than the kernel's buffers and Twisted's own take for one client.
    flood = "import sys, django\ndjango.setup()\nfrom sse import publish\n"
    flood += "for i in range(600):\n    publish('renamed', 'big', {'i': i, 'pad': 'x' * 10_000})\n"
    project.run("-c", flood, env=project.env(REDIS_URL=redis_server.url))
    for reader in readers:
        assert wait_for(lambda r=reader: len(r.all_events()) >= 603, 90), len(reader.all_events())
        assert [json.loads(e.data)["i"] for e in reader.all_events()[3:]] == list(range(600))

    closed = ("closing a slow client of renamed", "closing a client that stopped reading")
    deadline = time.monotonic() + 20
    while not any(line in daphne.output() for line in closed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(line in daphne.output() for line in closed), daphne.output()
    assert len(events_until_closed(stalled)) < 603, (
        "closed before it got everything: it reconnects and replays the rest"
    )

    again = connect(daphne, "renamed", **{"Last-Event-ID": ids[0]})
    again.wait_events(602, timeout=60)
    assert [e.id for e in again.events[:2]] == ids[1:], "replay after the id, in order"
    assert [json.loads(e.data)["i"] for e in again.events[2:]] == list(range(600))
    again.close()
    for reader in readers:
        reader.stop()

    output = daphne.output()
    assert output.count(WARNING) == 1, output
    warning = next(line for line in output.splitlines() if WARNING in line)
    for name in ("dataBuffer", "offset", "_tempDataLen", "_disconnected"):
        assert name in warning, warning


def test_the_tested_twisted_range_is_pinned_and_in_it_the_fast_path_runs(project, start_daphne):
    """The other side of the test above: an installed Twisted in range gives no warning, and the fast path."""
    pyproject = (project.path / "pyproject.toml").read_text()
    assert '"Twisted>=24.7,<27"' in pyproject
    version = project.run("-c", "import twisted; print(twisted.__version__)").stdout.strip()
    assert 24 <= int(version.split(".")[0]) < 27, version
    daphne = start_daphne()
    reader = connect(daphne, "in-range")
    deadline = time.monotonic() + 10
    while health(daphne)["direct"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(daphne)["direct"] == 1
    reader.close()
    assert "WARNING sse " not in daphne.output(), "nothing missing, nothing to warn about"


def start_fails(project: Project, **env: str) -> subprocess.CompletedProcess:
    """Daphne with these settings: it must exit by itself; if it serves instead, say what it answers."""
    port = free_tcp_port()
    proc = subprocess.Popen(
        [str(project.venv / "bin" / "daphne"), "-p", str(port), "config.asgi:application"],
        cwd=project.path,
        env=project.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        status = raw_status(port, b"GET /health/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        proc.kill()
        proc.communicate()
        pytest.fail(f"Daphne started with {env} and answers /health/ with {status}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_empty_secret_key_is_refused_like_an_unset_one(project):
    check = project.manage("check", env=project.env(DJANGO_SECRET_KEY=""), check=False)
    assert check.returncode != 0 and "DJANGO_SECRET_KEY" in check.stderr, check.stderr
    daphne = start_fails(project, DJANGO_SECRET_KEY="")
    assert daphne.returncode != 0 and "DJANGO_SECRET_KEY" in daphne.stderr, daphne.stderr
    # With debug on (development), an empty key falls back to the development key as an unset one does.
    check = project.manage("check", env=project.env(DJANGO_SECRET_KEY="", DJANGO_DEBUG="1"), check=False)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ("sse.auth.defualt_policy", "sse.E010"),
        ("no_such_module.policy", "sse.E010"),
        ("sse.encoding.STREAM_NAME", "sse.E011"),
    ],
)
def test_a_bad_authorize_policy_stops_check_and_daphne(project, policy, code):
    check = project.manage("check", env=project.env(SSE_AUTHORIZE=policy), check=False)
    assert check.returncode != 0 and code in check.stderr and policy in check.stderr, check.stderr
    daphne = start_fails(project, SSE_AUTHORIZE=policy)
    assert daphne.returncode != 0 and code in daphne.stderr, daphne.stderr


def status_of(port: int, path: str, **headers: str) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_health_answers_a_probe_at_the_instance_address_with_production_settings(project, start_daphne):
    """As the README says: point the load balancer at each instance. Nothing else loosens."""
    daphne = start_daphne(
        DJANGO_ALLOWED_HOSTS="example.com", DJANGO_SECURE_SSL_REDIRECT="1", SSE_PUBLIC_STREAMS="notifications"
    )
    status, headers, body = status_of(daphne.port, "/health/")  # Host: 127.0.0.1:PORT, plain HTTP
    assert status == 200, (status, headers, body)
    assert json.loads(body)["status"] == "ok" and json.loads(body)["redis"] == "ok"
    assert headers.get("X-Content-Type-Options") == "nosniff", "SecurityMiddleware's headers still apply"
    for host in ("localhost", "evil.example.net", "127.0.0.1"):
        assert status_of(daphne.port, "/health/", Host=host)[0] == 200, host
    # Every other path keeps its Host check...
    for path in ("/", "/sse/notifications/", "/admin/", "/health"):
        assert status_of(daphne.port, path)[0] == 400, path
    # ...and its HTTPS redirect.
    for path in ("/", "/sse/notifications/", "/health/x"):
        status, headers, _ = status_of(daphne.port, path, Host="example.com")
        assert status == 301 and headers["Location"].startswith("https://example.com/"), (path, status)
    behind_nginx = b"GET /sse/notifications/ HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Proto: https\r\n\r\n"
    assert raw_status(daphne.port, behind_nginx) == 200


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new user's shell: nothing of this project set, .env decides."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "SSE_"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONWARNINGS="error::DeprecationWarning,error::PendingDeprecationWarning")
    env.update(extra)
    return env


def fresh_bake(project: Project, tmp_path: Path, name: str) -> tuple[Project, str]:
    """A new bake of the session's mode, sharing its virtualenv, and the post-gen message."""
    import sys

    from tests.conftest import ROOT

    out = tmp_path / name
    run = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", str(ROOT), "-o", str(out)]
        + [f"sse_mode={project.mode}", f"project_name={name}"],
        capture_output=True,
        text=True,
        check=True,
    )
    (path,) = out.iterdir()
    return Project(path, project.mode, project.venv), run.stdout


def test_runserver_prints_each_request_and_log_line_once(project, start_daphne):
    from tests.conftest import free_port

    port = free_port()
    server = start_daphne(runserver=True, port=port, DJANGO_DEBUG="1")
    assert status_of(port, "/not-here-once/")[0] == 404
    stream = connect(server, "once")
    stream.close()
    assert wait_for(lambda: "event=disconnect stream=once" in server.output(), 10), server.output()
    time.sleep(0.5)
    output = server.output()
    # A request line (Daphne's runserver log), a warning (django.request), an sse.access line.
    for line in ("GET /not-here-once/", "Not Found: /not-here-once/", "event=connect stream=once"):
        assert output.count(line) == 1, f"{line!r} {output.count(line)} times:\n{output}"
    assert output.count(f"serving listening=tcp:127.0.0.1:{port} ") == 1, output


def test_daphne_run_directly_in_debug_serves_the_demo_page_with_its_static_files(project, start_daphne):
    import re

    daphne = start_daphne(DJANGO_DEBUG="1")
    status, _headers, body = status_of(daphne.port, "/")
    assert status == 200
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', body.decode())
    assert any(a.endswith(".css") for a in assets) and any(a.endswith(".js") for a in assets), assets
    # demo.js imports the client module by a relative URL.
    assets.append("/static/demo/sse-client.js")
    for asset in assets:
        status, headers, content = status_of(daphne.port, asset)
        assert status == 200 and content, (asset, status)
        kind = "text/css" if asset.endswith(".css") else "javascript"
        assert kind in headers["Content-Type"], (asset, headers["Content-Type"])
    # With debug off the application serves none: nginx does (deploy/, tests/test_deploy.py).
    production = start_daphne()
    assert status_of(production.port, "/static/demo/demo.css")[0] == 404


def test_the_post_gen_second_terminal_steps_work_as_printed(project, redis_server, tmp_path):
    """Follow the message: without Redis send_event says what to add; with it, the event arrives."""
    import re
    import shlex

    from tests.conftest import Daphne, free_port

    baked, message = fresh_bake(project, tmp_path, "Second Terminal")
    for line in (
        "uv sync",
        "uv run python manage.py migrate",
        "uv run python manage.py runserver",
        "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt",
        "form on the page",
    ):
        assert line in message, message
    send = re.search(r"^ +uv run (python manage\.py send_event .*)$", message, re.M).group(1)
    argv = [project.python, *shlex.split(send)[1:]]
    env = clean_env()
    # Before the step: a one-line refusal that says exactly what to add.
    refused = subprocess.run(argv, cwd=baked.path, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "REDIS_URL=redis://127.0.0.1:6379/0" in refused.stderr
    # The step as printed, with this test's Redis port for the usual one.
    echo = re.search(r"^ +(echo 'REDIS_URL=redis://127\.0\.0\.1:6379/0' >> \.env)$", message, re.M).group(1)
    subprocess.run(["bash", "-c", echo.replace(":6379/", f":{redis_server.port}/")], cwd=baked.path, check=True)
    baked.manage("migrate", "-v0", env=env)
    port = free_port()
    server = Daphne(baked, port, env, tmp_path / "runserver.log", runserver=True)
    try:
        client = connect(server, "notifications")
        sent = subprocess.run(argv, cwd=baked.path, env=env, capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr
        (event,) = client.wait_events(1)
        assert event.id == sent.stdout.strip() and json.loads(event.data) == {"msg": "hi"}
        client.close()
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_the_environment_wins_over_dotenv_and_check_deploy_names_what_dotenv_set(project, tmp_path):
    baked, _message = fresh_bake(project, tmp_path, "Dotenv Precedence")
    (baked.path / ".env").write_text("DJANGO_DEBUG=1\nDJANGO_SECRET_KEY=from-dotenv\nSSE_MAX_STREAMS=7\n")
    env = clean_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="from-environment-" + "k" * 50)
    env.update(DJANGO_ALLOWED_HOSTS="example.com", DJANGO_SETTINGS_MODULE="config.settings")
    show = "from django.conf import settings as s; print(s.DEBUG, s.SECRET_KEY[:16], s.SSE_MAX_STREAMS)"
    out = baked.manage("shell", "-c", show, env=env).stdout.splitlines()[-1].split()
    assert out == ["False", "from-environment", "7"], "the environment wins; .env fills in the rest"
    check = baked.manage("check", "--deploy", "--fail-level", "WARNING", env=env, check=False)
    assert check.returncode != 0 and "sse.W008" in check.stderr + check.stdout
    assert ".env set SSE_MAX_STREAMS:" in check.stderr + check.stdout, "names only what came from .env"
    (baked.path / ".env").unlink()  # as deploy/README.md says
    baked.manage("check", "--deploy", "--fail-level", "WARNING", env=env)
