"""The decoder's fast paths (cache, fork, chunking, backends) against its plain forward."""

import pytest
import torch

from diffeval.models import Capture
from helpers import tiny_model

FAMILIES = ["transformer", "sha", "diff", "diff2"]


@pytest.mark.parametrize("family,n_kv", [("transformer", None), ("transformer", 1), ("transformer", 2),
                                         ("sha", None), ("diff", None), ("diff", 2), ("diff", 1),
                                         ("diff2", None), ("diff2", 2)])
@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_sdpa_model_matches_reference_model(family, n_kv, T):
    model = tiny_model(family, n_kv_heads=n_kv)
    ids = torch.randint(0, 300, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        model.set_backend("reference")
        ref = model(ids)
        model.set_backend("sdpa")
        fast = model(ids)
    assert (fast - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("path", ["mask", "split", "lower-right"])
@pytest.mark.parametrize("family,n_kv", [("transformer", 2), ("transformer", None), ("sha", None), ("diff", 1),
                                         ("diff", None), ("diff2", 2)])
def test_cached_prefix_paths_match_reference_model(family, n_kv, path, monkeypatch):
    """Fresh, chunked-after-a-prefix and decode calls through each sdpa path for queries that
    continue a cache equal the reference model's full forward (<= 1e-5, fp32)."""
    import diffeval.kernels.sdpa as sdpa

    if path == "split":
        monkeypatch.setattr(sdpa, "SPLIT_MIN_PREFIX", 1)
    elif path == "lower-right":  # the CUDA branch; on the CPU its bias materialises the mask
        monkeypatch.setattr(sdpa.SdpaBackend, "_causal", _lower_right_attend)
    model = tiny_model(family, n_kv_heads=n_kv)
    ids = torch.randint(0, 300, (1, 90), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.set_backend("reference")
        want = model(ids)
        model.set_backend("sdpa")
        cache = model.new_cache()
        parts = [model(ids[:, :32], cache), model(ids[:, 32:64], cache), model(ids[:, 64:85], cache)]
        parts += [model(ids[:, t:t + 1], cache) for t in range(85, 90)]
    assert (torch.cat(parts, dim=1) - want).abs().max().item() <= 1e-5


def _lower_right_attend(self, q, k, v, scale):
    import diffeval.kernels.sdpa as sdpa

    if q.shape[2] in (1, k.shape[2]):
        return sdpa.F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, scale=scale,
                                                   enable_gqa=k.shape[1] != q.shape[1])
    return sdpa.lower_right_attend(q, k, v, scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_equals_full_forward(family):
    model = tiny_model(family, n_kv_heads=1 if family != "sha" else None)
    ids = torch.randint(0, 300, (1, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, :40], cache)]
        for t in range(40, 60):
            parts.append(model(ids[:, t : t + 1], cache))
        stepped = torch.cat(parts, dim=1)
    assert cache.length == 60
    assert (stepped - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_forked_branches_equal_full_forwards(family):
    model = tiny_model(family)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 300, (1, 50), generator=g)
    branches = [torch.randint(0, 300, (1, n), generator=g) for n in (3, 9, 1)]
    with torch.no_grad():
        base = model.new_cache()
        model(prefix, base, logits="none")
        for branch in branches:
            cache = base.fork()
            got = model(branch, cache)
            want = model(torch.cat((prefix, branch), dim=1))[:, -branch.shape[1]:]
            assert (got - want).abs().max().item() <= 1e-4
            assert cache.length == 50 + branch.shape[1]
        assert base.length == 50  # branches never touch the prefix
        wide = base.fork(batch=2)
        pair = torch.cat((branches[0], branches[0].flip(1)), dim=0)
        got = model(pair, wide)
        want = model(torch.cat((prefix.expand(2, -1), pair), dim=1))[:, -3:]
        assert (got - want).abs().max().item() <= 1e-4


def test_truncate_rolls_back_a_branch():
    model = tiny_model("diff")
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.new_cache()
        model(ids[:, :20], cache, logits="none")
        model(torch.tensor([[5, 6, 7]]), cache, logits="none")
        cache.truncate(20)
        got = model(ids[:, 20:], cache)
        want = model(ids)[:, 20:]
    assert (got - want).abs().max().item() <= 1e-4


def test_chunked_position_wise_parts_do_not_change_logits():
    model = tiny_model("transformer")
    ids = torch.randint(0, 300, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model(ids)
        model.chunk_size = 17
        chunked = model(ids)
    assert (whole - chunked).abs().max().item() <= 1e-6


def test_logit_selection_and_token_nll():
    model = tiny_model("diff")
    ids = torch.randint(0, 300, (2, 50), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids)
        last = model(ids, logits="last")
        some = model(ids, logits=torch.tensor([3, 10]))
        nll = model.token_nll(ids, chunk=7)
        odd = model.token_nll(ids, chunk=10)  # 49 targets: a partial last chunk
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
    assert torch.allclose(some, full[:, [3, 10]], atol=1e-6)
    want = torch.nn.functional.cross_entropy(full[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert nll.shape == (2, 49)
    assert torch.allclose(nll, want, atol=1e-5)
    assert torch.allclose(odd, want, atol=1e-5)


def test_48_layer_single_head_model_loads_runs_and_captures(tmp_path):
    import diffeval

    model = tiny_model("sha", n_layers=48, d_model=48, d_head=64, d_ff=64)
    diffeval.save(model, tmp_path / "sha48")
    loaded = diffeval.load(str(tmp_path / "sha48"))
    assert loaded.info.family == "sha" and loaded.info.n_layers == 48 and loaded.info.d_head == 64
    ids = torch.randint(0, 256, (1, 120), generator=torch.Generator().manual_seed(5))
    cap = Capture([119], layers=[0, 47])
    with torch.no_grad():
        logits = loaded.model(ids, capture=cap)
        cap_all = Capture([60, 119])
        loaded.model(ids, capture=cap_all, logits="none")
        want = model(ids)
    assert torch.equal(logits, want)
    assert sorted(cap.rows) == [0, 47]
    assert len(cap_all.rows) == 48
    row = cap_all.rows[47]["attn"]  # (1, 1, 2, 120)
    assert row.shape == (1, 1, 2, 120)
    assert torch.allclose(row.sum(-1), torch.ones(1, 1, 2))
    assert row[0, 0, 0, 61:].abs().max() == 0  # causal: query 60 sees keys 0..60


def test_capture_across_calls_pads_earlier_rows():
    """Rows captured during a later call (after a cached prefix) cover all keys so far."""
    model = tiny_model("diff")
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cap_one = Capture([10, 39])
        model(ids, capture=cap_one, logits="none")
        cap_two = Capture([10, 39])
        cache = model.new_cache()
        model(ids[:, :30], cache, capture=cap_two, logits="none")
        model(ids[:, 30:], cache, capture=cap_two, logits="none")
    for layer in cap_one.rows:
        for name in ("map1", "map2", "diff"):
            assert (cap_one.rows[layer][name] - cap_two.rows[layer][name]).abs().max() < 1e-5
