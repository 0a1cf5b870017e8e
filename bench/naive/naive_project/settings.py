"""The tutorial approach, as most Channels SSE tutorials write it (made to work, not optimised)."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "bench-naive-" + "k" * 50)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["daphne", "channels"]
ROOT_URLCONF = "naive_project.urls"
ASGI_APPLICATION = "naive_project.asgi.application"
DATABASES = {}
USE_TZ = True
# Made to work, not tuned: redis-py 8's 5 s socket timeout breaks channels-redis' blocking
# reads on an idle layer, and its pool of 100 makes group_add fail with a 500 when the bench
# connects a few hundred clients at once (DESIGN.md pitfalls).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": os.environ["REDIS_URL"], "socket_timeout": 30.0, "max_connections": 2000}],
            "group_expiry": 86_400,
        },
    }
}
