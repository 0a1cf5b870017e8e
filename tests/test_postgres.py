"""PostgreSQL as the production database: the generated suite, migrate, on-commit publishing, the pool.

A private PostgreSQL server per session (tests/conftest.py PostgresServer), never the machine's own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Project
from tests.test_access_control import LOGIN_SCRIPT  # a staff user and a session
from tests.test_e2e import connect, send_event
from tests.test_project import assert_suite_passed_with_redis


@pytest.fixture(scope="module")
def database(project: Project, postgres_server) -> str:
    """A fresh database for this mode, migrated as the deploy guide does it."""
    url = postgres_server.create_database(f"app_{project.mode}_{uuid.uuid4().hex[:6]}")
    project.manage("migrate", "--noinput", "-v0", env=project.env(DATABASE_URL=url))
    return url


def test_generated_suite_passes_against_postgres_and_redis(project: Project, postgres_server, redis_server):
    name = f"suite_{project.mode}"
    env = project.env(SSE_TEST_DATABASE_URL=postgres_server.url(name), SSE_TEST_REDIS_URL=redis_server.url)
    env["DJANGO_SETTINGS_MODULE"] = "config.test_settings"  # the suite's own, as pyproject.toml names it
    result = project.run("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", env=env, check=False)
    assert_suite_passed_with_redis(result.stdout)
    assert "SSE_TEST_DATABASE_URL" not in result.stdout, "what SQLite skips ran here"
    # pytest-django made (and dropped) test_<name> on this server: the suite ran on PostgreSQL.
    assert f"database=test_{name}" in postgres_server.log.read_text(errors="replace")


def test_migrate_on_postgres_leaves_nothing_to_do(project: Project, postgres_server, database):
    env = project.env(DATABASE_URL=database)
    assert project.manage("migrate", "--check", env=env, check=False).returncode == 0
    plan = project.manage("showmigrations", "--plan", env=env).stdout
    assert "[X]" in plan and "[ ]" not in plan
    dbname = database.rsplit("/", 1)[1]
    tables = postgres_server.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", dbname).split()
    assert {"auth_user", "django_session", "django_migrations"} <= set(tables)


def test_postgres_without_psycopg_is_one_clear_error(project: Project):
    """As if the postgres extra were not installed: settings say what to install, not a driver traceback."""
    blocked = (
        "import runpy, sys\n"
        "sys.modules['psycopg'] = sys.modules['psycopg_pool'] = sys.modules['psycopg2'] = None\n"
        "sys.argv = ['manage.py', 'check']\n"
        "runpy.run_path('manage.py', run_name='__main__')\n"
    )
    env = project.env(DATABASE_URL="postgres://app@127.0.0.1:1/app")
    result = project.run("-c", blocked, env=env, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: DATABASE_URL is PostgreSQL"), last
    assert "uv sync --extra postgres" in last
    # The same environment with the driver present gets past settings (check needs no connection).
    assert project.manage("check", env=env, check=False).returncode == 0


ON_COMMIT_SCRIPT = """
import contextlib, sys, django
django.setup()
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection, transaction
from sse import publish_on_commit
from sse.backends import get_broker

stream, tag = sys.argv[1], sys.argv[2]
assert connection.vendor == "postgresql", connection.vendor
last_id = async_to_sync(get_broker().alast_id)

with contextlib.suppress(RuntimeError), transaction.atomic():
    User.objects.create_user(f"{tag}-ghost")
    publish_on_commit(stream, "user", "ghost")
    raise RuntimeError("roll back")

with transaction.atomic():
    User.objects.create_user(f"{tag}-outer")
    publish_on_commit(stream, "user", "outer")
    with contextlib.suppress(RuntimeError), transaction.atomic():
        User.objects.create_user(f"{tag}-inner")
        publish_on_commit(stream, "user", "inner")
        raise RuntimeError("roll back the savepoint only")
    publish_on_commit(stream, "user", "after-savepoint")
    assert last_id(stream) is None, "published before the commit"

with transaction.atomic():
    User.objects.create_user(f"{tag}-alice")
    publish_on_commit(stream, "user", "alice")
print(last_id(stream))
"""


def test_publish_on_commit_with_postgres_transactions_across_processes(
    project: Project, postgres_server, redis_server, start_daphne, database
):
    """Daphne on PostgreSQL + Redis; a third process commits, rolls back and rolls back a savepoint."""
    a, b = start_daphne(DATABASE_URL=database), start_daphne(DATABASE_URL=database)
    stream, tag = f"orders-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    clients = [connect(a, stream), connect(b, stream)]
    env = project.env(DATABASE_URL=database, REDIS_URL=redis_server.url)
    last_id = project.run("-c", ON_COMMIT_SCRIPT, stream, tag, env=env).stdout.strip()
    expected = ["outer", "after-savepoint", "alice"]
    for client in clients:
        events = client.wait_events(len(expected))
        time.sleep(0.5)  # a duplicate or a rolled-back event would have arrived by now
        assert [json.loads(e.data) for e in client.events] == expected
        assert len({e.id for e in events}) == 3 and events[-1].id == last_id
        client.close()
    dbname = database.rsplit("/", 1)[1]
    users = postgres_server.sql(f"SELECT username FROM auth_user WHERE username LIKE '{tag}-%'", dbname).split()
    assert sorted(users) == [f"{tag}-alice", f"{tag}-outer"], "the database agrees with the events"


POOL_MAX = 4


def get(port: int, path: str, cookie: str) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": f"sessionid={cookie}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_pool_bounds_connections_under_concurrent_requests(
    project: Project, postgres_server, redis_server, start_daphne, database
):
    """50 concurrent page requests that read the session and user, beside open private streams.

    Each waits for one of the pool's few connections and gets it; PostgreSQL never sees more
    than the pool's size from the process, and open streams do not keep one each.
    """
    dbname = database.rsplit("/", 1)[1]
    # A long wait for a connection: a loaded test machine may be slow, but no request should fail.
    pool_env = {"DATABASE_POOL_MAX_SIZE": str(POOL_MAX), "DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_TIMEOUT": "30"}
    daphne = start_daphne(DATABASE_URL=database, **pool_env)
    pk, cookie = project.run(
        "-c", LOGIN_SCRIPT, f"staff-{uuid.uuid4().hex[:8]}", env=project.env(DATABASE_URL=database)
    ).stdout.split()
    # Not psql's own: each sample is a new psql, and an earlier one's backend may still be exiting.
    count = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}' AND application_name <> 'psql'"

    # Private streams authorize with the session user: a database read each.
    streams = [connect(daphne, f"user.{pk}", Cookie=f"sessionid={cookie}") for _ in range(10)]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(int(postgres_server.sql(count, dbname)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(50) as pool:
            paths = ["/", "/admin/", "/health/"] * 17
            statuses = list(pool.map(lambda path: get(daphne.port, path, cookie), paths[:50]))
    finally:
        done.set()
        sampler.join()
    assert statuses == [200] * 50, statuses
    assert samples and max(samples) <= POOL_MAX, samples
    assert max(samples) >= 1, "the requests used PostgreSQL"
    time.sleep(0.5)
    assert int(postgres_server.sql(count, dbname)) <= POOL_MAX, "connections returned, none leaked"

    # The streams are still alive and served.
    event_id = send_event(project, redis_server.url, f"user.{pk}", "private", {"ok": 1})
    for client in streams:
        (event,) = client.wait_events(1)
        assert event.id == event_id
        client.close()
    assert " 500 " not in daphne.output()


def test_a_postgres_restart_costs_no_failed_request(project: Project, postgres_server, start_daphne, database):
    """The pool tests each connection before lending it (CONN_HEALTH_CHECKS): dead ones are replaced."""
    daphne = start_daphne(DATABASE_URL=database, DATABASE_POOL_MAX_SIZE="3", DATABASE_POOL_MIN_SIZE="3")
    _, cookie = project.run(
        "-c", LOGIN_SCRIPT, f"staff-{uuid.uuid4().hex[:8]}", env=project.env(DATABASE_URL=database)
    ).stdout.split()
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda _: get(daphne.port, "/", cookie), range(6))) == [200] * 6
    postgres_server.stop()  # fast shutdown: every pooled connection is cut
    postgres_server.start()
    statuses = [get(daphne.port, "/", cookie) for _ in range(6)]
    assert statuses == [200] * 6, daphne.output()[-3000:]
