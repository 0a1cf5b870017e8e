"""Settings for the test suite: production defaults, with what tests can't provide."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-secret")
os.environ["DJANGO_SECURE_SSL_REDIRECT"] = "0"
os.environ["REDIS_URL"] = ""  # tests pick the broker themselves (tests/conftest.py)
os.environ["REDIS_CLUSTER_NODES"] = ""
# The suite against another database, e.g. PostgreSQL: the tests create and drop
# their own test_<name> database on that server.
if os.environ.get("SSE_TEST_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["SSE_TEST_DATABASE_URL"]

from config.settings import *  # noqa: F403

DEBUG = False
SSE_DEMO_PUBLISH = False
SSE_PUBLIC_STREAMS = ["*"]  # tests use random stream names; tests/test_auth.py checks the default
# Its templates (tests/templates/) exercise publish_html with a real partial.
INSTALLED_APPS = [*INSTALLED_APPS, "tests"]  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user creation
