from django.apps import AppConfig


class SseConfig(AppConfig):
    name = "sse"
    verbose_name = "Server-Sent Events"
