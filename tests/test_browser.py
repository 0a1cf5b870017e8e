"""Headless Chromium (Debian's chromium and chromium-driver) on the demo page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_e2e import send_event

ARTIFACTS = Path(__file__).resolve().parent.parent / "build"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("chromium and chromium-driver are not installed: run tests/run.sh, which installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        "--ignore-certificate-errors",  # the nginx test's self-signed certificate
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_demo_page_shows_an_event_published_by_send_event(project, redis_server, start_daphne, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    daphne = start_daphne(runserver=True, DJANGO_DEBUG="1")
    browser.get(f"http://127.0.0.1:{daphne.port}/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "state").text.strip().lower() == "open")
    event_id = send_event(project, redis_server.url, "notifications", "notification", {"msg": "hello browser ✓"})
    selector = f'.feed[data-stream="notifications"] li.event[data-event-id="{event_id}"]'
    item = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector))
    assert item.get_attribute("data-event-name") == "notification"
    shown = wait.until(lambda d: visible_data(item))
    assert json.loads(shown) == {"msg": "hello browser ✓"}
    wait.until(lambda d: d.find_element(By.ID, "last-id").text.strip() == event_id)
    logs = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not logs, logs
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"demo-{project.mode}.png"))


def visible_data(item) -> str:
    """The row's data as shown: empty while the row fades in (Selenium reads no text at opacity 0)."""
    from selenium.webdriver.common.by import By

    return item.find_element(By.CSS_SELECTOR, "pre.event-data").text


def test_without_redis_the_demo_form_publishes_live(project, start_daphne, browser):
    """The first run: runserver, no REDIS_URL, events from the page's own form."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_daphne(runserver=True, DJANGO_DEBUG="1", REDIS_URL="")
    browser.get(f"http://127.0.0.1:{server.port}/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.ID, "state").text.strip().lower() == "open")
    browser.find_element(By.ID, "publish-event").clear()
    browser.find_element(By.ID, "publish-event").send_keys("greeting")
    data = browser.find_element(By.ID, "publish-data")
    data.clear()
    data.send_keys('{"msg": "from the form"}')
    browser.find_element(By.CSS_SELECTOR, "#publish-form button[type=submit]").click()
    selector = '.feed[data-stream="notifications"] li.event[data-event-name="greeting"]'
    item = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector))
    assert json.loads(wait.until(lambda d: visible_data(item))) == {"msg": "from the form"}
    assert item.get_attribute("data-event-id") in browser.find_element(By.ID, "publish-result").text


def feed_ids(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    items = browser.find_elements(By.CSS_SELECTOR, '.feed[data-stream="notifications"] li.event')
    return [item.get_attribute("data-event-id") for item in items]


def state(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "state").text.strip().lower()


def test_a_server_restart_shows_reconnecting_then_replays_what_was_missed(project, redis_server, start_daphne, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_daphne(runserver=True, DJANGO_DEBUG="1")
    browser.get(f"http://127.0.0.1:{server.port}/")
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    wait.until(lambda d: state(d) == "open")
    history = feed_ids(browser)  # earlier tests' events, which the page renders with itself
    before = send_event(project, redis_server.url, "notifications", "notification", {"n": "before"})
    wait.until(lambda d: before in feed_ids(d))
    server.stop()
    wait.until(lambda d: state(d) == "reconnecting")
    during = send_event(project, redis_server.url, "notifications", "notification", {"n": "during the outage"})
    start_daphne(runserver=True, port=server.port, DJANGO_DEBUG="1")
    wait.until(lambda d: during in feed_ids(d))
    assert state(browser) == "open"
    assert sorted(feed_ids(browser)) == sorted([*history, before, during]), "replayed once, nothing lost"


def test_behind_nginx_a_502_is_retried_until_the_servers_are_back(project, redis_server, browser, tmp_path):
    """EventSource gives up on a 502; the demo's client probes, backs off and recovers."""
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import Daphne, Project, bake
    from tests.test_deploy import free_port_pair, serve_behind_nginx

    first = free_port_pair()
    path = bake(tmp_path / "bake", sse_mode=project.mode, project_name="Behind Nginx", daphne_port=str(first))
    baked = Project(path, project.mode, project.venv)
    daphnes, nginx, env = serve_behind_nginx(baked, redis_server.url, tmp_path, DJANGO_DEBUG="1")
    ports = [daphne.port for daphne in daphnes]
    try:
        browser.get(f"https://127.0.0.1:{nginx.https}/")
        wait = WebDriverWait(browser, 60, poll_frequency=0.1)
        wait.until(lambda d: state(d) == "open")
        history = feed_ids(browser)  # the page renders a stream's newest events with itself
        seen = send_event(baked, redis_server.url, "notifications", "notification", {"n": "before"})
        wait.until(lambda d: seen in feed_ids(d))  # the page now has a last id to resume from
        for daphne in daphnes:
            daphne.stop()
        access_log = tmp_path / "nginx" / "access.log"
        wait.until(lambda d: "/sse/notifications/" in access_log.read_text() and '" 502 ' in access_log.read_text())
        wait.until(lambda d: state(d) == "reconnecting")  # EventSource alone would have given up
        missed = send_event(baked, redis_server.url, "notifications", "notification", {"n": "while down"})
        daphnes = [Daphne(baked, port, env, tmp_path / f"d{port}-again.log") for port in ports]
        wait.until(lambda d: missed in feed_ids(d))
        assert state(browser) == "open"
        assert sorted(feed_ids(browser)) == sorted([*history, seen, missed])
    finally:
        nginx.stop()
        for daphne in daphnes:
            daphne.stop()


def test_the_js_client_stops_and_says_why_on_403_and_404(project, start_daphne, browser):
    server = start_daphne(runserver=True, DJANGO_DEBUG="1", REDIS_URL="", SSE_PUBLIC_STREAMS="notifications,chat")
    browser.get(f"http://127.0.0.1:{server.port}/")
    browser.set_script_timeout(30)
    outcome = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const { SSEClient } = await import('/static/demo/sse-client.js');
        const results = {};
        for (const url of ['/sse/user.999/', '/sse/bad%20name/']) {
          results[url] = await new Promise((resolve) => {
            new SSEClient(url, { onStateChange(state, detail) {
              if (state === 'closed') resolve({ status: detail.status, reason: detail.reason });
            } });
          });
        }
        done(results);
        """
    )
    assert outcome["/sse/user.999/"]["status"] == 403 and outcome["/sse/user.999/"]["reason"]
    assert outcome["/sse/bad%20name/"]["status"] == 404 and outcome["/sse/bad%20name/"]["reason"]
