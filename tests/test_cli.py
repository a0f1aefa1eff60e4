"""The command surface: every command listed, parser errors as one line with exit 2 (under
the installed typer, which vendors its own click), and bare `diffeval` prints help. The
layering of the modules is tested in test_layering.py."""

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffeval import terminal
from diffeval.cli import COMMANDS, HELP_WIDTH
from diffeval.terminal import PIPED_COLUMNS, Terminal
from helpers import run_cli


def test_help_lists_every_command(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_examples_and_value_names_not_python_types(name, capsys):
    from diffeval.cli import EXAMPLES
    from diffeval.probes import PROBES, get_probe

    assert run_cli([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and (get_probe(name).examples if name in PROBES else EXAMPLES[name])[0].split("#")[0].strip() in " ".join(out.split())
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


def test_piped_output_is_drawn_wide_and_the_environment_is_left_as_it_was(monkeypatch, capsys, tmp_path):
    """Output that is not a terminal: help at the formatter's limit (118 columns) and tables
    160 wide, with nothing left behind in os.environ."""
    runs = Path(__file__).parent / "fixtures" / "runs"
    for name in ("COLUMNS", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    assert run_cli(["needle", "--help"]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) == HELP_WIDTH - 2
    assert run_cli(["compare", str(runs / "needle-n1r1"), str(runs / "needle-n4r2"), "--out", str(tmp_path / "r")]) == 0
    assert 80 < max(map(len, capsys.readouterr().out.splitlines())) <= PIPED_COLUMNS
    assert dict(os.environ) == before


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_width_is_chosen_once_from_the_output_and_columns():
    assert Terminal.for_output(_Stream(False), {}).columns == PIPED_COLUMNS
    assert Terminal.for_output(_Stream(True), {}).columns is None  # click and rich measure the terminal
    assert Terminal.for_output(_Stream(False), {"COLUMNS": "100"}).columns is None  # the user's COLUMNS is read
    assert Terminal(160).help_width(120) == 118 and Terminal(60).help_width(120) == 58
    assert Terminal(30).help_width(120) == 50 and Terminal().help_width(120) is None
    assert terminal.of(None) == Terminal() and terminal.of(SimpleNamespace(obj=Terminal(99))).columns == 99
