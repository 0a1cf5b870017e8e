"""The ``sse`` package's import graph: every module imports, no circle, backends below the hub.

Read from the source (every ``import`` statement, including those inside functions,
which are circles postponed rather than avoided), so a circle fails here before
it fails at import time in some order nobody tried.
"""

import ast
import importlib
from pathlib import Path

import pytest

import sse

ROOT = Path(sse.__file__).parent
# What a backend may use: the interface, and leaf modules that know nothing of hubs or requests.
BACKEND_MAY_IMPORT = {"sse.conf", "sse.encoding", "sse.ops.metrics"}
# A backend that is a variant of another: Redis Cluster runs Redis' script, reads and catch-up.
BACKEND_EXTENDS = {"sse.backends.cluster": {"sse.backends.redis"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py")) if "migrations" not in path.parts}


def resolve(name: str) -> str | None:
    """The module of ``sse`` that importing ``name`` runs, or None outside ``sse``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]  # sse.hub.Hub -> sse.hub
    return name or None


def imports(name: str) -> set[str]:
    """The modules of ``sse`` that module ``name`` imports, anywhere in its body."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from sse import metrics" imports a module; "from sse import publish" a name.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in map(resolve, targets) if target and target.startswith("sse")}
    found.discard(name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def find_circle() -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(GRAPH[name]):
            if circle := visit(target, [*path, name]):
                return circle
        done.add(name)
        return None

    for name in sorted(GRAPH):
        if circle := visit(name, []):
            return circle
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_circle():
    circle = find_circle()
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_backends_import_only_their_interface_and_leaf_modules():
    backends = {name: targets for name, targets in GRAPH.items() if name.startswith("sse.backends")}
    assert backends, "the backends live in sse/backends/"
    for name, targets in backends.items():
        outside = {t for t in targets if not t.startswith("sse.backends") and t not in BACKEND_MAY_IMPORT}
        assert not outside, f"{name} imports {sorted(outside)}: a backend knows no hub, request or transport"
        siblings = {t for t in targets if t.startswith("sse.backends") and t != "sse.backends.base"}
        siblings -= BACKEND_EXTENDS.get(name, set())
        assert not siblings, f"{name} imports {sorted(siblings)}: backends build on sse.backends.base alone"
