"""Layering of both packages: no import cycles (function-level imports included), no function
or class that shadows a submodule of the same name, and no library module that imports the
command line."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("discdiff", "sumi")
# entry points of the command line: only they (and the CLI's own modules) may import sumi.cli
CLI_MODULES = {"sumi.cli", "sumi.__main__"}


def _module_names() -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        base = ROOT / package
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names[".".join(parts)] = path
    return names


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module]
            # `from package import submodule` imports the submodule
            targets += [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
        for target in targets:
            if target in known and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _module_names()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a module to a package that contains it: a package's ``__init__`` re-exports
    its submodules by design, and a submodule importing a sibling through the package is the
    same edge as importing the sibling itself (kept: ``sibling`` edges)."""
    return {v: {w for w in ws if not v.startswith(w + ".")} for v, ws in graph.items()}


def test_no_import_cycles():
    cycles = _cycles(_without_parent_packages(_graph()))
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    """The checker itself: a two-module cycle through a function-level import is reported."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]


def test_library_modules_never_import_the_command_line():
    graph = _graph()
    offenders = [name for name, deps in graph.items() if "sumi.cli" in deps and name not in CLI_MODULES]
    assert not offenders, f"library modules importing sumi.cli: {offenders}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_name_shadows_a_submodule(package: str):
    """``pkg.name`` is the submodule ``pkg/name.py`` itself wherever both exist: a function named
    like its module breaks ``mock.patch("pkg.name....")`` and ``import pkg.name as m``."""
    root = importlib.import_module(package)
    bad = []
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if info.name.endswith(".__main__"):
            continue  # running it is its purpose
        module = importlib.import_module(info.name)
        parent_name, _, child = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        value = parent.__dict__.get(child)
        if value is not None and value is not module:
            bad.append(f"{info.name} is shadowed by {type(value).__name__} {value!r}")
    assert not bad, "\n".join(bad)
