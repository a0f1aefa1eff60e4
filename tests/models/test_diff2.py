"""DIFF V2 (`diff2`) checked against a float64 implementation written here from its equations
(REFERENCE.md section 1): 2H query heads of full head size, heads 2i / 2i+1 sharing K/V,
out_i = A_2i V - sigmoid(W_lambda x)_i A_2i+1 V, no per-head norm, no (1 - lambda_init)."""

import math

import pytest
import torch

import diffeval
from diffeval.errors import ConfigError
from diffeval.kernels import resolve_backend
from diffeval.models import Capture
from diffeval.models.inspect import ForwardContext
from helpers import rope64, run_cli, tiny_config, tiny_model


def v2_equations(x, attn):
    """One DIFF V2 layer in float64 -> (output (B, T, d_model), maps 1 and 2 (B, H, T, T),
    lambda (B, H, T)). Heads and groups indexed explicitly, one head at a time."""
    x = x.double()
    B, T, _ = x.shape
    H, d, Hkv = attn.n_heads, attn.d_head, attn.n_kv_heads
    group = 2 * H // Hkv  # query heads per key/value head
    W = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj", "lambda_proj")}
    q = (x @ W["q_proj"].T).view(B, T, 2 * H, d)
    k = (x @ W["k_proj"].T).view(B, T, Hkv, d)
    v = (x @ W["v_proj"].T).view(B, T, Hkv, d)
    rot = rope64(T, d)
    q, k = rot(q), rot(k)
    pre = x @ W["lambda_proj"].T
    if attn.lambda_proj.bias is not None:
        pre = pre + attn.lambda_proj.bias.double()
    lam = torch.sigmoid(pre)  # (B, T, H)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads, maps1, maps2 = [], [], []
    for i in range(H):
        kv = (2 * i) // group
        assert kv == (2 * i + 1) // group  # the pair shares one key/value head
        a1 = torch.softmax((q[:, :, 2 * i] @ k[:, :, kv].transpose(1, 2) / math.sqrt(d)).masked_fill(~causal, -math.inf), -1)
        a2 = torch.softmax((q[:, :, 2 * i + 1] @ k[:, :, kv].transpose(1, 2) / math.sqrt(d)).masked_fill(~causal, -math.inf), -1)
        heads.append(a1 @ v[:, :, kv] - lam[:, :, i, None] * (a2 @ v[:, :, kv]))  # (B, T, d)
        maps1.append(a1)
        maps2.append(a2)
    out = torch.cat(heads, -1) @ W["o_proj"].T
    if attn.o_proj.bias is not None:
        out = out + attn.o_proj.bias.double()
    return out, torch.stack(maps1, 1), torch.stack(maps2, 1), lam.transpose(1, 2)


def _random_lambda(model, bias: bool):
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for layer in model.layers:
            layer.attn.lambda_proj.weight.normal_(0, 0.3, generator=g)
            if bias:
                layer.attn.lambda_proj.bias.normal_(0, 1.0, generator=g)


@pytest.mark.parametrize("n_kv,bias", [(None, False), (2, True), (1, False)])
def test_diff2_layer_matches_its_equations(n_kv, bias):
    model = tiny_model("diff2", n_kv_heads=n_kv, lambda_bias=bias)
    _random_lambda(model, bias)
    x = torch.randn(2, 29, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attn = model.layers[1].attn
    want, *_ = v2_equations(x, attn)
    with torch.no_grad():
        m64 = model.double()
        cos, sin = model.rotary.cos_sin(torch.arange(29), torch.float64)
        got64 = m64.layers[1].attn(x, cos, sin, None, ForwardContext(resolve_backend("reference")))
        assert (got64 - want).abs().max().item() < 1e-10
        m32 = model.float()
        cos, sin = model.rotary.cos_sin(torch.arange(29), torch.float32)
        got32 = m32.layers[1].attn(x.float(), cos, sin, None, ForwardContext(resolve_backend("sdpa")))
        assert (got32.double() - want).abs().max().item() < 1e-4


def test_diff2_shapes_and_parameter_count():
    cfg = tiny_config("diff2", n_heads=4, d_model=64)
    assert (cfg.d_head, cfg.n_q_heads, cfg.n_kv_heads, cfg.d_value) == (16, 8, 4, 16)
    model = tiny_model("diff2")
    a = model.layers[0].attn
    assert a.q_proj.weight.shape == (128, 64) and a.o_proj.weight.shape == (64, 64)
    assert a.lambda_proj.weight.shape == (4, 64) and a.lambda_proj.bias is None
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
    assert tiny_config("diff2", lambda_bias=True).n_params() == cfg.n_params() + 2 * 4


def test_diff2_needs_an_even_gqa_group():
    with pytest.raises(ConfigError, match=r"GQA group size .*\(8 / 8 = 1\) must be even"):
        tiny_config("diff2", n_kv_heads=8)


def test_diff2_capture_rows_equal_explicit_maps_across_calls():
    model = tiny_model("diff2", n_kv_heads=2)
    _random_lambda(model, False)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    positions = [39, 0, 17, 25]
    cap = Capture(positions)
    with torch.no_grad():
        cache = model.new_cache()
        model(ids[:, :20], cache, capture=cap, logits="none")  # rows 0, 17 here, 25 and 39 after the prefix
        model(ids[:, 20:], cache, capture=cap, logits="none")
        h = model.embed(ids).double()
        m64 = model.double()
    for layer in range(2):
        x = m64.layers[layer].attn_norm(h)
        _, a1, a2, lam = v2_equations(x, m64.layers[layer].attn)
        rows = cap.rows[layer]
        torch.testing.assert_close(rows["map1"].double(), a1[:, :, positions], atol=2e-6, rtol=0)
        torch.testing.assert_close(rows["map2"].double(), a2[:, :, positions], atol=2e-6, rtol=0)
        torch.testing.assert_close(rows["lambda"].double(), lam[:, :, positions], atol=1e-6, rtol=0)
        want = a1[:, :, positions] - lam[:, :, positions, None] * a2[:, :, positions]
        torch.testing.assert_close(rows["diff"].double(), want, atol=2e-6, rtol=0)
        assert (rows["diff"].sum(-1) - (1 - rows["lambda"])).abs().max() < 1e-5  # rows sum to 1 - lambda
        h = h + m64.layers[layer].attn(x, *model.rotary.cos_sin(torch.arange(40), torch.float64), None,
                                       ForwardContext(resolve_backend("reference")))
        h = h + m64.layers[layer].mlp_residual(h)


def test_diff2_logit_hook_reaches_each_map():
    model = tiny_model("diff2")
    ids = torch.randint(0, 300, (1, 25), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(ids)
        # uniform map 2 only: equals a model whose odd query heads are zero
        hooked = model(ids, logit_hook=lambda lg, valid, layer, m: lg * 0 if m == 1 else lg)
        for layer in model.layers:
            w = layer.attn.q_proj.weight.view(8, 16, 64)
            w[1::2] = 0
        zeroed = model(ids)
    assert (base - hooked).abs().max() > 1e-3
    assert (hooked - zeroed).abs().max() < 1e-5


def test_diff2_saves_natively_and_info_shows_the_lambda_projection(tmp_path, capsys):
    model = tiny_model("diff2", vocab_size=259, lambda_bias=True)
    _random_lambda(model, True)
    diffeval.save(model, tmp_path / "m")
    loaded = diffeval.load(str(tmp_path / "m"))
    assert loaded.info.family == "diff2" and loaded.model.cfg.lambda_bias
    ids = torch.randint(0, 259, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded.model(ids))
    assert run_cli(["info", "--ckpt", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "diff2" in out and "lambda_proj 64 -> 4 (with bias)" in out
