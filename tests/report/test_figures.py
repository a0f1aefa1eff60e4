"""`diffeval figures`: every shipped recipe renders from committed fixture runs (zoo models),
figures in three formats with reproducible bytes, tables in LaTeX and markdown."""

from pathlib import Path

import pytest

from diffeval.catalog import figure_recipes
from diffeval.probes.base import Figure, TableData
from diffeval.report.figures import find_runs, kinds, load_recipe, merge
from diffeval.report.tables import latex
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "runs"
RECIPES = sorted(figure_recipes().values())


def test_fixtures_cover_every_probe_a_shipped_recipe_draws():
    probes = {r.probe for r in find_runs([str(FIXTURES)])}
    used = {kinds()[e["kind"]][0] for recipe in RECIPES for e in load_recipe(recipe)["figures"]}
    assert used and used <= probes, sorted(used - probes)


def test_every_declared_kind_draws_from_a_run_of_its_probe(tmp_path):
    """Kinds no shipped recipe uses (passkey's, attn-map's per-prompt maps) draw too."""
    from diffeval.probes.passkey import PROBE
    from diffeval.run import RunOptions, run_probe

    run_probe(PROBE, PROBE.config({"lengths": [256], "depths": [0, 100], "samples": 1}), ["zoo:sha-tiny"],
              tmp_path / "pk", RunOptions(device="cpu", progress=False))
    recipe = tmp_path / "all.yaml"
    recipe.write_text("figures:\n" + "".join(f"  - {{kind: {k}}}\n" for k, (p, _) in kinds().items()
                                              if p in ("passkey", "needle")))
    assert run_cli(["figures", str(recipe), "--results", str(tmp_path / "pk"), "--results", str(FIXTURES),
                    "--out", str(tmp_path / "fig")]) == 0
    assert {p.stem for p in (tmp_path / "fig").iterdir()} >= {"passkey_heatmap", "passkey_depths", "needle_depths"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_renders_reproducibly(recipe, tmp_path, capsys):
    entries = load_recipe(recipe)["figures"]
    for out in (tmp_path / "a", tmp_path / "b"):
        assert run_cli(["figures", str(recipe), "--results", str(FIXTURES), "--out", str(out)]) == 0
    assert "skipped" not in capsys.readouterr().err
    for e in entries:
        name = e.get("name", e["kind"])
        suffixes = (".png", ".pdf", ".svg") if isinstance(kinds()[e["kind"]][1], Figure) else (".tex", ".md")
        for suffix in suffixes:
            a, b = tmp_path / "a" / f"{name}{suffix}", tmp_path / "b" / f"{name}{suffix}"
            assert a.stat().st_size > 200, a
            assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two renders"
        if suffixes[0] == ".tex":
            tex = (tmp_path / "a" / f"{name}.tex").read_text()
            assert "\\toprule" in tex and "\\bottomrule" in tex and tex.count("\\\\") >= 2


def test_merge_prefixes_shared_labels_with_the_run():
    runs = [r for r in find_runs([str(FIXTURES)]) if r.probe == "needle"]
    res, _ = merge(runs)
    labels = [m["label"] for m in res["models"]]
    assert len(labels) == len(set(labels)) == 6 and all("/" in x for x in labels)
    assert {c["model"] for c in res["cells"]} == set(labels)
    picked, _ = merge(runs, ["needle-n4r2/diff-tiny"])
    assert [m["label"] for m in picked["models"]] == ["needle-n4r2/diff-tiny"]


def test_latex_escapes():
    tex = latex(TableData("cap", ["model", "a_b"], [["x & y", "50%"]]))
    assert "x \\& y" in tex and "50\\%" in tex and "a\\_b" in tex


def test_bad_recipes_and_results_exit_2(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("figures:\n  - {kind: needle_hetmap}\n")
    assert run_cli(["figures", str(bad), "--results", str(FIXTURES), "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'needle_heatmap'" in capsys.readouterr().err
    good = tmp_path / "g.yaml"
    good.write_text("figures:\n  - {kind: nll_curve}\n")
    assert run_cli(["figures", str(good), "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    only = FIXTURES / "needle-n1r1"
    assert run_cli(["figures", str(good), "--results", str(only), "--out", str(tmp_path / "o")]) == 2
    assert "no nll runs" in capsys.readouterr().err


def test_reports_read_runs_of_hugging_face_checkpoints(hf_dir, tmp_path, capsys):
    """compare, figures and check work the same on runs of Hugging Face directories."""
    from diffeval.probes.nll import PROBE
    from diffeval.run import RunOptions, run_probe

    text = tmp_path / "doc.txt"
    text.write_text("The river bends near the old mill, and the miller counts his sacks. " * 30)
    models = [str(hf_dir("llama")), str(hf_dir("diffllama"))]
    run = tmp_path / "nll-hf"
    run_probe(PROBE, PROBE.config({"length": 128, "data": str(text)}), models, run, RunOptions(device="cpu", progress=False))
    assert run_cli(["compare", str(run), "--out", str(tmp_path / "rep")]) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("figures:\n  - {kind: nll_curve}\n  - {kind: nll_table}\n")
    assert run_cli(["figures", str(recipe), "--results", str(run), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "nll_curve.svg").is_file() and (tmp_path / "fig" / "nll_table.tex").is_file()
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: hf\nreference: ref.yaml\nmodels: {models}\ntasks:\n"
                     f"  - {{name: nll, probe: nll, params: {{length: 128, data: '{text}'}}}}\n")
    assert run_cli(["check", str(suite), "--runs", str(tmp_path / "runs"), "--update"]) == 0
    assert run_cli(["check", str(suite), "--runs", str(tmp_path / "runs")]) == 0
    assert "0 regressed" in capsys.readouterr().out


def test_runs_over_other_depths_draw_what_they_share_and_name_the_rest(tmp_path, capsys):
    """Two attn-map runs, one over depths 0 and 100, one over 0 and 25: the recipe draws depth 0
    and names the cells it left out (it used to fail with KeyError '25')."""
    import json
    import shutil

    for name, depth in (("a", None), ("b", "25")):
        shutil.copytree(FIXTURES / "attn-map", tmp_path / "runs" / name)
        if depth is None:
            continue
        file = tmp_path / "runs" / name / "results.json"
        results = json.loads(file.read_text())
        for cell in results["cells"]:
            cell["depth"] = 25.0 if cell.get("depth") == 100.0 else cell.get("depth")
        results["metrics"] = {label: {n.replace("@depth=100", f"@depth={depth}"): v for n, v in m.items()}
                              for label, m in results["metrics"].items()}
        file.write_text(json.dumps(results))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("figures:\n  - {kind: attn_allocation}\n  - {kind: attn_layer_head}\n  - {kind: attn_table}\n")
    assert run_cli(["figures", str(recipe), "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "fig")]) == 0
    err = capsys.readouterr().err
    assert "left out a: " in err and "depth=100" in err and "left out b: " in err and "depth=25" in err, err
    assert (tmp_path / "fig" / "attn_allocation.png").stat().st_size > 1000
    runs = find_runs([str(tmp_path / "runs")])
    merged, _ = merge(runs)
    assert {c["depth"] for c in merged["cells"]} == {0.0}
    assert not any("@depth=25" in n or "@depth=100" in n for m in merged["metrics"].values() for n in m)
