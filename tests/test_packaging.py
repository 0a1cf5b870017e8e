"""Packaging, on a fresh bake of each mode with a non-default name.

The lock is current and names the project, the shipped requirements files are exactly what
``uv export`` makes of it (as scripts/lock.py writes them), and both quickstarts work: uv
(``uv sync``, ``uv run``) and pip (a venv and the hashed requirements files), plus the deploy
guide's install commands.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, bake, uv

PACKAGING = [
    pytest.param(mode, marks=pytest.mark.xdist_group(f"packaging-{mode}"), id=mode)
    for mode in ("channels", "async_view")
]


def lock_script():
    spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=PACKAGING)
def baked(request, tmp_path_factory) -> Path:
    return bake(
        tmp_path_factory.mktemp(f"packaging-{request.param}"), sse_mode=request.param, project_name="Acme Live Feed"
    )


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = uv_env() if env is None else env
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_lock_names_the_project_and_is_current(baked: Path):
    assert 'name = "acme-live-feed"' in (baked / "uv.lock").read_text()
    uv("lock", "--check", "--offline", cwd=baked)
    assert not (baked / ".locks").exists(), "only the chosen mode's lock set is shipped"


def test_the_requirements_files_are_the_locks_export(baked: Path):
    """Re-running the export command (README, scripts/lock.py) gives the shipped files, byte for byte."""
    script = lock_script()
    shipped = {name: (baked / name).read_text() for name in script.EXPORTS}
    for name, body in shipped.items():
        command = script.export_command(name)
        assert body.splitlines()[1] == f"#    uv {' '.join(command)}", "the file names its own command"
        uv(*command, cwd=baked)
        assert (baked / name).read_text() == body, f"{name} is not what `uv export` gives: run scripts/lock.py"
        pins = re.findall(r"^\S+==\S+", body, re.M)
        assert len(pins) == len(re.findall(r"^\S+==[^\n]* \\\n\s+--hash=sha256:", body, re.M)), "every pin hashed"
        # pip users get the same matrix as uv users: 5.2 LTS on 3.11, 6.1 on 3.12+.
        assert re.search(r"^django==5\.2\.\d+ ; python_full_version < '3\.12'", body, re.M), name
        assert re.search(r"^django==6\.1\.\d+ ; python_full_version >= '3\.12'", body, re.M), name
        assert ("channels==" in body) == (baked / "sse" / "transports" / "consumers.py").exists(), "only the mode's dependencies"
    assert "psycopg==" in shipped["requirements.txt"] and "pytest==" not in shipped["requirements.txt"]
    assert "pytest==" in shipped["requirements-dev.txt"]


def uv_env() -> dict[str, str]:
    """The user's shell: no test environment variables pointing uv elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    return {k: v for k, v in env.items() if not k.startswith(("DJANGO_", "REDIS_", "SSE_"))}


def test_quickstart_with_uv(baked: Path):
    """README: ``uv sync``, then ``uv run python manage.py ...``; the lock stays as shipped."""
    lock = (baked / "uv.lock").read_text()
    uv("sync", cwd=baked, env=uv_env())
    assert (baked / ".venv" / "bin" / "python").exists()
    check = uv("run", "python", "manage.py", "check", cwd=baked, env=uv_env())
    assert "no issues" in check.stdout
    uv("run", "python", "manage.py", "migrate", "-v0", cwd=baked, env=uv_env())
    assert (baked / "uv.lock").read_text() == lock, "uv sync rewrote the shipped lock"


def test_deploy_install_with_uv_has_no_dev_tools(baked: Path, tmp_path):
    """deploy/README.md: ``uv sync --frozen --no-dev --extra postgres --python python3``."""
    env = {**uv_env(), "UV_PROJECT_ENVIRONMENT": str(tmp_path / "prod")}
    uv("sync", "--frozen", "--no-dev", "--extra", "postgres", "--python", "python3", cwd=baked, env=env)
    python = str(tmp_path / "prod" / "bin" / "python")
    run([python, "-c", "import daphne, django, environ, psycopg, psycopg_pool, redis"], baked)
    assert (
        run([python, "-c", "import importlib.util as u; print(u.find_spec('pytest'))"], baked).stdout.strip() == "None"
    )
    assert "no issues" in run([python, "manage.py", "check"], baked).stdout


@pytest.mark.parametrize("mode", [pytest.param("async_view", marks=pytest.mark.xdist_group("packaging-async_view"))])
def test_quickstart_and_deploy_install_with_pip(mode, tmp_path):
    """pip only, no uv: production from requirements.txt with --require-hashes, then dev tools."""
    path = bake(tmp_path, sse_mode=mode, project_name="Acme Pip Feed")
    run([sys.executable, "-m", "venv", ".venv"], path)
    pip = [str(path / ".venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    run([*pip, "--require-hashes", "-r", "requirements.txt"], path)
    python = str(path / ".venv" / "bin" / "python")
    run([python, "-c", "import daphne, django, psycopg"], path)
    run([*pip, "-r", "requirements-dev.txt"], path)
    assert "no issues" in run([python, "manage.py", "check"], path).stdout
    run([python, "manage.py", "migrate", "-v0"], path)
    run([python, "-m", "pytest", "--version"], path)


@pytest.mark.xdist_group("packaging-async_view")
def test_staying_on_django_52_lts_on_python_312_as_the_readme_says(tmp_path):
    """README: one Django line without its marker, no marker on django-template-partials, uv lock."""
    from tests.test_matrix import interpreter

    path = bake(tmp_path, sse_mode="async_view", project_name="Acme Lts Feed")
    pyproject = (path / "pyproject.toml").read_text()
    lines = ["\"Django>=5.2,<5.3; python_version < '3.12'\",", "\"Django>=6.1,<6.2; python_version >= '3.12'\","]
    partials = "\"django-template-partials>=25.2; python_version < '3.12'\","
    assert all(line in pyproject for line in [*lines, partials]), "the README's recipe names these lines"
    pyproject = pyproject.replace(lines[0], '"Django>=5.2,<5.3",').replace(f"    {lines[1]}\n", "")
    (path / "pyproject.toml").write_text(pyproject.replace(partials, '"django-template-partials>=25.2",'))
    uv("lock", cwd=path, env=uv_env())
    uv("sync", "--python", interpreter("3.12"), cwd=path, env=uv_env())
    python = str(path / ".venv" / "bin" / "python")
    shown = run([python, "-c", "import sys, django; print(sys.version_info[:2], django.get_version())"], path).stdout
    assert shown.startswith("(3, 12) 5.2."), shown
    assert "no issues" in run([python, "-W", "error", "manage.py", "check"], path).stdout
    demo = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_demo.py"], path).stdout
    assert " passed" in demo and "failed" not in demo, demo


@pytest.mark.xdist_group("packaging-channels")
def test_the_template_readmes_demo_command_works_without_uv_installed(tmp_path):
    """The first command of README.md, in a scratch folder, with `check` for `runserver`."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^python3 -m venv /tmp/cc .*$", readme, re.M).group(0)
    assert command.endswith("manage.py runserver")
    command = command.replace("/tmp", str(tmp_path)).replace("manage.py runserver", "manage.py check")
    env = {k: v for k, v in uv_env().items() if not k.startswith("UV_")}
    # The machine's PATH without this suite's virtualenv: the command brings its own uv.
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(sys.executable).parent != Path(p))
    env["UV_PYTHON_DOWNLOADS"] = "never"  # python3 is there; a test must not fetch another
    result = run(["bash", "-c", command], ROOT, env=env)
    assert "no issues" in result.stdout
    assert (tmp_path / "sse_project" / ".venv" / "bin" / "daphne").exists()
