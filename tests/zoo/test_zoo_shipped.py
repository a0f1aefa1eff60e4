"""The shipped zoo: each model loads, has its family and size, answers a tiny needle grid,
carries its card; `diffeval zoo` lists them; a (non-editable) install ships the files."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import diffeval
from diffeval.checkpoints.zoo import ZOO_DIR, zoo_card, zoo_models

NAMES = {"transformer-tiny": "transformer", "sha-tiny": "sha", "diff-tiny": "diff"}


def test_the_three_models_are_shipped_within_the_size_budget():
    assert set(NAMES) <= set(zoo_models())
    total = sum(f.stat().st_size for name in NAMES for f in (ZOO_DIR / name).iterdir())
    assert total <= 30 * 2**20


@pytest.mark.parametrize("name", sorted(NAMES))
def test_zoo_model_loads_with_family_size_and_card(name):
    loaded = diffeval.load(f"zoo:{name}")
    card = zoo_card(name)
    ref = diffeval.load("zoo:transformer-tiny").info.n_params
    assert loaded.info.family == NAMES[name] == card["family"]
    assert loaded.info.n_params == card["n_params"]
    assert abs(loaded.info.n_params - ref) <= 0.1 * ref
    assert card["trained_len"] >= 1024 and loaded.info.max_seq_len >= card["trained_len"]
    if name == "sha-tiny":
        assert loaded.info.n_heads == 1
    if name == "diff-tiny":
        assert 2 * loaded.info.n_heads == diffeval.load("zoo:transformer-tiny").info.n_heads
    assert {"needle_single", "needle_multi"} <= set(card["scores"])
    md = (ZOO_DIR / name / f"{name}.md").read_text()
    assert f"{card['scores']['needle_single']['accuracy']:.3f}" in md


@pytest.mark.parametrize("name", sorted(NAMES))
def test_tiny_needle_grid_runs_on_each_zoo_model(name, tmp_path):
    from diffeval.probes.needle import PROBE, NeedleConfig
    from diffeval.run import RunOptions, run_probe

    cfg = NeedleConfig(lengths=(256,), depths=(0.0, 50.0, 100.0), samples=2, seed=1)
    res = run_probe(PROBE, cfg, [f"zoo:{name}"], tmp_path, RunOptions(device="cpu", progress=False))
    m = res["metrics"][name]["accuracy"]
    assert m["n"] == 6 and 0.0 <= m["value"] <= 1.0
    # a model the card scores well at its trained length also retrieves at 256 tokens
    if zoo_card(name)["scores"]["needle_single"]["accuracy"] >= 0.9:
        assert m["value"] >= 0.5


def test_zoo_command_lists_family_params_length_and_scores():
    from diffeval.commands.train import zoo

    app = typer.Typer()
    app.command("zoo")(zoo)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["zoo"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name, family in NAMES.items():
        assert name in res.output and family in res.output
    assert str(zoo_card("transformer-tiny")["trained_len"]) in res.output


def test_non_editable_install_ships_the_zoo(tmp_path):
    root = Path(diffeval.__file__).resolve().parent.parent
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(root / f, src / f)
    shutil.copytree(root / "diffeval", src / "diffeval", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "w").glob("diffeval-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in NAMES:
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "zoo.json", f"{name}.md"):
            assert f"diffeval/zoo/{name}/{f}" in names, f"{f} of {name} missing from the wheel"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import diffeval; "
             "from diffeval.checkpoints.zoo import zoo_models; "
             "print(diffeval.__file__); print(sorted(zoo_models()))")
    out = subprocess.run([sys.executable, "-c", probe, str(target)], check=True, capture_output=True, text=True,
                         cwd=tmp_path, timeout=120).stdout
    assert str(target) in out.splitlines()[0]
    assert json.dumps(sorted(NAMES)).replace('"', "'") in out
