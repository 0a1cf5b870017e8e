"""Headless Chromium on the htmx page (/htmx/), with htmx 2 and with htmx 4.

Fragments come from other processes (``send_event --html``, ``publish_fragment``, the
page's form), through a real Redis and Daphne, as a deployment gets them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests import test_browser

browser = test_browser.browser  # the same headless Chromium fixture
ARTIFACTS = Path(__file__).resolve().parent.parent / "build"
VERSIONS = [pytest.param(version, id=f"htmx{version}") for version in (2, 4)]


def send_html(project, redis_url: str, html: str) -> str:
    """``send_event orders --event order --html -``: the operator's fragment, sent as given."""
    result = project.manage(
        "send_event", "orders", "--event", "order", "--html", "-", input=html, env=project.env(REDIS_URL=redis_url)
    )
    return result.stdout.strip()


def publish_fragment(project, redis_url: str, text: str) -> None:
    """``publish_fragment`` with a plain str, as code passing user input would: escaped."""
    code = f"from sse import publish_fragment; publish_fragment('orders', 'order', {text!r})"
    project.manage("shell", "-c", code, env=project.env(REDIS_URL=redis_url))


def row_ids(driver, prefix: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#orders > li')].map((li) => li.id).filter((id) => id.startsWith(arguments[0]))",
        prefix,
    )


def element(driver, id: str, expression: str = "element.textContent"):
    """A property of element ``id`` read in one step: a swap may replace it between two WebDriver calls."""
    return driver.execute_script(
        f"const element = document.getElementById(arguments[0]); return element && {expression}", id
    )


def open_page(driver, server, version: int):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"http://127.0.0.1:{server.port}/htmx/?htmx={version}")
    wait = WebDriverWait(driver, 60, poll_frequency=0.1)  # htmx 4 backs off up to 60 s between reconnects
    try:
        wait.until(lambda d: d.find_element(By.ID, "state").text.strip() == "open")
    except TimeoutException:
        state = driver.find_element(By.ID, "state").text
        raise AssertionError(f"not connected ({state}): {driver.get_log('browser')}") from None
    assert driver.execute_script("return htmx.version").startswith(str(version))
    return wait


@pytest.mark.parametrize("version", VERSIONS)
def test_fragments_appear_update_in_place_and_escaped_ones_never_run(
    project, redis_server, start_daphne, browser, version
):
    from selenium.webdriver.common.by import By

    server = start_daphne(runserver=True, DJANGO_DEBUG="1")
    wait = open_page(browser, server, version)
    tag = f"t{uuid.uuid4().hex[:8]}-"

    # send_event --html: appended to the list, as HTML.
    send_html(project, redis_server.url, f'<li id="{tag}a" class="event order">first <b>bold</b>\n\nline</li>')
    wait.until(lambda d: row_ids(d, tag) == [f"{tag}a"])
    assert browser.find_element(By.CSS_SELECTOR, f"#{tag}a b").text == "bold"
    send_html(project, redis_server.url, f'<li id="{tag}b" class="event order">second</li>')
    wait.until(lambda d: row_ids(d, tag) == [f"{tag}a", f"{tag}b"])

    # An update (hx-swap-oob) replaces the row with that id where it stands.
    send_html(project, redis_server.url, f'<li id="{tag}a" class="event order" hx-swap-oob="true">changed</li>')
    wait.until(lambda d: element(d, f"{tag}a") == "changed")
    assert row_ids(browser, tag) == [f"{tag}a", f"{tag}b"], "replaced in place, not appended"

    # The trusted operator's --html runs as given (htmx runs swapped scripts): the control.
    send_html(project, redis_server.url, f'<li id="{tag}c"><script>window.operatorRan = true</script></li>')
    wait.until(lambda d: d.execute_script("return window.operatorRan === true"))

    # A plain str from code is escaped: shown as text, never run.
    publish_fragment(project, redis_server.url, "<script>window.pwned = true</script>")
    wait.until(lambda d: "<script>window.pwned = true</script>" in d.find_element(By.ID, "orders").text)
    assert browser.execute_script("return window.pwned") is None

    # The page's form: saved, rendered by the partial on commit, and published; the title escaped.
    title = '<img src="data:," onerror="window.formPwned = true">'
    browser.find_element(By.ID, "order-title").clear()
    browser.find_element(By.ID, "order-title").send_keys(title)
    browser.find_element(By.CSS_SELECTOR, "#order-form button[type=submit]").click()
    result = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#publish-result [data-status]"))
    number = result.text.split("#")[1].split()[0]
    wait.until(lambda d: element(d, f"order-{number}"))
    assert element(browser, f"order-{number}", "element.querySelector('.order-title').textContent") == title
    assert browser.execute_script("return window.formPwned") is None

    # Changing that order through the form replaces its row in place.
    browser.find_element(By.ID, "order-number").send_keys(number)
    browser.find_element(By.ID, "order-title").clear()
    browser.find_element(By.CSS_SELECTOR, "#order-status option[value=shipped]").click()
    browser.find_element(By.CSS_SELECTOR, "#order-form button[type=submit]").click()
    wait.until(lambda d: element(d, f"order-{number}", "element.dataset.status") == "shipped")
    assert len(browser.find_elements(By.ID, f"order-{number}")) == 1
    assert element(browser, f"order-{number}", "element.querySelector('.order-title').textContent") == title

    # A bad form is refused with its reason, shown on the page.
    browser.find_element(By.ID, "order-number").clear()
    browser.find_element(By.ID, "order-number").send_keys("999999")
    browser.find_element(By.CSS_SELECTOR, "#order-form button[type=submit]").click()
    wait.until(lambda d: "There is no order #999999." in d.find_element(By.ID, "publish-result").text)

    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "/htmx/orders/" not in e["message"]]
    assert not logs, logs

    # The screenshot: after a reload, the rows the page renders from the table.
    browser.find_element(By.ID, "order-number").clear()
    for title, status in [("Flat white, oat milk", "preparing"), ("Croissant × 2", "received")]:
        browser.find_element(By.ID, "order-title").clear()
        browser.find_element(By.ID, "order-title").send_keys(title)
        browser.find_element(By.CSS_SELECTOR, f"#order-status option[value={status}]").click()
        browser.find_element(By.CSS_SELECTOR, "#order-form button[type=submit]").click()
        wait.until(lambda d, title=title: title in d.find_element(By.ID, "orders").text)
    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "state").text.strip() == "open")
    time.sleep(0.5)  # the rows' fade-in
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"htmx{version}-{project.mode}.png"))


@pytest.mark.parametrize("version", VERSIONS)
def test_after_a_restart_the_fragments_sent_meanwhile_appear_once_each_in_order(
    project, redis_server, start_daphne, browser, version
):
    server = start_daphne(runserver=True, DJANGO_DEBUG="1")
    wait = open_page(browser, server, version)
    tag = f"r{uuid.uuid4().hex[:8]}-"
    send_html(project, redis_server.url, f'<li id="{tag}0" class="event order">before</li>')
    wait.until(lambda d: row_ids(d, tag) == [f"{tag}0"])
    server.stop()
    missed = [f"{tag}{n}" for n in range(1, 4)]
    for row in missed:
        send_html(project, redis_server.url, f'<li id="{row}" class="event order">while down</li>')
    start_daphne(runserver=True, port=server.port, DJANGO_DEBUG="1")
    wait.until(lambda d: len(row_ids(d, tag)) >= 4)
    wait.until(lambda d: d.find_element("id", "state").text.strip() == "open")
    assert row_ids(browser, tag) == [f"{tag}0", *missed], "replayed once each, in order"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_reset_reloads_the_rows_from_the_table(project, redis_server, start_daphne, browser, version):
    """Back with an id the log no longer has: the rows missed are gone from it, so the page reloads."""
    import subprocess

    server = start_daphne(runserver=True, DJANGO_DEBUG="1")
    wait = open_page(browser, server, version)
    tag = f"x{uuid.uuid4().hex[:8]}-"
    send_html(project, redis_server.url, f'<li id="{tag}0" class="event order">seen</li>')
    wait.until(lambda d: row_ids(d, tag) == [f"{tag}0"])
    browser.execute_script("window.beforeReset = true")
    server.stop()
    cli = ["redis-cli", "-p", str(redis_server.port)]
    keys = subprocess.run([*cli, "--scan", "--pattern", "*:orders"], capture_output=True, text=True, check=True)
    assert keys.stdout.split(), "the orders log"
    subprocess.run([*cli, "DEL", *keys.stdout.split()], capture_output=True, check=True)  # the log is lost
    send_html(project, redis_server.url, f'<li id="{tag}1" class="event order">after the loss</li>')
    start_daphne(runserver=True, port=server.port, DJANGO_DEBUG="1")
    wait.until(lambda d: d.execute_script("return window.beforeReset === undefined && !!window.htmx"))
    wait.until(lambda d: d.find_element("id", "state").text.strip() == "open")
    assert row_ids(browser, tag) == [], "the page now shows the table's rows, from the log's new position"
