"""Activation statistics and the attention-logit hook."""

import pytest
import torch

from diffeval.models import ActivationStats
from helpers import tiny_model


def test_stats_equal_brute_force_on_small_input():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(37, 11, generator=g) * 5 for _ in range(4)] + [torch.zeros(3)]
    stats = ActivationStats(top_k=100)
    for c in chunks:
        stats.update("x", c)
    allv = torch.cat([c.flatten() for c in chunks]).abs().double()
    s = stats.summary("x")
    top = allv.sort(descending=True).values
    for r in (1, 2, 3, 10, 100):
        assert s[f"top{r}"] == pytest.approx(float(top[r - 1]), rel=1e-6)
    assert s["median"] == pytest.approx(float(allv.median()), rel=1e-6)
    assert s["count"] == allv.numel() and s["median_exact"]


def test_histogram_median_is_close_when_streaming_past_the_exact_limit():
    g = torch.Generator().manual_seed(1)
    stats = ActivationStats(exact_limit=1000)
    data = [torch.randn(5000, generator=g).exp() for _ in range(6)]
    for d in data:
        stats.update("x", d)
    s = stats.summary("x")
    assert not s["median_exact"]
    true = float(torch.cat(data).median())
    assert abs(s["median"] - true) / true < 3e-3


@pytest.mark.parametrize("family", ["transformer", "diff", "diff2"])
def test_model_stats_see_every_causal_logit_and_every_hidden_state(family):
    model = tiny_model(family)
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(2))
    stats = ActivationStats()
    with torch.no_grad():
        plain = model(ids)
        observed = model(ids, stats=stats)
    assert torch.allclose(plain, observed, atol=1e-5)  # statistics do not change the model
    n_q = model.cfg.n_heads
    per_map = model.cfg.n_layers * n_q * 30 * 31 // 2
    assert stats.summary("attn_logits")["count"] == per_map
    if family in ("diff", "diff2"):
        assert stats.summary("attn_logits_map2")["count"] == per_map
    assert stats.summary("hidden")["count"] == model.cfg.n_layers * 30 * model.cfg.d_model


@pytest.mark.parametrize("family", ["diff", "diff2"])
def test_logit_hook_identity_leaves_logits_unchanged_and_sees_layers(family):
    model = tiny_model(family)
    ids = torch.randint(0, 300, (1, 25), generator=torch.Generator().manual_seed(3))
    seen = set()

    def hook(logits, valid, layer, map_index):
        seen.add((layer, map_index))
        return logits

    with torch.no_grad():
        assert torch.allclose(model(ids), model(ids, logit_hook=hook), atol=1e-5)
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_logit_hook_changes_attention():
    model = tiny_model("transformer")
    ids = torch.randint(0, 300, (1, 25), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = model(ids)
        flat = model(ids, logit_hook=lambda lg, valid, layer, m: lg * 0)  # uniform attention
    assert (base - flat).abs().max() > 1e-3
