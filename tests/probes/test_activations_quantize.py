"""Attention-logit quantization: the absmax rounding bound, per-row scales, the 16-bit
baseline, and the hook inside real tiny models (full forward, KV cache, engine)."""

import pytest
import torch

from diffeval.engine import Engine, Generate, Hook
from diffeval.errors import ConfigError
from diffeval.kernels.common import causal_valid
from diffeval.probes.activations import quant_hook, quantize_absmax
from diffeval.specs import parse_bits
from helpers import tiny_model


def _logits(seed: int = 0, B: int = 2, H: int = 3, R: int = 9, Tk: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, R, Tk, generator=g, dtype=torch.float64) * 3
    x[0, 1, 4, 2] = 250.0  # an outlier sets its row's scale
    x[1, 0, 8, 0] = -40.0
    valid = causal_valid(torch.arange(Tk - R, Tk), Tk)  # (R, Tk)
    return x, valid


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 15])
def test_quantization_error_within_the_absmax_rounding_bound(bits):
    x, valid = _logits(bits)
    q = quantize_absmax(x, valid, bits)
    levels = 2 ** (bits - 1) - 1
    amax = x.abs().masked_fill(~valid, 0).amax(-1, keepdim=True)  # (B, H, R, 1)
    step = amax / levels
    err = (q - x).abs()
    assert (err[:, :, valid] <= (step / 2).expand_as(x)[:, :, valid] * (1 + 1e-12)).all()
    # Values are integer multiples of the row's step, at most `levels` of them per sign.
    k = q / step
    assert torch.allclose(k[:, :, valid], k[:, :, valid].round(), atol=1e-9)
    assert k[:, :, valid].abs().max() <= levels + 1e-9
    assert torch.equal(q[:, :, ~valid], x[:, :, ~valid])  # masked entries untouched
    assert torch.equal(quantize_absmax(-x, valid, bits), -q)  # symmetric
    if bits <= 4:
        assert (q - x).abs().max() > 0  # a real change, not the identity


def test_masked_logits_do_not_set_the_scale():
    x, valid = _logits(1)
    big = x.clone()
    big[:, :, ~valid] = 1e6  # huge values where the causal mask hides them
    assert torch.equal(quantize_absmax(big, valid, 4)[:, :, valid], quantize_absmax(x, valid, 4)[:, :, valid])


def test_scale_is_per_row_so_query_blocking_does_not_matter():
    x, valid = _logits(2)
    whole = quantize_absmax(x, valid, 4)
    parts = torch.cat([quantize_absmax(x[:, :, :4], valid[:4], 4), quantize_absmax(x[:, :, 4:], valid[4:], 4)], dim=2)
    assert torch.equal(whole, parts)


def test_all_zero_rows_pass_through():
    x = torch.zeros(1, 1, 3, 3)
    valid = causal_valid(torch.arange(3), 3)
    assert torch.equal(quantize_absmax(x, valid, 4), x)


@pytest.mark.parametrize("family", ["transformer", "diff"])
def test_16_bits_leaves_results_unchanged(family):
    model = tiny_model(family, n_kv_heads=1 if family == "transformer" else 2)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = model(ids)  # fast path, no hook
        hooked = model(ids, logit_hook=quant_hook(16))  # reference path through the identity hook
    assert torch.allclose(plain, hooked, atol=1e-5)
    want = torch.nn.functional.cross_entropy(plain[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    nll = model.token_nll(ids, chunk=7, logit_hook=quant_hook(16))  # 39 targets: a partial last chunk
    assert nll.shape == (1, 39)
    assert torch.allclose(nll, want, atol=1e-5)


@pytest.mark.parametrize("family", ["transformer", "diff"])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fewer_bits_change_logits_within_the_bound_inside_the_model(family, bits):
    model = tiny_model(family)
    ids = torch.randint(0, 300, (1, 33), generator=torch.Generator().manual_seed(6))
    hook = quant_hook(bits)
    seen = []

    def recording(logits, valid, layer, map_index):
        out = hook(logits, valid, layer, map_index)
        amax = logits.abs().masked_fill(~valid, 0).amax(-1, keepdim=True)
        bound = (amax / (2 ** (bits - 1) - 1) / 2).expand_as(logits)
        seen.append((layer, map_index, float(((out - logits).abs() - bound)[:, :, valid].max()),
                     float((out - logits).abs().max())))
        return out

    with torch.no_grad():
        base = model(ids, logit_hook=quant_hook(16))
        quant = model(ids, logit_hook=recording)
    maps = 2 if family == "diff" else 1
    assert {(l, m) for l, m, _, _ in seen} == {(l, m) for l in range(model.cfg.n_layers) for m in range(maps)}
    assert max(over for _, _, over, _ in seen) <= 1e-6
    assert max(change for _, _, _, change in seen) > 0
    if bits == 2:
        assert (quant - base).abs().max() > 1e-4  # the model's output really moved


def test_quantized_forward_is_the_same_in_one_pass_and_through_the_kv_cache():
    model = tiny_model("diff")
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(7))
    hook = quant_hook(4)
    with torch.no_grad():
        whole = model(ids, logit_hook=hook)
        cache = model.new_cache()
        first = model(ids[:, :17], cache, logit_hook=hook)
        rest = model(ids[:, 17:], cache, logit_hook=hook)
    assert torch.allclose(torch.cat([first, rest], dim=1), whole, atol=1e-5)


def test_engine_under_the_16_bit_hook_generates_what_it_does_without():
    model = tiny_model("transformer", vocab_size=259)
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (20, 25, 25)]
    prompts.append(prompts[1][:22] + [5, 6, 7])  # shares a prefix with prompt 1

    def run(hook):
        got = {}
        work = [[Generate(tuple(p), 5, None, hook)] for p in prompts]
        for i, outs in Engine(model).run(work):
            got.__setitem__(i, outs[0])
        return got

    plain = run(None)
    assert run(Hook("absmax-16", quant_hook(16))) == plain
    coarse = run(Hook("absmax-2", quant_hook(2)))
    assert len(coarse) == len(prompts) and coarse != plain  # 2 bits changes what the model says


@pytest.mark.parametrize("spec,needle", [
    ("1", "1 bits"), ("17", "17"), ("8,8", "twice"), ("8,x", "'x'"), ("", "bit widths"),
])
def test_bad_bit_widths_are_refused_with_the_value(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_bits(spec)


def test_bit_widths_parse():
    assert parse_bits("16,8,6,4") == (16, 8, 6, 4)
    assert parse_bits(" 4 , 2 ") == (4, 2)
    assert parse_bits("none") == ()
