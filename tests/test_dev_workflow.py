"""What a generated project carries for its development workflow: CI, pre-commit, Dependabot.

GitHub Actions can't run here, so the workflow is validated (the GitHub schema, zizmor's
offline audits) and its shell steps are run in a clone of a fresh bake, with the
environment the workflow sets and our own Redis in place of its service container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import bake
from tests.test_project import assert_suite_passed_with_redis

pytestmark = pytest.mark.xdist_group("dev_workflow")

BIN = Path(sys.executable).parent  # check-jsonschema, zizmor and uv come with tests/requirements.txt
WORKFLOW = ".github/workflows/ci.yml"
DEPENDABOT = ".github/dependabot.yml"
PINNED = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}")
MODE_PARAMS = [pytest.param(mode, id=mode) for mode in ("channels", "async_view")]


def git(path: Path, *args: str) -> None:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", *identity, *args], cwd=path, check=True, capture_output=True)


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    """A fresh bake of each mode, committed to git as a user's first push would be."""
    baked = {}
    for mode in ("channels", "async_view"):
        path = bake(tmp_path_factory.mktemp(f"devflow-{mode}"), sse_mode=mode, project_name=f"Dev Flow {mode}")
        git(path, "init", "-q", "-b", "main")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "Generated")
        baked[mode] = path
    return baked


@pytest.fixture(scope="module")
def tool_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a developer's shell: uv on PATH, no settings of ours leaking in."""
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "uv").symlink_to(BIN / "uv")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    skip = ("DJANGO_", "REDIS_", "SSE_", "UV_", "VIRTUAL_ENV", "PYTHONWARNINGS", "PRE_COMMIT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(
        PATH=f"{bindir}{os.pathsep}{path}",
        # One Python, the one running the tests, to bound the time. A version, not a path,
        # as setup-uv's python-version sets it.
        UV_PYTHON=f"{sys.version_info.major}.{sys.version_info.minor}",
        UV_PYTHON_DOWNLOADS="never",
        PRE_COMMIT_HOME=str(tmp_path_factory.mktemp("pre-commit-home")),
    )
    return env


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def supported_pythons(project: Path) -> list[str]:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    prefix = "Programming Language :: Python :: 3."
    return [c.rsplit(" ", 1)[1] for c in pyproject["project"]["classifiers"] if c.startswith(prefix)]


def oldest_django(project: Path) -> str:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    lows = [re.match(r"Django>=([\d.]+)", d) for d in pyproject["project"]["dependencies"]]
    return min((m.group(1) for m in lows if m), key=lambda v: tuple(map(int, v.split("."))))


def run_tool(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_workflow_and_dependabot_are_valid_and_audit_clean(repos, mode):
    path = repos[mode]
    for schema, file in [
        ("vendor.github-workflows", WORKFLOW),
        ("custom.github-workflows-require-timeout", WORKFLOW),
        ("vendor.dependabot", DEPENDABOT),
    ]:
        check = run_tool(str(BIN / "check-jsonschema"), "--builtin-schema", schema, file, cwd=path)
        assert check.returncode == 0, f"{file} against {schema}:\n{check.stdout}{check.stderr}"
    # zizmor's offline audits: pinned actions, no persisted credentials, least privilege,
    # no template injection, Dependabot's cooldown. The regular persona must find nothing.
    audit = run_tool(str(BIN / "zizmor"), "--offline", "--no-progress", ".github", cwd=path)
    assert audit.returncode == 0 and "No findings" in audit.stdout, audit.stdout + audit.stderr

    workflow = load(path / WORKFLOW)
    triggers = workflow[True]  # YAML 1.1 reads the bare key `on` as a boolean
    assert set(triggers) == {"push", "pull_request"}
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    for job in jobs.values():
        assert "permissions" not in job, "every job keeps the workflow's read-only token"
        for step in job["steps"]:
            if "uses" in step:
                assert PINNED.fullmatch(step["uses"]), f"not pinned to a commit: {step['uses']}"
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    text = (path / WORKFLOW).read_text()
    assert all(f"@{sha} # v" in text for sha in re.findall(r"@([0-9a-f]{40})", text)), "a version comment per pin"
    assert jobs["test"]["strategy"]["matrix"]["python-version"] == supported_pythons(path) == ["3.11", "3.12", "3.13"]
    assert "redis" in jobs["test"]["services"]
    assert jobs["test"]["env"]["SSE_TEST_REDIS_URL"].startswith("redis://localhost:6379/")
    lint = " ".join(step.get("run", "") for step in jobs["lint"]["steps"])
    for command in ("uv sync --frozen", "uv lock --check", "ruff check", "ruff format --check", "--deploy"):
        assert command in lint
    assert "makemigrations --check --dry-run" in lint

    updates = {u["package-ecosystem"]: u for u in load(path / DEPENDABOT)["updates"]}
    assert set(updates) == {"uv", "github-actions"}
    assert all(u["directory"] == "/" for u in updates.values())


def step_env(*scopes: dict, redis_port: int) -> dict[str, str]:
    """The env the workflow gives a step, with the Redis service moved to our server's port."""
    env: dict[str, str] = {}
    for scope in scopes:
        for key, value in (scope.get("env") or {}).items():
            value = str(value)
            assert "${{" not in value, f"{key}: an expression this test can't evaluate"
            env[key] = value.replace("localhost:6379", f"127.0.0.1:{redis_port}")
    return env


def test_workflow_steps_pass_in_a_clone_of_a_fresh_bake(repos, tool_env, redis_server, tmp_path):
    """Every `run:` step of every job, in job order, in a clean checkout (no .env, no venv)."""
    source = repos["channels"]
    workflow = load(source / WORKFLOW)
    shell = workflow["defaults"]["run"]["shell"]
    assert shell == "bash"
    ran = []
    for name, job in workflow["jobs"].items():
        checkout = tmp_path / name
        git(tmp_path, "clone", "-q", str(source), str(checkout))
        assert not (checkout / ".env").exists() and not (checkout / ".venv").exists()
        for step in job["steps"]:
            if "run" not in step:
                continue
            assert "${{" not in step["run"], "expressions in run: are template injection"
            env = {**tool_env, "CI": "true", **step_env(workflow, job, step, redis_port=redis_server.port)}
            # GitHub's `shell: bash` is `bash --noprofile --norc -eo pipefail {0}`.
            result = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            label = f"{name}: {step.get('name', step['run'])}"
            assert result.returncode == 0, f"{label} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            ran.append((name, step["run"], result.stdout))
    assert {name for name, _, _ in ran} == {"lint", "test"}
    tests = next(out for name, run, out in ran if name == "test" and "pytest" in run)
    # The Redis half ran against our server.
    assert_suite_passed_with_redis(tests)


def hooks(path: Path) -> dict[str, dict]:
    config = load(path / ".pre-commit-config.yaml")
    # Only hooks defined here or built into pre-commit: nothing to clone, no network.
    assert {repo["repo"] for repo in config["repos"]} <= {"local", "meta"}
    return {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}


def pre_commit(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`pre-commit run --all-files` as a developer would, with no network at all when we can."""
    command = ["uv", "run", "--frozen", "pre-commit", "run", "--all-files"]
    if os.geteuid() == 0 and shutil.which("unshare"):
        command = ["unshare", "--net", *command]  # a network namespace with only a loopback, down
    return subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_pre_commit_passes_offline_on_a_fresh_bake(repos, tool_env, mode):
    path = repos[mode]
    found = hooks(path)
    assert {"ruff-check", "ruff-format", "django-upgrade", "uv-export"} <= set(found)
    assert f"--target-version {oldest_django(path)}" in found["django-upgrade"]["entry"]
    assert oldest_django(path) == "5.2"
    sync = subprocess.run(["uv", "sync", "--frozen", "-q"], cwd=path, env=tool_env, capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    result = pre_commit(path, tool_env)
    assert result.returncode == 0, result.stdout + result.stderr
    for hook in ("ruff check", "ruff format", "django-upgrade", "requirements*.txt exported from uv.lock"):
        assert re.search(rf"^{re.escape(hook)}\.+Passed$", result.stdout, re.M), result.stdout
    assert not subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True).stdout


def test_pre_commit_hooks_fix_what_they_check(repos, tool_env):
    """The hooks do their job: each one fails on a file it must change, and changes it."""
    path = repos["async_view"]
    requirements = path / "requirements.txt"
    exported = requirements.read_text()
    try:
        (path / "demo" / "old_style.py").write_text(
            "import os\ndef header(request):\n    return request.META['HTTP_X_TRACE']\n"
        )
        requirements.write_text(exported.replace("django==", "django===", 1))
        git(path, "add", "-A")
        result = pre_commit(path, tool_env)
        assert result.returncode != 0
        for hook in ("ruff check", "ruff format", "django-upgrade", "requirements*.txt exported from uv.lock"):
            assert re.search(rf"^{re.escape(hook)}\.+Failed$", result.stdout, re.M), result.stdout
        fixed = (path / "demo" / "old_style.py").read_text()
        assert "import os" not in fixed  # ruff check --fix
        assert 'request.headers["x-trace"]' in fixed  # django-upgrade, then ruff format's quotes
        assert requirements.read_text() == exported  # re-exported from uv.lock, byte for byte
    finally:
        (path / "demo" / "old_style.py").unlink(missing_ok=True)
        requirements.write_text(exported)
        git(path, "add", "-A")
