"""The command surface: every command listed, parser errors as one line with exit 2 (under
the installed typer, which vendors its own click), bare `diffeval` prints help, and the
layering (commands -> run -> probes / engine -> models) has no import back up."""

import ast
import re
from pathlib import Path

import pytest

from diffeval.cli import COMMANDS
from helpers import run_cli

PACKAGE = Path(__file__).parent.parent / "diffeval"


def test_help_lists_every_command(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_examples_and_value_names_not_python_types(name, capsys):
    from diffeval.cli import EXAMPLES

    assert run_cli([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and EXAMPLES[name][0].split("#")[0].strip() in " ".join(out.split())
    assert not re.search(r"<(list\[)?(str|int|bool|float)\]?>", out), out
    assert "\U0001f4af" not in out  # 0:100:5 is not drawn as an emoji


def test_bare_diffeval_prints_help(capsys):
    assert run_cli([]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and "needle" in out


@pytest.mark.parametrize("argv,needle", [
    (["needle", "--samples", "abc"], "abc"),
    (["needle", "--no-such-option"], "--no-such-option"),
    (["needle", "--samples"], "--samples"),
    (["info"], "--ckpt"),
    (["run"], "TASK"),
    (["nedle"], "nedle"),
])
def test_parser_errors_are_one_line_exit_2(argv, needle, capsys):
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("diffeval: error:")
    assert "Traceback" not in captured.err


def test_every_command_lives_in_its_own_module():
    for name, fn in COMMANDS.items():
        assert fn.__module__.startswith("diffeval.commands."), name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_layers_never_import_back_up():
    """cli <- commands <- run <- probes / engine <- models / kernels / checkpoints."""
    upper = {"models": ("diffeval.run", "diffeval.probes", "diffeval.commands", "diffeval.cli", "diffeval.engine"),
             "kernels": ("diffeval.run", "diffeval.probes", "diffeval.commands", "diffeval.cli", "diffeval.engine"),
             "checkpoints": ("diffeval.run", "diffeval.probes", "diffeval.commands", "diffeval.cli", "diffeval.engine"),
             "probes": ("diffeval.run", "diffeval.commands", "diffeval.cli"),
             "commands": ("diffeval.cli",)}
    for folder, banned in upper.items():
        for path in (PACKAGE / folder).rglob("*.py"):
            bad = [m for m in _imports(path) if m.startswith(banned)]
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
    for name in ("engine.py", "run.py", "results.py"):
        bad = [m for m in _imports(PACKAGE / name) if m.startswith(("diffeval.commands", "diffeval.cli"))]
        assert not bad, f"{name} imports {bad}"
