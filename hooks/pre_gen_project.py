"""Validate the answers before anything is generated.

Values are read with ``|tojson`` so that quotes or backslashes in an answer can
never break this file. Only the standard library is used: the hook runs in the
user's cookiecutter environment, not in the project's.
"""

import keyword
import os
import re
import shlex
import sys

PROJECT_SLUG = {{ cookiecutter.project_slug|tojson }}
SSE_MODE = {{ cookiecutter.sse_mode|tojson }}
DOMAIN_NAME = {{ cookiecutter.domain_name|tojson }}
DAPHNE_PORT = {{ cookiecutter.daphne_port|tojson }}
DAPHNE_INSTANCES = {{ cookiecutter.daphne_instances|tojson }}
DAPHNE_SOCKET = {{ cookiecutter.daphne_socket|tojson }}
# Where cookiecutter was pointed, and the folder it read the template from: the name of
# the replay file it saved the answers in, before running this hook.
TEMPLATE = {{ cookiecutter._template|default("")|tojson }}
REPO_DIR = {{ cookiecutter._repo_dir|default("")|tojson }}

# Top-level packages of the generated project, and the libraries it imports:
# a slug that shadows one of them would break imports in confusing ways.
RESERVED = {"config", "sse", "demo", "tests", "django", "channels", "daphne", "redis", "environ"}
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def replay_hint() -> str:
    """How to run again without answering every prompt again."""
    # A relative folder is relative to where cookiecutter was started, not to this hook's
    # working directory (the new project's): the shell's PWD still says where that was.
    folder = os.path.join(os.environ.get("PWD", ""), REPO_DIR) if REPO_DIR else "TEMPLATE"
    name = os.path.basename(os.path.normpath(folder))
    replay = f"~/.cookiecutter_replay/{name}.json"
    return (
        f"Your answers are saved in {replay} (cookiecutter's default replay_dir). Fix the value "
        f"there and run: cookiecutter --replay {shlex.quote(TEMPLATE or 'TEMPLATE')}"
    )


def fail(message: str) -> None:
    print(f"ERROR: {message}\n{replay_hint()}", file=sys.stderr)
    sys.exit(1)


def suggest_slug(value: str) -> str:
    """A valid package name close to ``value``, as cookiecutter.json derives the default."""
    slug = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")
    if not slug:
        return "project"
    if slug[0].isdigit():
        slug = f"project_{slug}"
    if keyword.iskeyword(slug) or slug in RESERVED:
        slug = f"{slug}_project"
    return slug


def as_int(name: str, value: object, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        fail(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    if not low <= number <= high:
        fail(f"{name} must be from {low} to {high}, got {number}.")
    return number


def validate_slug() -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", PROJECT_SLUG) or keyword.iskeyword(PROJECT_SLUG):
        fail(
            f"project_slug {PROJECT_SLUG!r} is not a valid Python package name: use lowercase "
            f"letters, digits and underscores, starting with a letter, e.g. {suggest_slug(PROJECT_SLUG)!r}."
        )
    if PROJECT_SLUG in RESERVED:
        fail(
            f"project_slug {PROJECT_SLUG!r} would shadow a module of the project; "
            f"pick another name, e.g. {suggest_slug(PROJECT_SLUG)!r}."
        )


def validate_mode() -> None:
    if SSE_MODE not in ("channels", "async_view"):
        fail(f"sse_mode must be 'channels' or 'async_view', got {SSE_MODE!r}.")


def validate_domain() -> None:
    if not HOSTNAME.match(DOMAIN_NAME):
        fail(f"domain_name {DOMAIN_NAME!r} is not a valid host name (e.g. example.com).")


def validate_socket() -> None:
    if DAPHNE_SOCKET not in ("tcp", "unix"):
        fail(f"daphne_socket must be 'tcp' or 'unix', got {DAPHNE_SOCKET!r}.")


def validate_ports() -> None:
    port = as_int("daphne_port", DAPHNE_PORT, 1024, 65535)
    instances = as_int("daphne_instances", DAPHNE_INSTANCES, 1, 16)
    if port + instances - 1 > 65535:
        fail(f"daphne_port {port} + {instances} instances runs past port 65535.")


validate_slug()
validate_mode()
validate_domain()
validate_socket()
validate_ports()
