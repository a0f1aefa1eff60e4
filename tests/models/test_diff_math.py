"""Differential attention checked against a float64 implementation written here from the
paper's equations (Ye et al. 2024, REFERENCE.md section 1)."""

import math

import pytest
import torch

from diffeval.models.inspect import ForwardContext
from diffeval.kernels import resolve_backend
from helpers import rope64, tiny_model


def paper_diff_layer(x, attn, layer_idx):
    """One DIFF attention layer, float64, from the equations; weights in the HF layout."""
    x = x.double()
    B, T, _ = x.shape
    H, d, Hkv = attn.n_heads, attn.d_head, attn.n_kv_heads
    r = 2 * H // Hkv
    W = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    q = (x @ W["q_proj"].T).view(B, T, 2 * H, d)
    k = (x @ W["k_proj"].T).view(B, T, Hkv, d)
    v = (x @ W["v_proj"].T).view(B, T, Hkv, d)
    # rotary, rotate_half convention, theta 10000
    rot = rope64(T, d)
    q, k = rot(q), rot(k)
    lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
    lam = (
        torch.exp((attn.lambda_q1.double() * attn.lambda_k1.double()).sum())
        - torch.exp((attn.lambda_q2.double() * attn.lambda_k2.double()).sum())
        + lambda_init
    )
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for j in range(H):
        q1, q2 = q[:, :, j], q[:, :, j + H]
        k1, k2 = k[:, :, j // r], k[:, :, (j + H) // r]
        vj = torch.cat((v[:, :, j // r], v[:, :, (j + H) // r]), -1)  # (B, T, 2d)
        a1 = torch.softmax((q1 @ k1.transpose(1, 2) / math.sqrt(d)).masked_fill(~causal, -math.inf), -1)
        a2 = torch.softmax((q2 @ k2.transpose(1, 2) / math.sqrt(d)).masked_fill(~causal, -math.inf), -1)
        h = (a1 - lam * a2) @ vj
        h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + attn.subln.eps)
        heads.append((1 - lambda_init) * h)
    return torch.cat(heads, -1) @ W["o_proj"].T


@pytest.mark.parametrize("n_kv", [None, 2, 1])
@pytest.mark.parametrize("layer_idx", [0, 1])
def test_diff_layer_matches_paper_equations(n_kv, layer_idx):
    model = tiny_model("diff", n_kv_heads=n_kv, n_heads=2, d_model=64)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 and p.shape[0] == 32:  # lambda vectors: make lambda vary per layer
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    attn = model.layers[layer_idx].attn
    x = torch.randn(2, 33, 64, generator=torch.Generator().manual_seed(layer_idx), dtype=torch.float64)
    want = paper_diff_layer(x, attn, layer_idx)
    rot = model.rotary
    with torch.no_grad():
        m64 = model.double()
        cos, sin = rot.cos_sin(torch.arange(33), torch.float64)
        got64 = m64.layers[layer_idx].attn(x, cos, sin, None, ForwardContext(resolve_backend("reference")))
        assert (got64 - want).abs().max().item() < 1e-10
        m32 = model.float()
        cos, sin = rot.cos_sin(torch.arange(33), torch.float32)
        got32 = m32.layers[layer_idx].attn(x.float(), cos, sin, None, ForwardContext(resolve_backend("sdpa")))
        assert (got32.double() - want).abs().max().item() < 1e-4


def test_lambda_init_values():
    from helpers import tiny_config

    cfg = tiny_config("diff")
    expected = {0: 0.200, 1: 0.356, 2: 0.471, 5: 0.666, 10: 0.770}
    for layer, value in expected.items():
        assert abs(cfg.lambda_init(layer) - value) < 5e-4


def test_diff_norm_weight_is_used_when_present():
    model = tiny_model("diff", diff_norm_weight=True)
    assert "layers.0.attn.subln.weight" in model.state_dict()
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids)
        model.layers[0].attn.subln.weight.mul_(2.0)
        after = model(ids)
    assert (before - after).abs().max() > 1e-3
