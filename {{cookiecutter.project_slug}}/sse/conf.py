"""Settings with defaults, read when used (so tests can override them)."""

from typing import Any

from django.conf import settings


def setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)
