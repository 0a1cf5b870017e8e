"""The support matrix: every supported Python with the Django its uv.lock gives it, per mode.

Python 3.11 (Django 5.2 LTS) is the main ``project`` fixture's: every other test file runs on
it, and test_project.py checks its versions. Here Python 3.12 and 3.13 (Django 6.1) get their
own environment from the same lock (``uv sync --frozen``), then the generated project's own
suite against a real Redis and one end-to-end run through two Daphne processes. Overriding
``project`` in this module makes conftest's ``start_daphne`` and the imported tests use them.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Project, bake, uv_sync
from tests.test_e2e import test_published_through_one_process_delivered_by_the_other_and_replayed_exactly as test_e2e
from tests.test_project import test_generated_suite_passes_against_real_redis as test_generated_suite

__all__ = ["test_e2e", "test_generated_suite"]  # collected here too, with this module's ``project``

PYTHONS = ["3.12", "3.13"]
DJANGO = {"3.11": "5.2.", "3.12": "6.1.", "3.13": "6.1."}
MATRIX = [
    pytest.param((python, mode), marks=pytest.mark.xdist_group(f"py{python}-{mode}"), id=f"py{python}-{mode}")
    for python in PYTHONS
    for mode in ("channels", "async_view")
]
VERSIONS = "import sys, django; print('%d.%d' % sys.version_info[:2], django.get_version())"


def interpreter(version: str) -> str:
    """This machine's Python ``version``: pyenv's build, else ``pythonX.Y`` on PATH."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    builds = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    found = builds[-1] if builds else shutil.which(f"python{version}")
    if not found:
        pytest.fail(
            f"Python {version} is missing: the support matrix tests every supported Python. "
            f"Install it (pyenv install {version}, or a python{version} on PATH)."
        )
    return found


def check_versions(project: Project, python: str) -> None:
    """The lock's Django for ``python``, and no warning at all from ``manage.py check``."""
    shown_python, django = project.run("-c", VERSIONS).stdout.split()
    assert shown_python == python
    assert django.startswith(DJANGO[python]), f"Python {python} got Django {django}"
    # Every warning is an error here, not only deprecations (imports, settings, app loading).
    check = project.run("-W", "error", "-m", "django", "check")
    assert "no issues" in check.stdout and check.stderr == "", check.stderr


@pytest.fixture(scope="session", params=MATRIX)
def project(request, tmp_path_factory) -> Project:
    """A project baked and installed from its uv.lock with one Python of the matrix."""
    python, mode = request.param
    base = tmp_path_factory.mktemp(f"matrix-{python}-{mode}")
    path = bake(base, sse_mode=mode, project_name=f"Matrix {python} {mode}")
    venv = base / "venv"
    uv_sync(path, venv, interpreter(python))
    project = Project(path, mode, venv)
    project.manage("migrate", "-v0")
    return project


def test_python_gets_its_django_and_no_warning(project: Project, request):
    python, _mode = request.node.callspec.params["project"]
    check_versions(project, python)
