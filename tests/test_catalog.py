"""Shipped task presets and figure recipes: addressed by name from any folder, paths still
work, unknown names get "did you mean", and `diffeval tasks` lists them all."""

import json
from pathlib import Path

import pytest

from diffeval.catalog import figure_recipes, is_name, listing, resolve_recipe, resolve_task, task_presets
from diffeval.errors import UsageError
from diffeval.report.figures import load_recipe
from helpers import run_cli


def test_the_paper_presets_and_recipe_are_shipped_inside_the_package():
    import diffeval

    assert {"needle-paper-4k", "needle-paper-64k", "attn-map-paper", "outliers-paper", "icl-paper",
            "halluc-paper", "nll-paper-64k"} <= set(task_presets())
    assert "paper" in figure_recipes()
    package = Path(diffeval.__file__).resolve().parent
    for path in (*task_presets().values(), *figure_recipes().values()):
        assert path.is_relative_to(package) and path.is_file()


def test_every_shipped_recipe_loads_under_its_file_name():
    for name, path in figure_recipes().items():
        assert load_recipe(path)["name"] == name


@pytest.mark.parametrize("arg,name", [("needle-paper-4k", True), ("paper", True), ("x.yaml", False),
                                      ("x.YML", False), ("./paper", False), ("dir/needle", False)])
def test_a_bare_word_is_a_name_anything_else_a_path(arg, name):
    assert is_name(arg) is name


def test_names_resolve_to_shipped_files_and_paths_stay_paths(tmp_path):
    assert resolve_task("needle-paper-4k") == task_presets()["needle-paper-4k"]
    assert resolve_recipe("paper") == figure_recipes()["paper"]
    own = tmp_path / "paper.yaml"  # a file of one's own may share a shipped name
    own.write_text("figures:\n  - {kind: nll_curve}\n")
    assert resolve_recipe(str(own)) == own
    assert resolve_task("mine.yaml").name == "mine.yaml"  # a missing path is the loader's to refuse


def test_unknown_names_and_moved_paths_say_what_exists():
    with pytest.raises(UsageError, match=r"unknown task preset 'needle-paper-8k'.*did you mean 'needle-paper-4k'\?"):
        resolve_task("needle-paper-8k")
    with pytest.raises(UsageError, match=r"unknown figure recipe 'papers'.*did you mean 'paper'\? valid: paper"):
        resolve_recipe("papers")
    with pytest.raises(UsageError, match=r"no such file; the shipped figure recipe of that name is 'paper'"):
        resolve_recipe("plots/paper.yaml")


def test_tasks_lists_every_preset_with_its_probe_and_every_recipe(capsys):
    assert run_cli(["tasks"]) == 0
    out = capsys.readouterr().out
    shipped = listing()
    assert len(shipped["presets"]) == len(task_presets()) and len(shipped["recipes"]) == len(figure_recipes())
    for p in shipped["presets"]:
        assert p["description"] and p["description"][:40] in out
        assert any(p["name"] in line and p["probe"] in line for line in out.splitlines())
    for r in shipped["recipes"]:
        assert r["description"] and r["name"] in out and r["figures"] > 0


def test_run_a_preset_by_name_then_draw_a_recipe_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of the checkout is needed
    argv = ["run", "needle-paper-4k", "--ckpt", "zoo:transformer-tiny", "--len", "256", "--depths", "50",
            "--samples", "1", "--device", "cpu", "--out", "run"]
    assert run_cli(argv) == 0
    variants = sorted((tmp_path / "run").glob("*/results.json"))
    assert len(variants) == 4  # the preset's grid: (N, R) in (1,1), (2,2), (4,2), (6,2)
    results = json.loads(variants[0].read_text())
    assert results["task"]["name"] == "needle-paper-4k"
    assert results["task"]["preset"] == str(task_presets()["needle-paper-4k"])
    assert run_cli(["figures", "paper", "--results", "run", "--out", "fig"]) == 0
    assert (tmp_path / "fig" / "needle_heatmap.png").is_file() and (tmp_path / "fig" / "multi_needle_table.md").is_file()
