"""Shape the generated project: keep one SSE mode, write a development .env.

Idempotent (cruft re-runs it on update): removing a file that is already gone
and keeping an existing .env are both no-ops. Standard library only.
"""

import secrets
import shutil
from pathlib import Path

PROJECT_SLUG = {{ cookiecutter.project_slug|tojson }}
SSE_MODE = {{ cookiecutter.sse_mode|tojson }}

ROOT = Path.cwd()

CHANNELS_FILES = ["sse/transports/consumers.py", "sse/backends/channel_layer.py", "tests/test_consumer.py"]
ASYNC_VIEW_FILES = ["sse/transports/inline.py", "sse/transports/views.py", "tests/test_view.py"]


def remove(paths: list[str]) -> None:
    for name in paths:
        path = ROOT / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def remove_channels_files() -> None:
    remove(CHANNELS_FILES)


def remove_async_view_files() -> None:
    remove(ASYNC_VIEW_FILES)


def move_lock_files() -> None:
    """uv.lock and the requirements exported from it, for the chosen mode."""
    locks = ROOT / ".locks"
    if not locks.is_dir():
        return
    chosen = locks / SSE_MODE
    for path in chosen.iterdir() if chosen.is_dir() else ():
        path.replace(ROOT / path.name)
    shutil.rmtree(locks)


def write_dotenv() -> None:
    """A development .env with a fresh secret; an existing one is never overwritten."""
    path = ROOT / ".env"
    if path.exists():
        return
    # Letters and digits only: no character that .env parsers or shells treat specially.
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    secret = "".join(secrets.choice(alphabet) for _ in range(64))
    path.write_text(
        "# Development settings, written by the project template. Not for production;\n"
        "# git ignores this file. See .env.example for every variable.\n"
        "DJANGO_DEBUG=1\n"
        f"DJANGO_SECRET_KEY={secret}\n"
        "# Unset: one process, events kept in memory. Set it to reach several processes:\n"
        "# REDIS_URL=redis://127.0.0.1:6379/0\n"
    )
    path.chmod(0o600)


def next_steps() -> str:
    """What to type next. Publishing from a second terminal needs Redis: without
    REDIS_URL the events live in the runserver process alone, and send_event refuses."""
    return (
        f"\nCreated {PROJECT_SLUG} ({SSE_MODE} mode). Next:\n\n"
        f"    cd {PROJECT_SLUG}\n"
        "    uv sync\n"
        "    uv run python manage.py migrate\n"
        "    uv run python manage.py runserver\n\n"
        "or without uv:\n\n"
        "    python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt\n"
        "    .venv/bin/python manage.py migrate && .venv/bin/python manage.py runserver\n\n"
        "Then open http://127.0.0.1:8000/ and publish events with the form on the page.\n\n"
        "To publish from a second terminal (manage.py send_event, scripts, Celery), every process\n"
        "must share one Redis: start redis-server, then, before starting runserver, run\n\n"
        "    echo 'REDIS_URL=redis://127.0.0.1:6379/0' >> .env\n\n"
        "and in the second terminal:\n\n"
        "    uv run python manage.py send_event notifications --data '{\"msg\": \"hi\"}'\n"
    )


if SSE_MODE == "channels":
    remove_async_view_files()
else:
    remove_channels_files()
move_lock_files()
write_dotenv()
print(next_steps())
