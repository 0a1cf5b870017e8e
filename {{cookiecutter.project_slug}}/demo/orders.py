"""The htmx page: a list of orders that grows and changes live, as HTML over SSE.

Rows are rendered by one partial, ``demo/htmx.html#order``: for the page, and for
every event, through ``publish_html_on_commit``. htmx swaps each event into the list.
"""

from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from demo.forms import OrderForm
from demo.models import Order
from demo.views import PROJECT_NAME, can_publish
from sse import publish_html_on_commit
from sse.backends import BrokerUnavailable, get_broker

STREAM = "orders"
EVENT = "order"
ROWS = 50  # newest orders rendered with the page
HTMX_VERSIONS = {"2": 2, "4": 4}


@require_GET
@ensure_csrf_cookie
async def page(request: HttpRequest) -> HttpResponse:
    version = HTMX_VERSIONS.get(request.GET.get("htmx", "2"))
    if version is None:
        return HttpResponseBadRequest("htmx must be 2 or 4", content_type="text/plain")
    # The stream's position first, then the rows: an order saved in between is then on
    # the page and replayed too (a new one may show twice until a reload), never missing.
    try:
        last_id = await get_broker().alast_id(STREAM) or ""
    except BrokerUnavailable:
        last_id = ""  # the page still loads; htmx keeps reconnecting until the broker is back
    orders = [order async for order in Order.objects.order_by("-pk")[:ROWS]]
    context = {
        "project_name": PROJECT_NAME,
        "htmx_version": version,
        "orders": reversed(orders),
        "stream": STREAM,
        "event": EVENT,
        "last_id": last_id,
        "statuses": Order.Status.choices,
        "can_publish": await can_publish(request),
    }
    return render(request, "demo/htmx.html", context)


def save_and_publish(form: OrderForm) -> tuple[Order, bool]:
    """Create or change the order; its row goes to every reader once the transaction commits."""
    number, title, status = form.cleaned_data["number"], form.cleaned_data["title"], form.cleaned_data["status"]
    with transaction.atomic():
        if number is None:
            order, created = Order.objects.create(title=title, status=status), True
        else:
            order = Order.objects.select_for_update().get(pk=number)
            order.title, order.status, created = title or order.title, status, False
            order.save()
        # A new row is appended to the list; a changed one replaces its old self by id
        # (hx-swap-oob), wherever it is. Rendered with autoescaping: a title is shown to everyone.
        publish_html_on_commit(STREAM, EVENT, "demo/htmx.html#order", {"order": order, "oob": not created})
    return order, created


@require_POST
async def publish(request: HttpRequest) -> HttpResponse:
    """The page's form: save an order and answer with a one-line result that htmx shows.

    Invalid input is a 422 (Unprocessable Content) with the reason. Not a 400: in DEBUG,
    django-htmx's script replaces the whole page with a 400, 403, 404 or 500 answer.
    """
    context: dict[str, Any] = {}
    status = 200
    if not await can_publish(request):
        context["error"], status = "Publishing from this page is off (DEBUG or staff only).", 403
    else:
        form = OrderForm(request.POST)
        if form.is_valid():
            try:
                context["order"], context["created"] = await sync_to_async(save_and_publish)(form)
            except Order.DoesNotExist:
                context["error"], status = f"There is no order #{form.cleaned_data['number']}.", 422
        else:
            messages = [message for errors in form.errors.values() for message in errors]
            context["error"], status = " ".join(messages), 422
    return render(request, "demo/htmx.html#result", context, status=status)
