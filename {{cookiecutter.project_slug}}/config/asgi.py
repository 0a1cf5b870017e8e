{%- if cookiecutter.sse_mode == "channels" -%}
"""ASGI entry point: ``/sse/<stream>/`` and ``/sse/?stream=…`` go to the SSE consumer, the rest to Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()  # sets Django up before the imports below

from sse.ops import checks, startup  # noqa: E402

checks.fail_fast()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from sse.transports.consumers import SSEConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                path("sse/", SSEConsumer.as_asgi()),
                re_path(r"^sse/(?P<stream>.*)/$", SSEConsumer.as_asgi()),
                re_path(r"", django_application),
            ]
        ),
    }
)
application = startup.serve_static_in_debug(application)
startup.announce("channels")
{%- else -%}
"""ASGI entry point: Django alone; ``/sse/<stream>/`` and ``/sse/?stream=…`` are async views."""

import os

import django
from django.core.handlers.asgi import ASGIHandler

from sse.transports.daphne import guard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class Handler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # The same middleware for streams, minus a thread hop per hook (sse/transports/inline.py).
        self.streams = StreamHandler()

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or not scope["path"].startswith("/sse/"):
            await super().__call__(scope, receive, send)
            return
        # Django runs each request in a ThreadSensitiveContext, which gives it its
        # own thread for sync middleware until the request ends. A stream lasts
        # hours: 2,000 streams would hold 2,000 idle threads. Without the context
        # the same middleware runs on one shared thread.
        scope["sse.send"] = send  # Daphne's own, for sse.transports.daphne.direct_writer
        try:
            # On shutdown Daphne cancels this task: the handler treats that as a disconnect.
            await self.streams.handle(scope, receive, guard(send))
        finally:
            await close_frames(scope)


django.setup(set_prefix=False)
from sse.ops import checks, startup  # noqa: E402
from sse.transports.endpoint import close_frames  # noqa: E402  (needs the app registry)
from sse.transports.inline import StreamHandler  # noqa: E402  (as does this)

checks.fail_fast()
application = startup.serve_static_in_debug(Handler())
startup.announce("async_view")
{%- endif %}
