import django_eventstream
from django.urls import include, path

urlpatterns = [
    path("sse/<str:stream>/", include(django_eventstream.urls), {"format-channels": ["{stream}"]}),
]
