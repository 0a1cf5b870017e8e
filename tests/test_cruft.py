"""Projects made with cruft stay updatable: check and update work on a real template change."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

CRUFT = [sys.executable, "-m", "cruft"]


def git(*args: str, cwd: Path) -> str:
    command = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_cruft_create_check_and_update(tmp_path):
    template = tmp_path / "template"
    if (ROOT / ".git").exists():
        git("clone", "-q", str(ROOT), str(template), cwd=tmp_path)
    else:  # not a checkout: make the template a repository of its own
        shutil.copytree(ROOT, template, ignore=shutil.ignore_patterns(".venv*", "build"))
        git("init", "-q", cwd=template)
        git("add", "-A", cwd=template)
        git("commit", "-qm", "template", cwd=template)
    out = tmp_path / "out"
    subprocess.run(
        [*CRUFT, "create", "--no-input", "--output-dir", str(out), str(template)], check=True, capture_output=True
    )
    project = out / "sse_project"
    secret = (project / ".env").read_text()
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "generated", cwd=project)
    assert subprocess.run([*CRUFT, "check"], cwd=project, capture_output=True).returncode == 0

    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nA line from a newer template.\n")
    git("commit", "-qam", "newer template", cwd=template)
    assert subprocess.run([*CRUFT, "check"], cwd=project, capture_output=True).returncode != 0, "out of date"

    update = subprocess.run([*CRUFT, "update", "-y"], cwd=project, capture_output=True, text=True)
    assert update.returncode == 0, update.stdout + update.stderr
    assert "A line from a newer template." in (project / "README.md").read_text()
    assert (project / ".env").read_text() == secret, "the hooks ran again without touching .env"
    changed = set(git("status", "--porcelain", cwd=project).split())
    assert changed <= {"M", "README.md", ".cruft.json"}, changed
    assert subprocess.run([*CRUFT, "check"], cwd=project, capture_output=True).returncode == 0
