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
    shown = item.find_element(By.CSS_SELECTOR, "pre.event-data").text
    assert json.loads(shown) == {"msg": "hello browser ✓"}
    wait.until(lambda d: d.find_element(By.ID, "last-id").text.strip() == event_id)
    logs = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not logs, logs
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"demo-{project.mode}.png"))


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
    assert json.loads(item.find_element(By.CSS_SELECTOR, "pre.event-data").text) == {"msg": "from the form"}
    assert item.get_attribute("data-event-id") in browser.find_element(By.ID, "publish-result").text
