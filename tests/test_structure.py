"""The house's rules, read from the code itself (AST, nothing imported):

- ``fleet`` (the kernel) imports nothing from the packages above it;
- ``producer``, ``worker`` and ``autoscaler`` never import each other, nor the
  composition root ``fleetctl``, which is the only package that imports them;
- no import cycle inside any package (every import counts: module level,
  function level and type-checking only);
- no function longer than 60 lines; no ``importlib`` loading, and an
  ``ImportError`` is turned into a typed error, never swallowed: extension
  points are registries, and a missing optional library is reported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fleet", "producer", "worker", "autoscaler", "fleetctl")
MAY_IMPORT = {
    "fleet": set(),
    "producer": {"fleet"},
    "worker": {"fleet"},
    "autoscaler": {"fleet"},
    "fleetctl": {"fleet", "producer", "worker", "autoscaler"},
}
MAX_FUNCTION_LINES = 60

pytestmark = pytest.mark.unit


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``module`` imports, resolved to a module of this tree where
    it is one (``from a.b import c`` names ``a.b.c`` when that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno


def test_the_tree_is_read() -> None:
    assert {"fleet.wire", "fleetctl.cli", "worker.service", "autoscaler.loop"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_packages_import_only_downwards(module: str) -> None:
    own = module.split(".")[0]
    wrong = [
        f"line {line}: {target}"
        for target, line in _imports(module, MODULES[module])
        if target.split(".")[0] in PACKAGES
        and target.split(".")[0] != own
        and target.split(".")[0] not in MAY_IMPORT[own]
    ]
    assert not wrong, f"{module} imports upwards or sideways: {wrong}"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _line in _imports(module, path):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module and target.split(".")[0] == module.split(".")[0]:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_inside_a_package() -> None:
    assert not _cycles(_graph())


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


def _functions() -> Iterator[tuple[str, int]]:
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                yield f"{module}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_a_screen() -> None:
    long = sorted(f"{name} ({n} lines)" for name, n in _functions() if n > MAX_FUNCTION_LINES)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_dynamic_imports_and_no_swallowed_import_errors() -> None:
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                found.append(f"{module}:{node.lineno} import_module")
            if isinstance(node, ast.Name) and node.id == "__import__":
                found.append(f"{module}:{node.lineno} __import__")
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = ast.unparse(node.type)
                raises = any(isinstance(n, ast.Raise) for n in ast.walk(node))
                if ("ImportError" in names or "ModuleNotFoundError" in names) and not raises:
                    found.append(f"{module}:{node.lineno} except {names}")
    assert not found, found
