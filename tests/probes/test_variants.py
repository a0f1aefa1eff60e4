"""Variant metrics of `attn-map` (probes/variants.py, models.inspect.LayerStats): first-token
mass and sink rate on rows of known mass, head-output RMS against o_proj's input hooked with
torch hooks, lambda quantiles against the model's own lambdas, massive activations against
torch.topk on the hidden states, one number on every backend and with prefix reuse, and a run
of the zoo models through the command line."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_model

from diffeval.cli import main
from diffeval.jsonshape import first_error
from diffeval.models import ActivationStats, Capture, LayerStats
from diffeval.probes import variants as V
from diffeval.results import SCHEMA_FILE

T = 40


def _ids(n: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(seed))


def _run(model, ids, stats, capture=None, split=None):
    """One forward call, or two (prefix reuse: the cache after ids[:, :split])."""
    with torch.no_grad():
        if split is None:
            model(ids, capture=capture, layer_stats=stats, logits="none")
        else:
            cache = model.new_cache()
            model(ids[:, :split], cache, capture=capture, layer_stats=stats, logits="none")
            model(ids[:, split:], cache, capture=capture, layer_stats=stats, logits="none")


def test_uniform_attention_has_the_first_token_mass_one_over_position():
    model = tiny_model("transformer")
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.q_proj.weight.zero_()  # every logit 0: a query at t puts 1 / (t + 1) on each key
    cap, stats = Capture([0, 1, 3, 39]), LayerStats(8)
    _run(model, _ids(), stats, cap)
    ft = V.first_token(cap.rows, [0, 1], [0, 1, 2, 3], 3)["attn"]  # the first three rows: 1, 1/2, 1/4
    assert np.allclose(ft, (1 + 1 / 2 + 1 / 4) / 3, atol=1e-6)
    assert np.allclose(V.first_token(cap.rows, [0, 1], [0, 1, 2, 3], 4)["attn"], (1.75 + 1 / 40) / 4, atol=1e-6)


def _record(first: np.ndarray) -> dict:
    """A record with a given first-token mass (layers, heads) and neutral other fields."""
    L = first.shape[0]
    return {"layers": list(range(L)), "first_token": {"attn": first.tolist()},
            "head_rms": {"by_bin": [[1.0, 1.0]] * L, "tokens": [1, 3], "starts": [0, 1]},
            "distributions": {}, "massive": {"top": [[4.0]] * L, "position": [[0]] * L, "feature": [[2]] * L,
                                             "median": [0.5] * L}}


def test_sink_rate_is_the_share_of_heads_above_the_threshold_per_prompt():
    a = np.array([[0.5, 0.1], [0.31, 0.29]])  # 2 of 4 heads above 0.3
    b = np.array([[0.9, 0.9], [0.9, 0.0]])  # 3 of 4
    got = V.variant_metrics([_record(a), _record(b)], threshold=0.3)
    assert got["sink_rate"]["value"] == pytest.approx((0.5 + 0.75) / 2) and got["sink_rate"]["threshold"] == 0.3
    assert got["sink_rate@layer=1"]["value"] == pytest.approx((0.5 + 0.5) / 2)
    assert got["first_token"]["value"] == pytest.approx((a.mean() + b.mean()) / 2)
    assert got["sink_rate"]["higher_is_better"] is None and got["sink_rate"]["n"] == 2
    assert V.variant_metrics([_record(a)], threshold=0.6)["sink_rate"]["value"] == 0.0
    assert got["massive.ratio"]["value"] == pytest.approx(8.0) and got["massive.top1"]["feature"] == 2


def _o_proj_inputs(model, ids) -> dict[int, torch.Tensor]:
    """layer -> what o_proj sees (B, T, H * Dv), from forward pre-hooks on a plain forward."""
    seen, handles = {}, []
    for i, layer in enumerate(model.layers):
        handles.append(layer.attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0])))
    with torch.no_grad():
        model(ids, logits="none")
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("family", ["transformer", "sha", "diff", "diff2", "gated", "sinks"])
def test_head_rms_equals_a_direct_computation_on_o_proj_input(family):
    model, ids = tiny_model(family), _ids()
    stats = LayerStats(bin_width=8)
    _run(model, ids, stats)
    H = model.cfg.n_heads
    for L, x in _o_proj_inputs(model, ids).items():
        per = x.double().view(1, T, H, -1)  # (B, T, H, Dv)
        bins = stats.bins(0, T)
        want = torch.stack([per[0, bins == b].pow(2).mean(dim=(0, 2))
                            for b in range(int(bins.max()) + 1)], -1)  # (H, bins)
        got = stats.sumsq[L] / (stats.tokens[L] * stats.width[L])
        assert torch.allclose(got, want, rtol=1e-5), (family, L)
        assert stats.tokens[L].tolist() == [1, 8, 8, 8, 8, 7]  # position 0 alone, then bins of 8
    rms = V.head_rms(stats, list(range(model.cfg.n_layers)), list(range(H)))
    assert rms["starts"] == [0, 1, 9, 17, 25, 33] and rms["by_bin"].shape == (model.cfg.n_layers, H, 6)


def test_diff_v1_head_rms_is_one_minus_lambda_init_and_lambda_is_the_layers():
    model = tiny_model("diff")
    stats = LayerStats(8)
    _run(model, _ids(), stats)
    for L, layer in enumerate(model.layers):
        rms = (stats.sumsq[L].sum() / (stats.tokens[L].sum() * stats.width[L] * model.cfg.n_heads)).sqrt()
        # a weightless RMSNorm has RMS sqrt(ms / (ms + eps)) <= 1, then the (1 - lambda_init) scale
        assert 0.98 * (1 - layer.attn.lambda_init) < float(rms) <= 1 - layer.attn.lambda_init
        assert stats.scalars[("lambda", L)] == pytest.approx(float(layer.attn.lambda_full().detach()))
    record, _ = V.distributions(stats, [0, 1], [0, 1])
    lams = [float(layer.attn.lambda_full().detach()) for layer in model.layers]
    assert record["lambda"]["all"]["q50"] == pytest.approx(np.median(lams))
    assert record["lambda"]["1"]["q05"] == pytest.approx(lams[1])
    assert record["lambda"]["1"]["q95"] == pytest.approx(lams[1])


def test_diff2_lambda_quantiles_match_the_models_lambdas():
    model, ids = tiny_model("diff2"), _ids()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.lambda_proj.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    stats = LayerStats(8)
    _run(model, ids, stats)
    seen = {}
    hooks = [layer.attn.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, m.lambdas(a[0])))
             for i, layer in enumerate(model.layers)]  # a[0]: the layer's normed input x
    with torch.no_grad():
        model(ids, logits="none")
    for h in hooks:
        h.remove()
    record, arrays = V.distributions(stats, [0, 1], [0, 1, 2, 3])
    for L in (0, 1):
        lam = seen[L][0].double().numpy()  # (H, T)
        got = record["lambda"][str(L)]
        assert got["mean"] == pytest.approx(lam.mean(), abs=1e-6) and got["min"] == pytest.approx(lam.min())
        for q in V.QUANTILES:
            # between the order statistics around rank q (n - 1), within a 1e-3 bin
            lo, hi = np.quantile(lam, q, method="lower"), np.quantile(lam, q, method="higher")
            assert lo - 1e-3 <= got[f"q{round(q * 100):02d}"] <= hi + 1e-3
        assert arrays["lambda_hist"][L].sum() == lam.size


def test_learned_sink_mass_on_uniform_attention():
    """Logits all 0 and sink logit s: a query at t gives the sink e^s / (t + 1 + e^s)."""
    model = tiny_model("sinks")
    sinks = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.q_proj.weight.zero_()
            layer.attn.sinks.copy_(sinks)
    cap = Capture([0, 9, 39])
    _run(model, _ids(), LayerStats(8), cap)
    got = V.learned_sink(cap.rows, [0, 1], [0, 1, 2, 3], 3)  # (layers, heads)
    e = sinks.double().exp()
    want = sum(e / (t + 1 + e) for t in (0, 9, 39)) / 3
    assert np.allclose(got, want.numpy()[None].repeat(2, 0), atol=1e-6)


def test_gates_reported_are_the_gated_layers_own():
    model, ids = tiny_model("gated", gate="element"), _ids()
    stats = LayerStats(8)
    _run(model, ids, stats)
    with torch.no_grad():
        h = model.embed(ids)
        x = model.layers[0].attn_norm(h)
        gates = model.layers[0].attn.gates(x)  # (B, H, T, d)
    acc = stats.dists[("gate", 0)]
    assert torch.allclose(acc["max"], gates.amax(dim=(0, 2, 3)).double())
    assert torch.allclose(acc["sum"] / acc["count"], gates.double().mean(dim=(0, 2, 3)))


def test_gate_values_of_any_width_are_summarised_per_head():
    stats = LayerStats(4)
    g = torch.rand(1, 3, 10, 5, generator=torch.Generator().manual_seed(0))  # (B, H, T, d)
    stats.add_values("gate", 0, g)
    stats.add_values("gate", 0, g[..., :1].squeeze(-1))  # (B, H, T): more tokens of the same layer
    acc = stats.dists[("gate", 0)]
    assert acc["count"].tolist() == [60, 60, 60]
    assert torch.allclose(acc["max"], g.amax(dim=(0, 2, 3)).double())


def _hidden_states(model, ids) -> list[torch.Tensor]:
    """Each block's output residual stream, as the decoder reports it to activation statistics."""
    class Record(ActivationStats):
        def update(self, name, x):
            if name == "hidden":
                seen.append(x.clone())

    seen: list[torch.Tensor] = []
    with torch.no_grad():
        model.hidden(ids, stats=Record())
    return seen


@pytest.mark.parametrize("family", ["transformer", "diff"])
def test_massive_activations_are_torch_topk_of_the_hidden_states(family):
    model, ids = tiny_model(family), _ids()
    stats = LayerStats(8, top_k=5)
    _run(model, ids, stats, split=13)  # prefix reuse: positions are absolute
    for L, h in enumerate(_hidden_states(model, ids)):
        a = h.abs()[0]  # (T, C)
        vals, pos, feat = stats.top[L]
        assert torch.allclose(vals.float(), torch.topk(a.flatten(), 5).values, rtol=1e-5)
        assert torch.allclose(a[pos, feat], vals.float(), rtol=1e-5)
        assert stats.magnitudes.median(str(L)) == pytest.approx(float(a.flatten().median()), rel=1e-5)


@pytest.mark.parametrize("family", ["transformer", "diff", "diff2"])
def test_metrics_agree_on_backends_and_with_prefix_reuse(family):
    ids = _ids()
    got = {}
    for backend, split in (("reference", None), ("sdpa", None), ("sdpa", 17), ("reference", 23)):
        model = tiny_model(family, backend=backend)
        cap, stats = Capture([0, 5, 30, 39]), LayerStats(8)
        _run(model, ids, stats, cap, split)
        rec, arrays = V.sample_variants(cap.rows, stats, [0, 1], list(range(model.cfg.n_heads)), 4)
        got[(backend, split)] = arrays
    base = got[("reference", None)]
    for key, arrays in got.items():
        assert set(arrays) == set(base)
        for name, a in arrays.items():
            if name.endswith("_hist"):  # counts: a value may sit on a bin edge
                assert np.abs(a.astype(int) - base[name]).sum() <= 2, (key, name)
            elif a.dtype.kind == "f":
                assert np.allclose(a, base[name], rtol=1e-4, atol=1e-6), (key, name)
            else:
                assert np.array_equal(a, base[name]), (key, name)


ZOO = ["--len", "200", "--depths", "50", "--samples", "1", "--needles", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """One attn-map run of the three zoo models (seconds)."""
    out = tmp_path_factory.mktemp("variants") / "run"
    main(["attn-map", *ZOO, "--sink-threshold", "0.01", "--position-bins", "4", "--out", str(out)])
    return out


def test_zoo_models_end_to_end(zoo_run):
    out = zoo_run
    results = json.loads((out / "results.json").read_text())
    schema = json.loads(SCHEMA_FILE.read_text())
    assert first_error(results, schema) is None
    bad = json.loads(json.dumps(results))
    bad["metrics"]["diff-tiny"]["massive.top1"]["position"] = -1  # the schema reads the new fields
    assert "position" in first_error(bad, schema)
    assert results["task"]["params"]["sink_threshold"] == 0.01
    for model in results["models"]:
        m = results["metrics"][model["label"]]
        L = model["config"]["n_layers"]
        for name in ("first_token", "sink_rate", "head_rms", "head_rms.first_token", "massive.top1", "massive.ratio"):
            assert m[name]["value"] is not None and m[name]["higher_is_better"] is None, (model["label"], name)
        assert m["sink_rate"]["threshold"] == 0.01
        assert {f"head_rms@position={p}" for p in (0, 1, 51, 101, 151)} <= set(m)
        assert all(f"massive.top1@layer={i}" in m for i in range(L))
        assert m["massive.top1"]["value"] == pytest.approx(max(m[f"massive.top1@layer={i}"]["value"] for i in range(L)))
        if model["family"] == "diff":  # V1: unit per-head norm, then (1 - lambda_init)
            for i in range(L):
                want = 1 - (0.8 - 0.6 * np.exp(-0.3 * i))
                assert m[f"head_rms@layer={i}"]["value"] == pytest.approx(want, rel=1e-3)
                assert m[f"lambda.q50@layer={i}"]["value"] == pytest.approx(m[f"lambda@layer={i}"]["value"], abs=1e-6)
            assert "map1.sink_rate" in m and "map2.first_token" in m
        else:
            assert not any(k.startswith(("lambda", "gate", "map1.")) for k in m)
    cell = results["cells"][0]
    assert {"first_token", "head_rms"} <= set(cell)
    assert "attn_variants.png" in results["artifacts"]["figures"] and (out / "attn_variants.png").stat().st_size > 1000
    rec = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    npz = np.load(out / "arrays" / f"{rec['model']}__{rec['id']}.npz")
    assert npz["head_rms"].shape[:2] == (len(rec["layers"]), len(rec["heads"])) and "massive_top" in npz


@pytest.mark.parametrize("argv,needle", [(["--sink-threshold", "1.5"], "1.5"), (["--position-bins", "0"], "0")])
def test_bad_variant_options_exit_2(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["attn-map", "--ckpt", "zoo:transformer-tiny", *ZOO, *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err


def test_figures_and_compare_read_the_variant_metrics(zoo_run, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("figures:\n  - {kind: attn_variants}\n  - {kind: attn_variants_table}\n")
    for out in ("a", "b"):
        assert run_cli(["figures", str(recipe), "--results", str(zoo_run), "--out", str(tmp_path / out)]) == 0
    for name in ("attn_variants.png", "attn_variants.pdf", "attn_variants.svg", "attn_variants_table.md"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert len(a) > 200 and a == b, name
    md = (tmp_path / "a" / "attn_variants_table.md").read_text()
    assert all(label in md for label in ("diff-tiny", "sha-tiny", "transformer-tiny")) and "sink rate" in md
    assert run_cli(["compare", str(zoo_run), str(zoo_run), "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert all(name in report for name in ("sink_rate", "head_rms", "massive.ratio", "lambda.q50"))
