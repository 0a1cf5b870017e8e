"""Validate the answers before anything is generated.

Values are read with ``|tojson`` so that quotes or backslashes in an answer can
never break this file. Only the standard library is used: the hook runs in the
user's cookiecutter environment, not in the project's.
"""

import keyword
import re
import sys

PROJECT_SLUG = {{ cookiecutter.project_slug|tojson }}
SSE_MODE = {{ cookiecutter.sse_mode|tojson }}
DOMAIN_NAME = {{ cookiecutter.domain_name|tojson }}
DAPHNE_PORT = {{ cookiecutter.daphne_port|tojson }}
DAPHNE_INSTANCES = {{ cookiecutter.daphne_instances|tojson }}
DAPHNE_SOCKET = {{ cookiecutter.daphne_socket|tojson }}

# Top-level packages of the generated project, and the libraries it imports:
# a slug that shadows one of them would break imports in confusing ways.
RESERVED = {"config", "sse", "demo", "tests", "django", "channels", "daphne", "redis", "environ"}
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def fail(message: str) -> None:
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1)


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
            "letters, digits and underscores, starting with a letter."
        )
    if PROJECT_SLUG in RESERVED:
        fail(f"project_slug {PROJECT_SLUG!r} would shadow a module of the project; pick another name.")


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
