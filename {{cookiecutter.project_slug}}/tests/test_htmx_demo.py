"""The htmx page: rows rendered by one partial for the page and for events, its form, htmx 2 and 4."""

import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.test import AsyncClient, Client

from demo.models import Order
from demo.orders import EVENT, STREAM
from sse import apublish
from sse.backends import get_broker

pytestmark = pytest.mark.django_db(transaction=True)


def orders_list(page: str) -> str:
    match = re.search(r'<ul id="orders"[^>]*>(.*?)</ul>', page, re.S)
    assert match, page
    return match.group(0)


async def last_event(stream: str = STREAM) -> tuple[str, str, str]:
    entries = await get_broker().arecent(stream, 1)
    assert entries, "nothing was published"
    return entries[-1]


async def test_the_page_renders_the_orders_with_the_partial_events_use(backend):
    first = await Order.objects.acreate(title="Tea <for two>", status=Order.Status.PREPARING)
    second = await Order.objects.acreate(title="Cake")
    event_id = await apublish(STREAM, "order", {"older": "event"})
    page = (await AsyncClient().get("/htmx/")).content.decode()
    rows = orders_list(page)
    assert re.findall(r'<li id="(order-\d+)"', rows) == [f"order-{first.pk}", f"order-{second.pk}"]
    assert "Tea &lt;for two&gt;" in rows and "<for two>" not in rows, "titles are escaped"
    assert f'<li id="order-{first.pk}" class="event order" data-status="preparing">' in rows
    # htmx 2 by default: an EventSource that goes live after the newest event of the stream.
    assert f'sse-connect="/sse/{STREAM}/?last_event_id={event_id}"' in page
    assert f'sse-swap="{EVENT}" hx-swap="beforeend"' in rows
    assert 'src="/static/django_htmx/htmx-2.min.js"' in page
    assert 'src="/static/django_htmx/ext/hx-sse-2.min.js"' in page
    assert "hx-sse:connect" not in page


async def test_htmx_4_is_one_parameter_away(backend):
    page = (await AsyncClient().get("/htmx/?htmx=4")).content.decode()
    rows = orders_list(page)
    # An empty log: no last id, the stream is read from its start.
    assert f'hx-sse:connect="/sse/{STREAM}/"' in rows
    assert "hx-on::before:sse:message=" in rows, "named events are swapped, not only dispatched"
    assert rows.endswith("></ul>"), "an empty list is :empty, so the page says it waits for orders"
    # Loaded while the page parses, in this order: deferred, htmx 4 could start before its
    # SSE extension registered, and the page would never connect.
    core = '<script src="/static/django_htmx/htmx-4.min.js"></script>'
    extension = '<script src="/static/django_htmx/ext/hx-sse-4.min.js"></script>'
    assert core in page and extension in page and page.index(core) < page.index(extension)
    assert "sse-connect=" not in page


@pytest.mark.parametrize("value", ["3", "", "two"])
def test_an_unknown_htmx_version_is_a_400(value):
    response = Client().get("/htmx/", {"htmx": value})
    assert response.status_code == 400
    assert response.content == b"htmx must be 2 or 4"


@pytest.mark.parametrize(
    "path", ["django_htmx/htmx-2.min.js", "django_htmx/ext/hx-sse-2.min.js", "django_htmx/htmx-4.min.js"]
)
def test_htmx_comes_from_django_htmx_static_files(path):
    assert finders.find(path), f"{path} is not a static file"


def test_the_page_loads_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/htmx/")
    assert response.status_code == 200
    assert f'sse-connect="/sse/{STREAM}/"' in response.content.decode()


def post(client: Client, data: dict, **extra):
    return client.post("/htmx/orders/", data, HTTP_HX_REQUEST="true", **extra)


async def test_a_new_order_is_published_on_commit_as_its_row(backend, settings):
    settings.SSE_DEMO_PUBLISH = True
    response = await sync_to_async(post)(Client(), {"title": "<script>alert(1)</script>", "status": "received"})
    assert response.status_code == 200, response.content
    order = await Order.objects.aget()
    assert f"Order #{order.pk} created" in response.content.decode()
    event_id, name, data = await last_event()
    assert name == EVENT
    assert data.startswith(f'<li id="order-{order.pk}" class="event order" data-status="received">')
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in data and "<script>" not in data
    assert "hx-swap-oob" not in data, "a new row is appended"
    page = (await AsyncClient().get("/htmx/")).content.decode()
    assert data in orders_list(page), "the same partial renders the page's row and the event"
    assert f"last_event_id={event_id}" in page


async def test_a_change_replaces_the_row_in_place(backend, settings):
    settings.SSE_DEMO_PUBLISH = True
    order = await Order.objects.acreate(title="Soup")
    response = await sync_to_async(post)(Client(), {"number": order.pk, "status": "shipped"})
    assert response.status_code == 200, response.content
    assert f"Order #{order.pk} updated" in response.content.decode()
    await order.arefresh_from_db()
    assert (order.title, order.status) == ("Soup", "shipped"), "an empty title keeps the old one"
    _, _, data = await last_event()
    assert data.startswith(f'<li id="order-{order.pk}" class="event order" data-status="shipped" hx-swap-oob="true">')


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"title": "", "status": "received"}, "A new order needs a title."),
        ({"title": "x", "status": "lost"}, "Select a valid choice."),
        ({"title": "x" * 201, "status": "received"}, "at most 200 characters"),
        ({"number": "0", "status": "received"}, "greater than or equal to 1"),
        ({"number": "999", "status": "received"}, "There is no order #999."),
    ],
    ids=["no-title", "bad-status", "long-title", "bad-number", "unknown-order"],
)
async def test_invalid_orders_are_a_422_with_the_reason(backend, settings, data, message):
    settings.SSE_DEMO_PUBLISH = True
    response = await sync_to_async(post)(Client(), data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert 'data-status="error"' in response.content.decode()
    assert await get_broker().arecent(STREAM, 1) == [], "nothing published"


def test_the_form_needs_the_csrf_token(settings):
    settings.SSE_DEMO_PUBLISH = True
    client = Client(enforce_csrf_checks=True)
    assert post(client, {"title": "x", "status": "received"}).status_code == 403
    page = client.get("/htmx/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = post(client, {"title": "x", "status": "received", "csrfmiddlewaretoken": token})
    assert response.status_code == 200, response.content


def test_only_staff_may_publish_in_production(settings):
    settings.SSE_DEMO_PUBLISH = False
    response = post(Client(), {"title": "x", "status": "received"})
    assert response.status_code == 403
    assert "DEBUG or staff only" in response.content.decode()
    assert not Order.objects.exists()
    assert 'id="order-form"' not in Client().get("/htmx/").content.decode()
    staff = User.objects.create_user("staff", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert 'id="order-form"' in client.get("/htmx/").content.decode()
    assert post(client, {"title": "x", "status": "received"}).status_code == 200


def test_the_demo_page_links_to_the_htmx_page():
    assert 'href="/htmx/"' in Client().get("/").content.decode()
