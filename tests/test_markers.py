"""The slow end-to-end tests carry the `integration` marker (registered in pyproject.toml), so
that `pytest -m "not integration"` is a quick loop: a test that launches torchrun, opens
Chromium, compiles Triton ahead of time or builds the wheel, itself or through a module-level
helper it names, is marked."""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
SLOW = re.compile(r"torch\.distributed\.run|\"chromium\"|triton\.compile\(|\"pip\", \"wheel\"")


def _marked(node: ast.AST) -> bool:
    return "pytest.mark.integration" in ast.unparse(node)


def _slow_unmarked(path: Path) -> tuple[list[str], list[str]]:
    """(slow tests, slow tests without the marker) of one test module."""
    text = path.read_text()
    tree = ast.parse(text)
    module_marked = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                        and _marked(n.value) for n in tree.body)
    helpers = {}
    for n in tree.body:
        names = [n.name] if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else [
            t.id for t in getattr(n, "targets", []) if isinstance(t, ast.Name)]
        for name in names:
            helpers[name] = ast.get_source_segment(text, n) or ""
    slow, unmarked = [], []
    for n in tree.body:
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"):
            used = {x.id for x in ast.walk(n) if isinstance(x, ast.Name)} | {
                a.arg for a in n.args.args}  # fixtures are helpers too
            sources = [ast.get_source_segment(text, n) or ""] + [helpers[u] for u in used if u in helpers]
            if any(SLOW.search(s) for s in sources):
                slow.append(n.name)
                if not (module_marked or any(_marked(d) for d in n.decorator_list)):
                    unmarked.append(f"{path.relative_to(TESTS)}::{n.name}")
    return slow, unmarked


def test_the_marker_is_registered(pytestconfig):
    assert any(m.startswith("integration:") for m in pytestconfig.getini("markers"))


def test_every_slow_test_is_marked():
    found, unmarked = {}, []
    for path in sorted(TESTS.rglob("test_*.py")):
        slow, bad = _slow_unmarked(path)
        if slow:
            found[path.name] = slow
        unmarked += bad
    assert not unmarked, f"slow tests without @pytest.mark.integration: {unmarked}"
    assert {"test_torchrun.py", "test_compare.py", "test_triton_diff.py", "test_wheel.py"} <= set(found), found
