from django.urls import path

from demo import datastar, views

urlpatterns = [
    path("", views.index, name="demo-index"),
    path("demo/publish/", views.publish_view, name="demo-publish"),
    path("datastar/", datastar.page, name="demo-datastar"),
    path("datastar/publish/", datastar.publish, name="demo-datastar-publish"),
]
