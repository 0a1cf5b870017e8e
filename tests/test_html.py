"""HTML events end to end, per mode: send_event --html/--template through a real Redis to
clients on other Daphne processes, read with the independent parser of tests/sse_client.py.
"""

from __future__ import annotations

import json
import time

from tests.conftest import Project
from tests.sse_client import SSEConnection
from tests.test_e2e import SESSION_SCRIPT, connect

# CRLF, a lone CR, a blank line (which would end the event if it were not a data: line),
# indentation, non-ASCII and a trailing newline.
FRAGMENT = '<li class="order" id="order-7">\r\n  <b>Ann &amp; Bob</b>\n\n  <span>paid ✓</span>\r</li>\n'
RECEIVED = FRAGMENT.replace("\r\n", "\n").replace("\r", "\n")
FRAME_DATA = (
    'data: <li class="order" id="order-7">\ndata:   <b>Ann &amp; Bob</b>\ndata: \n'
    "data:   <span>paid ✓</span>\ndata: </li>\ndata: \n\n"
).encode()


def send_html(project: Project, redis_url: str, stream: str, event: str, html: str) -> str:
    # As an argument, not stdin: text-mode stdin would turn the CRs into LFs before the command sees them.
    result = project.manage(
        "send_event", stream, "--event", event, "--html", html, env=project.env(REDIS_URL=redis_url)
    )
    return result.stdout.strip()


def test_an_html_fragment_arrives_as_its_lines_and_is_replayed(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    stream = f"html-{project.mode}"
    clients = [connect(a, stream), connect(b, stream)]
    first = send_html(project, redis_server.url, stream, "order", FRAGMENT)
    for client in clients:
        (event,) = client.wait_events(1)
        assert (event.id, event.type, event.data) == (first, "order", RECEIVED)
        frame = f"id: {first}\nevent: order\n".encode() + FRAME_DATA
        assert frame in bytes(client.body), "exactly those data lines, one per line of the fragment"
        client.close()
    # Missed while away, then replayed by the other process, in order, once each.
    missed = [send_html(project, redis_server.url, stream, "order", f"<li>{n}</li>\n<li>{n}b</li>") for n in range(3)]
    again = connect(b, stream, **{"Last-Event-ID": first})
    again.wait_events(3)
    time.sleep(0.3)  # a duplicate would show up by now
    assert [(e.id, e.data) for e in again.events] == [
        (id, f"<li>{n}</li>\n<li>{n}b</li>") for n, id in enumerate(missed)
    ]
    again.close()


def test_template_renders_a_partial_autoescaped(project, redis_server, start_daphne):
    daphne = start_daphne()
    stream = f"html-tpl-{project.mode}"
    client = connect(daphne, stream)
    context = {"event": {"id": "1-0", "name": "<img src=x onerror=alert(1)>", "data": "a & b"}}
    env = project.env(REDIS_URL=redis_server.url)
    args = ["send_event", stream, "--event", "row", "--template", "demo/index.html#event", "--context"]
    event_id = project.manage(*args, json.dumps(context), env=env).stdout.strip()
    (event,) = client.wait_events(1)
    assert event.id == event_id and event.data.startswith('<li class="event" data-event-id="1-0"')
    assert "&lt;img src=x onerror=alert(1)&gt;" in event.data and "<img" not in event.data
    assert '<pre class="event-data">a &amp; b</pre>' in event.data
    client.close()
    missing = project.manage("send_event", stream, "--template", "nope.html", env=env, check=False)
    assert missing.returncode != 0 and missing.stderr.strip() == "CommandError: template not found: nope.html"


def test_html_on_a_multi_stream_connection_with_replay(project, redis_server, start_daphne):
    a, b = start_daphne(), start_daphne()
    one, two = f"html-m1-{project.mode}", f"html-m2-{project.mode}"
    path = f"/sse/?stream={one}&stream={two}"
    first = SSEConnection("127.0.0.1", a.port, path)
    assert first.wait_status() == 200
    assert first.wait(lambda c: c.parser.retry is not None, 5)
    sent = [send_html(project, redis_server.url, s, "row", f"<p>{s}</p>\n\n<p>end</p>") for s in (one, two)]
    seen = first.wait_events(2)
    assert [e.data for e in seen] == [f"<p>{s}</p>\n\n<p>end</p>" for s in (one, two)]
    assert [e.id.split(",")[0] for e in seen] == [f"{one}:{sent[0]}", f"{two}:{sent[1]}"]
    first.close()
    missed = [send_html(project, redis_server.url, s, "row", f"<p>missed {s}</p>") for s in (two, one)]
    again = SSEConnection("127.0.0.1", b.port, path, {"Last-Event-ID": seen[-1].id})
    again.wait_events(2)
    time.sleep(0.3)
    # Replay goes stream by stream (order is per stream): compare by the event's own position.
    got = sorted((e.id.split(",")[0], e.data) for e in again.events)
    assert got == sorted(
        [(f"{two}:{missed[0]}", f"<p>missed {two}</p>"), (f"{one}:{missed[1]}", f"<p>missed {one}</p>")]
    )
    again.close()


def test_a_private_streams_html_needs_authorization_like_json(project, redis_server, start_daphne):
    daphne = start_daphne(SSE_PUBLIC_STREAMS="notifications")
    alice_pk, alice_session = project.run("-c", SESSION_SCRIPT, "alice").stdout.split()
    stream = f"user.{alice_pk}"
    anonymous = SSEConnection("127.0.0.1", daphne.port, f"/sse/{stream}/")
    assert anonymous.wait_status() == 403
    anonymous.close()
    mine = connect(daphne, stream, Cookie=f"sessionid={alice_session}")
    event_id = send_html(project, redis_server.url, stream, "private", "<p>for alice</p>\n<p>only</p>")
    (event,) = mine.wait_events(1)
    assert (event.id, event.data) == (event_id, "<p>for alice</p>\n<p>only</p>")
    mine.close()
