from django.urls import path

from demo import datastar, orders, views

urlpatterns = [
    path("", views.index, name="demo-index"),
    path("demo/publish/", views.publish_view, name="demo-publish"),
    path("htmx/", orders.page, name="demo-htmx"),
    path("htmx/orders/", orders.publish, name="demo-htmx-orders"),
    path("datastar/", datastar.page, name="demo-datastar"),
    path("datastar/publish/", datastar.publish, name="demo-datastar-publish"),
]
