"""The generated project as its user gets it: its own suite, settings, deploy checks."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import Project


def test_generated_suite_passes_against_real_redis(project: Project, redis_server):
    # The suite's own settings, as `uv run pytest` has them: project.env() names production's.
    env = project.env(SSE_TEST_REDIS_URL=redis_server.url, DJANGO_SETTINGS_MODULE="config.test_settings")
    result = project.run("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", env=env)
    assert_suite_passed_with_redis(result.stdout)


def assert_suite_passed_with_redis(output: str) -> None:
    """The generated suite's output (run with -rs): all passed, and the Redis half ran.

    The only skips are the command's tests on the memory backend (it needs REDIS_URL), those
    that need a Redis Cluster (tests/test_cluster.py runs them against one), and on SQLite
    those that need a database Django closes (tests/test_postgres.py runs them).
    """
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, output[-5000:]
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    allowed = (
        "the command needs REDIS_URL",
        "set SSE_TEST_REDIS_CLUSTER_NODES to a Redis Cluster",
        "run with SSE_TEST_DATABASE_URL",
    )
    assert all(any(reason in line for reason in allowed) for line in skips), skips


def test_matrix_python_311_gets_django_52_and_no_warning(project: Project):
    """The main fixture's row of the support matrix (tests/test_matrix.py has the others)."""
    from tests.test_matrix import check_versions

    check_versions(project, "3.11")


def test_generated_code_is_lint_clean_with_its_own_config(project: Project):
    ruff = str(project.venv / "bin" / "ruff")
    import subprocess

    for args in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        run = subprocess.run([ruff, *args], cwd=project.path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


PRODUCTION = {
    "DJANGO_SECRET_KEY": "Production-Secret-Key-With-Enough-Variety-0123456789-abcdef",
    "DJANGO_ALLOWED_HOSTS": "example.com",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
}
SHOW_SILENCED = "from django.conf import settings; print(settings.SILENCED_SYSTEM_CHECKS)"


def test_check_deploy_passes_with_production_settings(project: Project):
    result = project.manage("check", "--deploy", "--fail-level", "WARNING", env=project.env(**PRODUCTION))
    assert "no issues" in result.stdout
    # HSTS includeSubDomains and preload are opt-in: silenced by default, with a reason in settings.py.
    silenced = project.manage("shell", "-c", SHOW_SILENCED, env=project.env(**PRODUCTION))
    assert "security.W005" in silenced.stdout and "security.W021" in silenced.stdout


def test_check_deploy_passes_with_the_guides_environment(project: Project):
    """deploy/README.md starts from .env.example: with a real secret it passes as it is."""
    example = (project.path / ".env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    values["DJANGO_SECRET_KEY"] = PRODUCTION["DJANGO_SECRET_KEY"]
    env = {k: v for k, v in project.env().items() if not k.startswith("DJANGO_")}
    env.update(values, DJANGO_SETTINGS_MODULE="config.settings")
    result = project.manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert "no issues" in result.stdout
    show = "from django.conf import settings as s; print(s.CSRF_TRUSTED_ORIGINS, s.SECURE_PROXY_SSL_HEADER)"
    shown = project.manage("shell", "-c", show, env=env).stdout
    assert "['https://example.com'] ('HTTP_X_FORWARDED_PROTO', 'https')" in shown
    site = next((project.path / "deploy" / "nginx").glob("*.conf")).read_text()
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in site, "the header SECURE_PROXY_SSL_HEADER trusts"


def test_hsts_subdomains_and_preload_when_switched_on(project: Project):
    env = project.env(**PRODUCTION, DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS="1", DJANGO_SECURE_HSTS_PRELOAD="1")
    assert project.manage("shell", "-c", SHOW_SILENCED, env=env).stdout.strip().endswith("[]")
    result = project.manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(project: Project, scratch):
    copy = scratch / "p"
    shutil.copytree(project.path, copy, ignore=shutil.ignore_patterns(".env", "db.sqlite3"))
    env = project.env()
    del env["DJANGO_SECRET_KEY"]
    result = project.run("manage.py", "check", cwd=copy, env=env, check=False)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    env["DJANGO_DEBUG"] = "1"
    assert project.run("manage.py", "check", cwd=copy, env=env, check=False).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["bad name"],
        ["ok", "--data", "{"],
        ["ok", "--event", "reset"],
        ["ok", "--html", "<p>", "--data", "1"],
        ["ok", "--template", "missing.html"],
        ["ok", "--template", "demo/index.html#missing"],
        ["ok", "--template", "demo/index.html#event", "--context", "{"],
        ["ok", "--data", "1", "--context", "{}"],
    ],
)
def test_send_event_errors_are_one_line(project: Project, redis_server, args):
    result = project.manage("send_event", *args, env=project.env(REDIS_URL=redis_server.url), check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("CommandError:"), result.stderr


def test_send_event_fails_fast_when_redis_is_down(project: Project):
    import time

    started = time.monotonic()
    result = project.manage("send_event", "ok", env=project.env(REDIS_URL="redis://127.0.0.1:1/0"), check=False)
    assert result.returncode != 0 and "unavailable" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20
