"""Refresh the generated project's lock files, one set per SSE mode.

    .venv-tests/bin/python scripts/lock.py [--upgrade]

A baked project's dependencies depend on its mode, and uv.lock names the project, so
the template keeps one uv.lock per mode, with the project's name as a template
variable, plus the requirements files exported from it for pip users. The
post-generation hook moves the set of the chosen mode into place. This script
bakes each mode, locks it with uv (resolving for every supported Python: Django 5.2
on 3.11, 6.1 on 3.12+), exports, and writes the results back into the template.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "{{cookiecutter.project_slug}}" / ".locks"
PLACEHOLDER = "lockfile_placeholder"
# uv normalises the project's name (PEP 503): the slug's underscores become dashes.
NAME_IN_LOCK = 'name = "lockfile-placeholder"'
NAME_TEMPLATE = "name = \"{{ cookiecutter.project_slug|replace('_', '-') }}\""
# Each file is exactly what this command writes, so re-running it after `uv lock` (README)
# reproduces it. Without annotations: their "# via" notes would name the project, and the
# order of those notes depends on the name, so no template variable could stand in for it.
EXPORT = ["export", "--frozen", "--no-emit-project", "--no-annotate"]
EXPORTS = {
    # Production: runtime dependencies and the PostgreSQL driver, hashed.
    "requirements.txt": ["--no-dev", "--extra", "postgres"],
    # Development and tests, as the quickstart's pip path installs them.
    "requirements-dev.txt": ["--group", "dev"],
}


def export_command(name: str) -> list[str]:
    """The uv arguments that write ``name`` (without the leading ``uv``)."""
    return [*EXPORT, *EXPORTS[name], "-o", name]


def uv(*args: str, cwd: Path) -> str:
    exe = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    return subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def lock_mode(mode: str, upgrade: bool) -> None:
    from cookiecutter.main import cookiecutter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(
            cookiecutter(
                str(ROOT),
                no_input=True,
                output_dir=tmp,
                extra_context={"sse_mode": mode, "project_name": PLACEHOLDER.replace("_", " ")},
            )
        )
        uv("lock", *(["--upgrade"] if upgrade else []), cwd=path)
        target = LOCKS / mode
        target.mkdir(parents=True, exist_ok=True)
        text = (path / "uv.lock").read_text()
        assert NAME_IN_LOCK in text, "the project's name is not where this script expects it"
        (target / "uv.lock").write_text(text.replace(NAME_IN_LOCK, NAME_TEMPLATE))
        for name in EXPORTS:
            uv(*export_command(name), cwd=path)
            shutil.copyfile(path / name, target / name)
        print(f"{mode}: {target.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest allowed release")
    args = parser.parse_args()
    for mode in ("channels", "async_view"):
        lock_mode(mode, args.upgrade)


if __name__ == "__main__":
    main()
