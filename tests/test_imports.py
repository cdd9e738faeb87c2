"""The package's import structure: every module imports alone in a fresh interpreter, and the modules form no
import cycle (imports inside functions included), so the layers read one way: rows -> bank -> denoisers ->
registry -> samplers -> commands."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "boneless"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def test_no_import_cycle():
    mods = modules()
    graph = {n: imports_of(n, p, set(mods)) - {"boneless"} for n, p in mods.items()}
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports_alone(name):
    r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                       cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stderr[-2000:]
