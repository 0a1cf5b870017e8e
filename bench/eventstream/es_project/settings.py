"""django-eventstream 5.x as its README sets it up, with its Redis storage and Redis pub/sub."""

import os
from urllib.parse import urlparse

_redis = urlparse(os.environ["REDIS_URL"])
_redis_kwargs = {"host": _redis.hostname, "port": _redis.port, "db": int(_redis.path.strip("/") or 0)}

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "bench-eventstream-" + "k" * 50)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["daphne", "django.contrib.contenttypes", "django.contrib.auth", "django_eventstream"]
ROOT_URLCONF = "es_project.urls"
ASGI_APPLICATION = "es_project.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("ES_DB", "es.sqlite3")}}
USE_TZ = True
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.RedisStorage"
EVENTSTREAM_STORAGE_CONNECTION = _redis_kwargs
EVENTSTREAM_REDIS = _redis_kwargs
