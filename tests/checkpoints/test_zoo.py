"""The shipped zoo: each model loads, has its family and size, answers a tiny needle grid,
carries its card; the models share one tokenizer file; `diffeval zoo` lists them (the wheel's
contents are checked in tests/test_wheel.py)."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import diffeval
from diffeval.checkpoints import TOKENIZER_FILES
from diffeval.checkpoints.zoo import ZOO_DIR, tokenizer_dir, zoo_card, zoo_models

NAMES = {"transformer-tiny": "transformer", "sha-tiny": "sha", "diff-tiny": "diff"}


def test_the_three_models_are_shipped_within_the_size_budget():
    assert set(NAMES) <= set(zoo_models())
    total = sum(f.stat().st_size for f in ZOO_DIR.rglob("*") if f.is_file())
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


def test_the_zoo_models_share_one_tokenizer_file_and_record_what_they_did_before():
    """One copy in diffeval/zoo/, found for every model; the names and hashes results carry are
    those of the committed fixture runs (made when each model had its own copy)."""
    fixture = json.loads((Path(__file__).parents[1] / "fixtures" / "runs" / "nll" / "results.json").read_text())
    recorded = {m["label"]: m for m in fixture["models"]}
    for name in NAMES:
        assert not any((ZOO_DIR / name / f).exists() for f in TOKENIZER_FILES)  # no copies left
        assert tokenizer_dir(ZOO_DIR / name) == ZOO_DIR
        loaded = diffeval.load(f"zoo:{name}")
        assert loaded.tokenizer.path == ZOO_DIR / "tokenizer.json"
        for key in ("tokenizer", "tokenizer_sha256", "sha256", "config_sha256"):
            assert getattr(loaded.info, key) == recorded[name][key], (name, key)


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
