"""The trainer: recipe validation, determinism (same recipe and seed, same loss curve),
resume equivalence, the exported checkpoint, and the `train` command."""

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from diffeval.errors import ConfigError, UsageError
from diffeval.train.trainer import Recipe, load_recipe, train

MICRO = dict(name="micro", model={"family": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2,
                                  "d_ff": 64, "max_seq_len": 128, "tie_embeddings": True},
             stages=[{"steps": 3, "seq_len": 64, "batch_size": 2}, {"steps": 2, "seq_len": 96, "batch_size": 1}],
             warmup_steps=2, checkpoint_every=2, log_every=1, min_doc=16)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _interrupted_at_step_3(recipe, out, monkeypatch) -> None:
    """Train `recipe` into `out`, Ctrl-C during step 4 (index 3)."""
    from diffeval.train import trainer

    real = trainer._train_step

    def crash(recipe, packer, model, opt, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(recipe, packer, model, opt, step)

    with monkeypatch.context() as m:
        m.setattr(trainer, "_train_step", crash)
        with pytest.raises(KeyboardInterrupt):
            train(recipe, out, progress=False)


def test_same_recipe_same_loss_curve_and_resume_matches(tmp_path, monkeypatch):
    recipe = Recipe(**MICRO)
    a = train(recipe, tmp_path / "a", progress=False)
    train(recipe, tmp_path / "b", progress=False)
    assert a["steps"] == 5 and a["finished"] and a["trained_len"] == 96
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    # interrupt during step 4 (checkpoint at step 2), then resume: the uninterrupted curve
    _interrupted_at_step_3(recipe, tmp_path / "c", monkeypatch)
    assert len(_losses(tmp_path / "c")) == 3
    c = train(recipe, tmp_path / "c", progress=False)
    assert c["steps"] == 5 and _losses(tmp_path / "c") == _losses(tmp_path / "a")


def test_a_cut_log_line_is_dropped_and_a_cut_state_refused(tmp_path, monkeypatch, caplog):
    recipe = Recipe(**MICRO)
    a = tmp_path / "a"
    train(recipe, a, progress=False)
    _interrupted_at_step_3(recipe, tmp_path / "c", monkeypatch)
    log = tmp_path / "c" / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + lines[1] + lines[2][:15])  # the kill cut step 3's line
    state = (tmp_path / "c" / "train_state.pt").read_bytes()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train_state.pt").write_bytes(state[: len(state) // 2])
    with caplog.at_level("WARNING", logger="diffeval"):
        c = train(recipe, tmp_path / "c", progress=False)
    assert c["steps"] == 5 and "1 damaged line(s) dropped" in caplog.text
    assert _losses(tmp_path / "c") == _losses(a)  # the cut line is gone, step 3 logged again
    with pytest.raises(UsageError, match=r"train_state.pt: unusable training state .*delete it"):
        train(recipe, tmp_path / "d", progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train_state.pt"]


def test_max_minutes_stops_and_exports(tmp_path):
    s = train(Recipe(**MICRO), tmp_path, progress=False, max_minutes=1e-9)
    assert s["steps"] == 0 and s["stopped_early"] and not s["finished"]
    assert (tmp_path / "model.safetensors").is_file()


def test_export_loads_as_a_native_checkpoint_with_its_tokenizer(tmp_path):
    import diffeval

    train(Recipe(**MICRO), tmp_path, progress=False)
    loaded = diffeval.load(str(tmp_path))
    assert loaded.info.family == "transformer" and loaded.info.tokenizer.startswith("tokenizer.json")
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("The magic number for Oslo is 1234567.")) \
        == "The magic number for Oslo is 1234567."
    assert loaded.tokenizer.bos_id is not None


def test_resume_refuses_a_different_recipe(tmp_path):
    train(Recipe(**MICRO), tmp_path, progress=False)
    with pytest.raises(UsageError, match="different recipe"):
        train(Recipe(**{**MICRO, "lr": 1e-3}), tmp_path, progress=False)


@pytest.mark.parametrize("change, match", [
    ({"stages": []}, "stages"),
    ({"stages": [{"steps": 0, "seq_len": 64, "batch_size": 1}]}, r"steps \(0\)"),
    ({"lr": -1.0}, r"lr \(-1.0\)"),
    ({"model": {"family": "transformer", "vocab_size": 10}}, "vocab_size is set from the tokenizer"),
    ({"lm_sample": 0.0}, r"lm_sample \(0.0\)"),
])
def test_recipe_errors_name_the_value(change, match):
    with pytest.raises(ConfigError, match=match):
        Recipe(**{**MICRO, **change})


def test_shipped_recipes_load_by_name_and_follow_the_papers_constructions():
    from diffeval.catalog import resolve_training_recipe, training_recipes
    from diffeval.train.trainer import model_config

    assert set(training_recipes()) == {"transformer-tiny", "sha-tiny", "diff-tiny", "gated-tiny", "sinks-tiny"}
    cfgs = {}
    for name in training_recipes():
        r = load_recipe(resolve_training_recipe(name))
        assert r.name == name and r.seq_len >= 1024 and r.threads == 1
        cfgs[name] = model_config(r, 4000)
    t, s, d = cfgs["transformer-tiny"], cfgs["sha-tiny"], cfgs["diff-tiny"]
    assert s.n_heads == 1 and s.n_layers == t.n_layers * t.n_heads  # same total heads, re-stacked
    assert d.n_heads * 2 == t.n_heads and d.d_head == t.d_model // (2 * d.n_heads)  # half the heads
    for other in (s, d):
        assert abs(other.n_params() - t.n_params()) <= 0.1 * t.n_params()
    g, k = cfgs["gated-tiny"], cfgs["sinks-tiny"]
    assert (g.family, g.gate, k.family, k.layer_types) == ("gated", "element", "sinks",
                                                          ("sliding_attention", "full_attention"))
    for other in (g, k):  # the transformer's shape, plus the variant's own parameters
        assert (other.n_layers, other.n_heads, other.d_head) == (t.n_layers, t.n_heads, t.d_head)


def test_train_command_reports_bad_input(tmp_path):
    from diffeval.commands.train import train as train_cmd

    app = typer.Typer()
    app.command("train")(train_cmd)
    app.command("noop")(lambda: None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {family: transformer}\nbogus: 1\n")
    res = CliRunner().invoke(app, ["train", "--recipe", str(bad), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, UsageError) and "unknown field(s) bogus" in str(res.exception)
    res = CliRunner().invoke(app, ["train", "--recipe", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, UsageError) and "no such file" in str(res.exception)


def test_a_diff2_recipe_trains_and_exports(tmp_path):
    import diffeval

    model = {"family": "diff2", "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 128,
             "tie_embeddings": True}
    recipe = Recipe(**{**MICRO, "name": "micro-v2", "model": model,
                       "stages": [{"steps": 3, "seq_len": 64, "batch_size": 2}]})
    s = train(recipe, tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert s["finished"] and len(losses) == 3 and all(math.isfinite(x) for x in losses)
    loaded = diffeval.load(str(tmp_path))
    assert loaded.info.family == "diff2" and loaded.model.cfg.n_kv_heads == 2
    with pytest.raises(ConfigError, match="does not support family 'diff2'"):
        train(Recipe(**{**MICRO, "name": "micro-v2i", "model": model, "init": "induction"}), tmp_path / "i",
              progress=False)
