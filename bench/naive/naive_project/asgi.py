import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "naive_project.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

django_app = get_asgi_application()

from naive_project.consumers import EventsConsumer

application = ProtocolTypeRouter(
    {"http": URLRouter([path("sse/<str:stream>/", EventsConsumer.as_asgi()), path("", django_app)])}
)
