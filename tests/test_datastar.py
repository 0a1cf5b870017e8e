"""Datastar events end to end: real Redis, real Daphne, the independent parser, and Chromium on /datastar/."""

from __future__ import annotations

import json

from tests.conftest import Project
from tests.sse_client import SSEParser
from tests.test_browser import ARTIFACTS, browser  # noqa: F401 (a fixture)
from tests.test_e2e import connect

# Publishes each call of a JSON list with sse.datastar and prints the ids; with --expect,
# prints what datastar-py's own generator writes for the same calls (HTML escaped unless safe).
DATASTAR_SCRIPT = """
import json, sys, django
django.setup()
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe
from datastar_py import ServerSentEventGenerator as Datastar
from sse.datastar import publish_elements, publish_signals

stream, calls = sys.argv[1], json.loads(sys.stdin.read())
for kind, kwargs in calls:
    if kwargs.pop("safe", False):
        kwargs["html"] = mark_safe(kwargs["html"])
    if "--expect" in sys.argv:
        if kwargs.get("html") is not None:  # the project's rule: a plain str is escaped
            kwargs["html"] = conditional_escape(kwargs["html"])
        if kind == "signals":
            event = Datastar.patch_signals(kwargs["signals"], only_if_missing=kwargs.get("only_if_missing"))
        else:
            event = Datastar.patch_elements(
                kwargs.get("html"), selector=kwargs.get("selector"), mode=kwargs.get("mode"),
                use_view_transition=kwargs.get("view_transition"), namespace=kwargs.get("namespace"),
            )
        print(json.dumps(str(event)))
    elif kind == "signals":
        print(publish_signals(stream, **kwargs))
    else:
        print(publish_elements(stream, **kwargs))
"""


def datastar(project: Project, redis_url: str, stream: str, calls: list, expect: bool = False) -> list[str]:
    args = ["-c", DATASTAR_SCRIPT, stream, *(["--expect"] if expect else [])]
    result = project.run(*args, input=json.dumps(calls), env=project.env(REDIS_URL=redis_url))
    lines = result.stdout.splitlines()
    return [json.loads(line) for line in lines] if expect else lines


CALLS = [
    [
        "elements",
        {"html": "<li id='a'>one</li>\n<li id='b'>two \u2028 é</li>", "safe": True, "selector": "#l", "mode": "append"},
    ],
    ["elements", {"html": "<p id='status'>morphed</p>", "safe": True}],
    ["elements", {"html": "<script>alert(1)</script>", "selector": "#l", "mode": "append"}],
    ["elements", {"html": "<circle id='c'/>", "safe": True, "selector": "svg", "mode": "inner", "namespace": "svg"}],
    ["elements", {"selector": "#gone", "mode": "remove"}],
    ["signals", {"signals": {"last": "é ✓ \u2028", "n": [1, None, {"x": True}]}}],
    ["signals", {"signals": {"count": 0}, "only_if_missing": True}],
]


def parsed(frames: list[str]) -> list[tuple[str, str]]:
    parser = SSEParser()
    parser.feed("".join(frames).encode())
    return [(e.type, e.data) for e in parser.events]


def test_datastar_events_through_redis_and_daphne_are_what_datastar_py_writes(project, redis_server, start_daphne):
    """What a Datastar client parses equals datastar-py's own events, with our ids; a replay is the same."""
    a, b = start_daphne(), start_daphne()
    live = [connect(a, "ds-e2e"), connect(b, "ds-e2e")]
    expected = parsed(datastar(project, redis_server.url, "ds-e2e", CALLS, expect=True))
    ids = datastar(project, redis_server.url, "ds-e2e", CALLS)
    assert [t for t, _ in expected][:5] == ["datastar-patch-elements"] * 5
    assert "elements &lt;script&gt;alert(1)&lt;/script&gt;" in expected[2][1]
    for client in live:
        events = client.wait_events(len(CALLS))
        assert [(e.type, e.data) for e in events] == expected
        assert [e.id for e in events] == ids
        client.close()
    again = connect(b, "ds-e2e", **{"Last-Event-ID": ids[1]})
    replayed = again.wait_events(len(CALLS) - 2)
    assert [(e.type, e.data, e.id) for e in replayed] == [
        (*pair, i) for pair, i in zip(expected[2:], ids[2:], strict=True)
    ]
    again.close()


def items(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.get_attribute("id") or li.text for li in driver.find_elements(By.CSS_SELECTOR, "#ds-items > li")]


def test_datastar_page_patches_elements_and_signals_and_replays_after_a_restart(
    project,
    redis_server,
    start_daphne,
    browser,  # noqa: F811
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def publish(*calls: list) -> list[str]:
        return datastar(project, redis_server.url, "datastar", list(calls))

    # The page goes live from the newest id it renders with: give it one, so nothing races its first connect.
    publish(["signals", {"signals": {"last": "before the page"}}])
    server = start_daphne(runserver=True, DJANGO_DEBUG="1")
    browser.get(f"http://127.0.0.1:{server.port}/datastar/")
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    text = lambda selector: browser.find_element(By.CSS_SELECTOR, selector).text  # noqa: E731
    append = {"selector": "#ds-items", "mode": "append", "safe": True}
    publish(
        ["elements", {"html": "<li id='first'>first</li>", **append}],
        ["signals", {"signals": {"last": "hello ✓"}}],
        ["elements", {"html": "<p id='ds-status' class='hint'>morphed in place</p>", "safe": True}],
        [
            "elements",
            {
                "html": "<li id='x'><script>window.pwned = 1</script>escaped</li>",
                "selector": "#ds-items",
                "mode": "append",
            },
        ],
    )
    wait.until(lambda d: text("#ds-last") == "hello ✓")
    wait.until(lambda d: text("#ds-status") == "morphed in place")
    wait.until(lambda d: "escaped" in text("#ds-items"))
    assert items(browser)[0] == "first"
    assert "<script>window.pwned = 1</script>" in text("#ds-items"), "shown as text"
    assert browser.execute_script("return window.pwned") is None

    # The form: Datastar's @post sends the signals, the view publishes three events with sse.datastar.
    field = browser.find_element(By.ID, "ds-message")
    field.send_keys("<b>from the form</b>")
    browser.find_element(By.ID, "ds-send").click()
    wait.until(lambda d: text("#ds-last") == "<b>from the form</b>")
    wait.until(lambda d: "<b>from the form</b>" in text("#ds-items"))
    wait.until(lambda d: field.get_attribute("value") == "", "the @post answer clears the input")
    assert not browser.find_elements(By.CSS_SELECTOR, "#ds-items b")
    logs = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not logs, logs
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"datastar-{project.mode}.png"))

    before = items(browser)
    server.stop()
    publish(
        ["elements", {"html": "<li id='during-1'>during 1</li>", **append}],
        ["elements", {"html": "<li id='during-2'>during 2</li>", **append}],
        ["signals", {"signals": {"last": "during the outage"}}],
    )
    start_daphne(runserver=True, port=server.port, DJANGO_DEBUG="1")
    wait.until(lambda d: "during-2" in items(d))
    wait.until(lambda d: text("#ds-last") == "during the outage")
    assert items(browser) == [*before, "during-1", "during-2"], "replayed once each, in order"
