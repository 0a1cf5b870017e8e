"""Refresh the Datastar client the generated project's /datastar/ demo page serves.

    python3 scripts/refresh_datastar.py [STARHTML_VERSION]

The Datastar 1.0 client (the one that speaks datastar-patch-elements and
datastar-patch-signals, as datastar-py 1.x writes them) is not on npm: the
@starfederation/datastar package stops at 1.0.0-beta.11, which speaks the older
merge-fragments events. The one registry package that ships a 1.0 client is the
StarHTML wheel on PyPI (Datastar 1.0.1 with two small StarHTML fixes). StarHTML
needs Python 3.12+ and Starlette, so it cannot be a dependency of the project:
this script copies its single-file client, with both licences, into the template.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "{{cookiecutter.project_slug}}" / "demo" / "static" / "demo" / "datastar"
DEFAULT_VERSION = "0.7.0"
CLIENT = "starhtml/static/js/datastar-core.js"


def download(spec: str, dest: Path, *pip_args: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest)]
    subprocess.run([*cmd, *pip_args, spec], check=True, capture_output=True, text=True)
    (wheel,) = dest.glob(spec.split("==")[0].replace("-", "_") + "-*.whl")
    return wheel


def member(wheel: zipfile.ZipFile, suffix: str) -> str:
    (name,) = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(name).decode()


def main() -> None:
    version = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_VERSION
    with tempfile.TemporaryDirectory() as tmp:
        # StarHTML requires Python 3.12+: ask for its wheel as 3.12 would, whatever runs this.
        starhtml = download(f"starhtml=={version}", Path(tmp) / "a", "--python-version", "3.12")
        datastar_py = download("datastar-py", Path(tmp) / "b")
        with zipfile.ZipFile(starhtml) as wheel:
            client = wheel.read(CLIENT).decode()
            apache = member(wheel, "licenses/LICENSE")
            notice = member(wheel, "licenses/NOTICE")
        with zipfile.ZipFile(datastar_py) as wheel:
            mit = member(wheel, "licenses/LICENSE.md")
    first_line = client.splitlines()[0]
    if not first_line.startswith("// Datastar v1."):
        raise SystemExit(f"unexpected client header: {first_line!r}")
    # Django's ManifestStaticFilesStorage follows sourceMappingURL, and the map is not shipped.
    lines = [line for line in client.splitlines() if not line.startswith("//# sourceMappingURL=")]
    header = [
        f"// Copied from the starhtml {version} wheel on PyPI ({CLIENT}) by scripts/refresh_datastar.py",
        f"// of the project template; sha256 of the original: {hashlib.sha256(client.encode()).hexdigest()}.",
        "// Datastar: MIT licence (LICENSE-datastar.txt); StarHTML's changes: Apache-2.0 (LICENSE-starhtml.txt).",
    ]
    TARGET.mkdir(parents=True, exist_ok=True)
    (TARGET / "datastar.js").write_text("\n".join([*header, *lines]) + "\n")
    (TARGET / "LICENSE-datastar.txt").write_text(mit.rstrip() + "\n")
    (TARGET / "LICENSE-starhtml.txt").write_text(apache.rstrip() + "\n\n" + notice.rstrip() + "\n")
    print(f"{first_line.removeprefix('// ')} -> {TARGET.relative_to(ROOT)}/datastar.js")


if __name__ == "__main__":
    main()
