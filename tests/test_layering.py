"""The import graph of diffeval: every import of a diffeval module, function-local ones
included, read with `ast` (nothing is imported). The graph has no cycle, no probe imports
another probe, and the layers never import back up:
cli <- commands <- run <- probes / engine <- models / kernels / checkpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "diffeval"

# folder or module -> what it must not import (prefixes of module names)
LAYERS = {
    "diffeval.models": ("diffeval.run", "diffeval.engine", "diffeval.probes", "diffeval.report", "diffeval.results",
                        "diffeval.plotting", "diffeval.commands", "diffeval.cli", "diffeval.checkpoints",
                        "diffeval.train"),
    "diffeval.kernels": ("diffeval.run", "diffeval.engine", "diffeval.probes", "diffeval.report", "diffeval.results",
                         "diffeval.plotting", "diffeval.commands", "diffeval.cli", "diffeval.checkpoints",
                         "diffeval.train", "diffeval.models"),
    "diffeval.checkpoints": ("diffeval.run", "diffeval.engine", "diffeval.probes", "diffeval.report",
                             "diffeval.plotting", "diffeval.commands", "diffeval.cli", "diffeval.train"),
    "diffeval.probes": ("diffeval.run", "diffeval.commands", "diffeval.cli", "diffeval.report"),
    "diffeval.engine": ("diffeval.run", "diffeval.probes", "diffeval.commands", "diffeval.cli", "diffeval.report",
                        "diffeval.plotting"),
    "diffeval.run": ("diffeval.commands", "diffeval.cli"),
    "diffeval.plotting": ("diffeval.probes", "diffeval.run", "diffeval.engine", "diffeval.models",
                          "diffeval.checkpoints", "diffeval.commands", "diffeval.cli"),
    "diffeval.results": ("diffeval.run", "diffeval.engine", "diffeval.models", "diffeval.checkpoints",
                         "diffeval.probes", "diffeval.plotting", "diffeval.report", "diffeval.commands",
                         "diffeval.cli"),
    "diffeval.report": ("diffeval.run", "diffeval.engine", "diffeval.models", "diffeval.checkpoints",
                        "diffeval.commands", "diffeval.cli"),
    "diffeval.commands": ("diffeval.cli",),
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module `import name` runs last: `name` itself, or the longest prefix that is a module
    (`a.b.c` where c is an attribute of `a.b`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, source: str, modules: set[str], is_package: bool) -> set[str]:
    """The diffeval modules that `module` imports anywhere in `source`: top level, inside
    functions and classes, relative or absolute; `from a import b` names `a.b` when b is a
    submodule, else `a`. Imports under `if TYPE_CHECKING:` never run and are left out."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    skipped: set[int] = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(filter(None, (_resolve(a.name, modules) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source_mod = ".".join(base + ([node.module] if node.module else []))
            else:
                source_mod = node.module or ""
            for alias in node.names:
                sub = f"{source_mod}.{alias.name}"
                found.add(sub if sub in modules else _resolve(source_mod, modules) or "")
    return {m for m in found if m and m != module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module name -> the diffeval modules it imports, for every module under `root`."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    return {m: imports_of(m, p.read_text(encoding="utf-8"), modules, p.name == "__init__.py")
            for m, p in paths.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through every strongly connected component that has one
    (Tarjan's algorithm, iterative); [] for an acyclic graph. Deterministic: nodes in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [_cycle_in(graph, c) for c in sorted(components, key=min)]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the smallest node of a strongly connected component (breadth first)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child in component and child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def _without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in edges} for m, targets in graph.items()}


def _probe_modules() -> set[str]:
    """The probe modules, read from the registry dict `PROBES` in probes/__init__.py."""
    tree = ast.parse((PACKAGE / "probes" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "PROBES":
            return set(ast.literal_eval(node.value).values())
    raise AssertionError("diffeval/probes/__init__.py has no PROBES dict")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


# The checker itself, on small graphs and sources.

def test_find_cycles_on_a_synthetic_graph():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    cyclic = {**acyclic, "c": {"d"}, "e": {"e"}, "f": {"g"}, "g": {"h"}, "h": {"f"}}
    assert find_cycles(cyclic) == [["a", "c", "d", "a"], ["e", "e"], ["f", "g", "h", "f"]]
    assert find_cycles(_without(cyclic, {("c", "d"), ("e", "e"), ("h", "f")})) == []


def test_find_cycles_sees_a_new_cycle_in_the_package_graph(graph):
    assert find_cycles(graph) == []
    broken = {m: set(t) for m, t in graph.items()}
    broken["diffeval.errors"].add("diffeval.cli")  # cli imports errors: now a cycle
    cycles = find_cycles(broken)
    assert len(cycles) == 1 and cycles[0][0] == cycles[0][-1] and "diffeval.errors" in cycles[0]
    assert "diffeval.cli" in cycles[0]


def test_imports_are_read_everywhere_and_resolved():
    modules = {"diffeval", "diffeval.a", "diffeval.a.b", "diffeval.a.c", "diffeval.d", "diffeval.e"}
    source = ("import os\nfrom diffeval.a import b, helper\nfrom . import c\nfrom .. import d\n"
              "def f():\n    import diffeval.e.attr\n"
              "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from diffeval import d\n")
    assert imports_of("diffeval.a.x", source, modules, is_package=False) == {
        "diffeval.a.b", "diffeval.a", "diffeval.a.c", "diffeval.d", "diffeval.e"}
    assert imports_of("diffeval.a", "from . import b\nfrom .c import name\n", modules, is_package=True) == {
        "diffeval.a.b", "diffeval.a.c"}
    assert imports_of("diffeval.d", "def g():\n    from diffeval import checkpoints\n", modules | {"diffeval.checkpoints"},
                      is_package=False) == {"diffeval.checkpoints"}


# The package.

def test_the_import_graph_has_no_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_probe_imports_another_probe(graph):
    probes = _probe_modules()
    assert probes and probes <= set(graph), sorted(probes - set(graph))
    bad = sorted((m, t) for m in probes for t in graph[m] & probes)
    assert not bad, f"probe modules import other probes (move the shared piece to a shared module): {bad}"


def _inside(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_never_import_back_up(graph, layer):
    bad = sorted((m, t) for m, targets in graph.items() if _inside(m, layer) for t in targets
                 if any(_inside(t, banned) for banned in LAYERS[layer]))
    assert not bad, f"{layer} imports from a layer above it: {bad}"


# Size: a probe is one small module on the shared pieces; functions fit on a screen.
PROBE_MODULE_LINES = 250
FUNCTION_LINES = 60


def _module_file(module: str) -> Path:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    return path if path.is_file() else PACKAGE.parent / module.replace(".", "/") / "__init__.py"


def test_every_probe_module_is_small():
    sizes = {m: len(_module_file(m).read_text().splitlines()) for m in sorted(_probe_modules())}
    big = {m: n for m, n in sizes.items() if n > PROBE_MODULE_LINES}
    assert sizes and not big, f"probe modules over {PROBE_MODULE_LINES} lines (move shared pieces out): {big}"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"
