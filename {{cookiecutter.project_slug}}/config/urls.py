from django.contrib import admin
from django.urls import include, path

from sse.ops.health import health
from sse.ops.metrics import metrics_view
{%- if cookiecutter.sse_mode == "async_view" %}
from sse.transports.views import stream, streams
{%- endif %}

urlpatterns = [
    path("health/", health, name="sse-health"),
    path("metrics/", metrics_view, name="sse-metrics"),
{%- if cookiecutter.sse_mode == "async_view" %}
    # Any name reaches the view, which answers 404 with the reason for a bad one.
    path("sse/", streams, name="sse-streams"),  # several streams: /sse/?stream=a&stream=b
    path("sse/<path:stream>/", stream, name="sse-stream"),
{%- endif %}
    path("admin/", admin.site.urls),
    path("", include("demo.urls")),
]
