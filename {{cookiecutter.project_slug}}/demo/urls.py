from django.urls import path

from demo import views

urlpatterns = [
    path("", views.index, name="demo-index"),
    path("demo/publish/", views.publish_view, name="demo-publish"),
]
