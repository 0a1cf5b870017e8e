"""Generation: every mode and odd answers bake a clean, lint-free project."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from tests.conftest import ROOT, bake

ODD_NAMES = {
    "default": {},
    "accents": {"project_name": "Café Überall"},
    "punctuation": {"project_name": "My SSE-App, v2!"},
    "single-letter": {"project_name": "x"},
    "long": {"project_name": "a very long project name " * 3},
    "quotes": {"project_name": 'O\'Brien "Quoted" \\ Backslash', "project_slug": "obrien"},
    "explicit-slug": {"project_name": "Anything", "project_slug": "my_app_2"},
    "high-port": {"daphne_port": "65000", "daphne_instances": "4"},
    "one-instance": {"daphne_instances": "1", "domain_name": "sse.example.org"},
    "unix-sockets": {"daphne_socket": "unix", "daphne_instances": "3"},
}
CASES = [
    pytest.param({**context, "sse_mode": mode}, id=f"{mode}-{name}")
    for mode in ("channels", "async_view")
    for name, context in ODD_NAMES.items()
]


def files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def ruff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("context", CASES)
def test_bakes_a_clean_project(cookies, context):
    result = cookies.bake(extra_context=context)
    assert result.exit_code == 0, result.exception
    path = Path(result.project_path)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", path.name)
    for file in files(path):
        text = file.read_text(errors="replace")
        assert not re.search(r"cookiecutter\.\w|\{\{ *cookiecutter", text), f"template leftover in {file}"
        if file.suffix == ".py":
            compile(text, str(file), "exec")
    check = ruff("check", "--no-cache", ".", cwd=path)
    assert check.returncode == 0, check.stdout
    fmt = ruff("format", "--check", "--no-cache", ".", cwd=path)
    assert fmt.returncode == 0, fmt.stdout


MODE_FILES = {
    "channels": ["sse/transports/consumers.py", "sse/backends/channel_layer.py", "tests/test_consumer.py"],
    "async_view": ["sse/transports/inline.py", "sse/transports/views.py", "tests/test_view.py"],
}


@pytest.mark.parametrize("mode", ["channels", "async_view"])
def test_each_mode_keeps_only_its_files_and_dependencies(cookies, mode):
    path = Path(cookies.bake(extra_context={"sse_mode": mode}).project_path)
    other = "async_view" if mode == "channels" else "channels"
    for name in MODE_FILES[mode]:
        assert (path / name).is_file(), name
    for name in MODE_FILES[other]:
        assert not (path / name).exists(), name
    requirements = (path / "pyproject.toml").read_text() + (path / "requirements.txt").read_text()
    sources = "\n".join(p.read_text() for p in path.rglob("*.py"))
    if mode == "channels":
        assert '"channels>=' in requirements and "\nchannels-redis==" in requirements
        assert "CHANNEL_LAYERS" in (path / "config/settings.py").read_text()
    else:
        assert "channels" not in requirements
        assert not re.search(r"^\s*(import|from) channels", sources, re.M), "async_view must not import Channels"
        assert "CHANNEL_LAYERS" not in (path / "config/settings.py").read_text()
    shared = [
        "sse/encoding.py",
        "sse/backends/base.py",
        "sse/backends/memory.py",
        "sse/backends/redis.py",
        "sse/hub.py",
        "sse/transports/endpoint.py",
        "tests/test_layout.py",
        "sse/management/commands/send_event.py",
    ]
    for name in shared:
        assert (path / name).is_file(), name


def test_no_input_gives_the_documented_defaults(cookies):
    result = cookies.bake()
    assert result.exit_code == 0
    assert result.context["project_slug"] == "sse_project"
    assert result.context["sse_mode"] == "channels"
    assert (Path(result.project_path) / "sse/transports/consumers.py").is_file()


def test_prompts_have_help_texts():
    import json

    config = json.loads((ROOT / "cookiecutter.json").read_text())
    questions = [k for k in config if not k.startswith("_")]
    assert set(questions) <= set(config["__prompts__"]), set(questions) - set(config["__prompts__"])


@pytest.mark.parametrize(
    "context",
    [
        {"project_slug": "Bad-Slug"},
        {"project_slug": "1abc"},
        {"project_slug": "class"},
        {"project_slug": "sse"},
        {"project_slug": "with space"},
        {"daphne_port": "80"},
        {"daphne_port": "70000"},
        {"daphne_port": "ninety"},
        {"daphne_port": "65535", "daphne_instances": "3"},
        {"daphne_instances": "0"},
        {"domain_name": "not a domain"},
        {"domain_name": "evil.com;"},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_hooks_reject_bad_answers(cookies, context):
    result = cookies.bake(extra_context=context)
    assert isinstance(result.exception, FailedHookException), result.exception
    assert result.project_path is None or not Path(result.project_path).exists()


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("2048 Game", "project_2048_game"),
        ("123", "project_123"),
        ("!!!", "project"),
        ("Django", "django_project"),
        ("Tests", "tests_project"),
        ("Class", "class_project"),
    ],
)
def test_a_name_whose_slug_needs_fixing_gets_a_valid_default_slug(cookies, name, slug):
    result = cookies.bake(extra_context={"project_name": name})
    assert result.exit_code == 0, result.exception
    assert result.context["project_slug"] == slug
    assert Path(result.project_path).name == slug


def test_the_default_slug_avoids_every_name_the_hook_rejects(tmp_path):
    """cookiecutter.json's Jinja and the pre-gen hook each list the reserved names: keep them in step."""
    import keyword

    hook = (ROOT / "hooks" / "pre_gen_project.py").read_text()
    reserved = set(
        re.search(r"^RESERVED = \{(.*)\}$", hook, re.M).group(1).replace('"', "").replace(" ", "").split(",")
    )
    names = sorted(reserved | {k for k in keyword.kwlist if k.islower()})
    config = (ROOT / "cookiecutter.json").read_text()
    listed = set(re.search(r"s in '([a-z ]+)'\.split\(\)", config).group(1).split())
    assert set(names) <= listed, set(names) - listed
    from cookiecutter.main import cookiecutter

    # Baking one of them end to end; the rest are covered by the list check above.
    path = Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(tmp_path), extra_context={"project_name": "SSE"}))
    assert path.name == "sse_project"


def hook_failure(tmp_path: Path, *answers: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", str(ROOT), "-o", str(tmp_path), *answers],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    return run.stderr + run.stdout


@pytest.mark.parametrize(
    ("slug", "suggestion"),
    [("2048-Game", "project_2048_game"), ("My App", "my_app"), ("class", "class_project"), ("sse", "sse_project")],
)
def test_an_invalid_typed_slug_gets_a_valid_suggestion(tmp_path, slug, suggestion):
    output = hook_failure(tmp_path, f"project_slug={slug}")
    assert f"project_slug {slug!r}" in output
    assert f"e.g. {suggestion!r}" in output
    assert re.fullmatch(r"[a-z][a-z0-9_]*", suggestion)


def test_a_rejected_answer_says_how_to_replay_the_saved_answers(tmp_path):
    """Interactive answers are not lost: cookiecutter saved them before the hook ran."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PWD": str(tmp_path)}
    cmd = [sys.executable, "-m", "cookiecutter", str(ROOT), "-o", str(tmp_path / "out")]
    # Answers as a user types them: a name, then a slug that is not a package name, then defaults.
    run = subprocess.run([*cmd], input="2048 Game\n2048-game\n" + "\n" * 12, capture_output=True, text=True, env=env)
    assert run.returncode != 0
    output = run.stderr + run.stdout
    replay = home / ".cookiecutter_replay" / f"{ROOT.name}.json"
    assert f"~/.cookiecutter_replay/{ROOT.name}.json" in output, output
    assert f"cookiecutter --replay {ROOT}" in output, output
    assert "e.g. 'project_2048_game'" in output
    # Following the message: fix the value in the saved file, replay.
    answers = json.loads(replay.read_text())
    assert answers["cookiecutter"]["project_name"] == "2048 Game"
    answers["cookiecutter"]["project_slug"] = "project_2048_game"
    replay.write_text(json.dumps(answers))
    again = subprocess.run([*cmd, "--replay"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "project_2048_game" / "manage.py").is_file()


def test_pre_gen_messages_say_what_is_wrong(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", str(ROOT), "-o", str(tmp_path), "daphne_port=80"],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "daphne_port must be from 1024 to 65535, got 80" in run.stderr + run.stdout


def test_dotenv_has_a_fresh_secret_and_is_ignored(tmp_path):
    first = bake(tmp_path / "a")
    second = bake(tmp_path / "b")
    env1, env2 = (first / ".env").read_text(), (second / ".env").read_text()
    secret = re.search(r"^DJANGO_SECRET_KEY=(\S+)$", env1, re.M).group(1)
    assert len(secret) >= 50 and secret not in env2
    assert "DJANGO_DEBUG=1" in env1
    assert stat.S_IMODE((first / ".env").stat().st_mode) == 0o600
    assert ".env" in (first / ".gitignore").read_text().split()


def test_post_gen_hook_is_idempotent(tmp_path):
    """cruft and --overwrite-if-exists run the hooks again over an existing project."""
    from cookiecutter.main import cookiecutter

    path = bake(tmp_path, sse_mode="async_view")
    env = (path / ".env").read_text()
    (path / "notes.txt").write_text("mine")
    again = cookiecutter(
        str(ROOT),
        no_input=True,
        output_dir=str(tmp_path),
        overwrite_if_exists=True,
        extra_context={"sse_mode": "async_view"},
    )
    assert Path(again) == path
    assert (path / ".env").read_text() == env, "the secret must survive a re-run"
    assert (path / "notes.txt").read_text() == "mine"
    assert not (path / "sse/transports/consumers.py").exists()


def test_hooks_use_only_the_standard_library_and_tojson():
    stdlib = set(sys.stdlib_module_names)
    for hook in (ROOT / "hooks").glob("*.py"):
        text = hook.read_text()
        for module in re.findall(r"^\s*(?:import|from)\s+([\w]+)", text, re.M):
            assert module in stdlib, f"{hook.name} imports {module}"
        for value in re.findall(r"\{\{\s*cookiecutter\.[^}]*\}\}", text):
            assert "|tojson" in value.replace(" ", ""), f"{hook.name}: {value} without |tojson"


def test_docs_speak_to_users_without_tracker_numbers():
    """No "issue 5" or bare "#5": users have no access to that history. Upstream bugs
    cited as owner/repo#N (django/daphne#170) name a public tracker and stay."""
    docs = [p for p in ROOT.rglob("*.md") if not {".git", "build"} & set(p.parts) and ".venv" not in str(p)]
    assert any(p.parent.name == "deploy" for p in docs) and (ROOT / "README.md") in docs
    for path in docs:
        text = path.read_text()
        found = re.findall(r"(?i)\bissues?\s*#?\s*\d+|(?<![\w/-])#\d+\b", text)
        assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_the_template_readme_says_how_to_publish_in_the_demo():
    readme = (ROOT / "README.md").read_text()
    demo = readme[readme.index("Run the demo") : readme.index("Run every test")]
    assert "form on the page" in demo and "send_event" in demo and "Redis" in demo
