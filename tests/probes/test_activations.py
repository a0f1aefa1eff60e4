"""Outlier statistics against a brute-force computation through real tiny models, and the
text -> sequences splitting (exact counts, no silent truncation)."""

import math

import pytest
import torch

from diffeval.errors import ConfigError
from diffeval.kernels.common import expand_kv
from diffeval.models.layers import apply_rotary
from diffeval.probes import activations as probe
from helpers import tiny_model


def brute_force(model, seqs):
    """Every causal attention logit (per map) and every layer output, recomputed from the
    weights in float64 -> {activation: 1-D tensor of |x|}, {activation: top-1 per layer}."""
    cfg = model.cfg
    diff = cfg.family == "diff"
    found = {"attention_logits_map1": [], "attention_logits_map2": [], "hidden_states": []}
    per_layer = {k: [0.0] * cfg.n_layers for k in found}
    for seq in seqs:
        ids = torch.tensor([seq])
        T = ids.shape[1]
        with torch.no_grad():
            h = model.embed(ids)  # (1, T, C)
            cos, sin = model.rotary.cos_sin(torch.arange(T), h.dtype)
            for i, block in enumerate(model.layers):
                a = block.attn
                x = block.attn_norm(h)
                n_q = 2 * a.n_heads if diff else a.n_heads
                q = a.q_proj(x).view(1, T, n_q, a.d_head).transpose(1, 2)
                k = a.k_proj(x).view(1, T, a.n_kv_heads, a.d_head).transpose(1, 2)
                q, k = apply_rotary(q, cos, sin).double(), expand_kv(apply_rotary(k, cos, sin), n_q).double()
                scores = q @ k.transpose(-1, -2) / math.sqrt(a.d_head)  # (1, n_q, T, T)
                causal = torch.ones(T, T, dtype=torch.bool).tril()
                maps = [scores[:, : a.n_heads], scores[:, a.n_heads :]] if diff else [scores]
                for name, s in zip(("attention_logits_map1", "attention_logits_map2"), maps):
                    vals = s[:, :, causal].abs().flatten()
                    found[name].append(vals)
                    per_layer[name][i] = max(per_layer[name][i], float(vals.max()))
                h = h + a(x, cos, sin, None, _plain_ctx(model))
                h = h + block.mlp_residual(h)
                found["hidden_states"].append(h.abs().flatten().double())
                per_layer["hidden_states"][i] = max(per_layer["hidden_states"][i], float(h.abs().max()))
    out = {k: torch.cat(v) for k, v in found.items() if v}
    if diff:
        out["attention_logits"] = torch.cat([out["attention_logits_map1"], out["attention_logits_map2"]])
        per_layer["attention_logits"] = [max(a, b) for a, b in zip(per_layer["attention_logits_map1"],
                                                                   per_layer["attention_logits_map2"])]
    else:
        out["attention_logits"] = out.pop("attention_logits_map1")
        per_layer["attention_logits"] = per_layer.pop("attention_logits_map1")
        del per_layer["attention_logits_map2"]
    return out, per_layer


def _plain_ctx(model):
    from diffeval.models.inspect import ForwardContext

    return ForwardContext(model.backend, n_layers=model.cfg.n_layers)


@pytest.mark.parametrize("family,overrides", [("transformer", {"n_kv_heads": 2}), ("diff", {}), ("sha", {})])
def test_table5_statistics_equal_brute_force(family, overrides):
    model = tiny_model(family, **overrides)
    g = torch.Generator().manual_seed(11)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (23, 17, 2)]
    stats = probe.OutlierStats(model.cfg.n_layers)
    for seq in seqs:  # the way the run streams them: one sequence per forward, with the hook
        stats.begin_forward()
        model.token_nll(torch.tensor([seq]), stats=stats, logit_hook=probe.quant_hook(16))
        stats.end_forward()
    want, want_layer = brute_force(model, seqs)
    table = stats.table()
    expected_rows = ["attention_logits", "hidden_states"]
    if family == "diff":
        expected_rows = ["attention_logits", "attention_logits_map1", "attention_logits_map2", "hidden_states"]
    assert list(table) == expected_rows
    for name, row in table.items():
        vals = want[name].sort(descending=True).values
        assert row["count"] == vals.numel()
        for r in probe.RANKS:
            assert row[f"top{r}"] == pytest.approx(float(vals[r - 1]), rel=1e-5, abs=1e-6), (name, r)
        assert row["median"] == pytest.approx(float(want[name].median()), rel=1e-5, abs=1e-6)
        assert row["median_exact"]
    got_layer = stats.per_layer()
    assert list(got_layer) == expected_rows
    for name in expected_rows:
        assert got_layer[name] == pytest.approx(want_layer[name], rel=1e-5)


def test_counts_cover_only_causal_logits():
    model = tiny_model("transformer")
    stats = probe.OutlierStats(model.cfg.n_layers)
    stats.begin_forward()
    with torch.no_grad():
        model.hidden(torch.zeros(1, 12, dtype=torch.long), stats=stats)
    stats.end_forward()
    table = stats.table()
    assert table["attention_logits"]["count"] == model.cfg.n_layers * model.cfg.n_heads * 12 * 13 // 2
    assert table["hidden_states"]["count"] == model.cfg.n_layers * 12 * model.cfg.d_model


def test_stats_refuse_a_forward_that_skips_layers():
    stats = probe.OutlierStats(n_layers=3)
    stats.begin_forward()
    stats.update("hidden", torch.ones(2))
    with pytest.raises(RuntimeError, match="1 of 3 layers"):
        stats.end_forward()


def test_memory_stays_bounded_past_the_exact_median_limit():
    stats = probe.OutlierStats(n_layers=1, exact_limit=500)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        stats.begin_forward()
        stats.update("attn_logits", torch.randn(300, generator=g))
        stats.update("hidden", torch.randn(300, generator=g))
        stats.end_forward()
    row = stats.table()["hidden_states"]
    assert row["count"] == 6000 and not row["median_exact"]
    assert stats._exact["hidden_states"] is None and stats._top["hidden_states"].numel() == max(probe.RANKS)


# --- sequences ------------------------------------------------------------------------------


def test_sequences_have_exact_lengths_bos_first_and_consume_the_stream_in_order():
    stream = iter(range(1000))
    out = list(probe.sequences(stream, 25, 10, bos=-1))
    assert [len(s) for _, s in out] == [10, 10, 5]  # 25 tokens in all, BOS included
    assert all(s[0] == -1 for _, s in out)
    assert [o for o, _ in out] == [0, 9, 18]
    assert [t for _, s in out for t in s[1:]] == list(range(22))


def test_sequences_refuse_a_short_stream_and_count_it():
    with pytest.raises(ConfigError, match="ran out after 14 of 30"):
        list(probe.sequences(iter(range(12)), 30, 10, bos=-1))
    assert probe.count_tokens(iter(range(12)), 30, 10, has_bos=True) == 14  # 10 + (1 + 3)
    assert probe.count_tokens(iter(range(12)), None, 10, has_bos=False) == 12
    assert [len(s) for _, s in probe.sequences(iter(range(12)), None, 10, bos=None)] == [10, 2]


def test_synthetic_text_is_seeded():
    a = [next(probe.essay_paragraphs(probe.synthetic_rng(3))) for _ in range(2)]
    b = probe.essay_paragraphs(probe.synthetic_rng(4))
    assert a[0] == a[1] and a[0] != next(b) and a[0].endswith("\n\n")


@pytest.mark.parametrize("exact_limit", [1 << 20, 700])
def test_pooled_diff_row_equals_feeding_both_maps_to_one_accumulator(exact_limit):
    from diffeval.models.inspect import ActivationStats

    g = torch.Generator().manual_seed(9)
    stats = probe.OutlierStats(n_layers=1, exact_limit=exact_limit)
    union = ActivationStats(top_k=max(probe.RANKS), exact_limit=exact_limit)
    for _ in range(3):
        a, b = torch.randn(200, generator=g).exp(), torch.randn(150, generator=g).exp() * 3
        b[:5] = 0.0
        stats.begin_forward()
        stats.update("attn_logits", a)
        stats.update("attn_logits_map2", b)
        stats.update("hidden", torch.ones(4))
        stats.end_forward()
        union.update("x", a)
        union.update("x", b)
    got, want = stats.table()["attention_logits"], union.summary("x", probe.RANKS)
    assert got == pytest.approx(want, rel=1e-12)
    assert got["median_exact"] == (exact_limit > 1050)
