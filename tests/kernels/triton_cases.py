"""The interpreted-kernel checks of test_triton_diff.py, run in a worker process whose Triton
interprets kernels; each returns the numbers the test asserts on."""

import torch

from diffeval.kernels import resolve_backend
from diffeval.kernels.common import DiffNorm
from diffeval.kernels.triton_diff import _diff_attn_fwd, diff_attention
from helpers import tiny_model

REF = resolve_backend("reference")


def interpreting() -> bool:
    """Whether this process's Triton runs the kernel in its interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_diff_attn_fwd, InterpretedFunction)


def fp32_error(T: int, q_len: int, n_kv: int) -> float:
    g = torch.Generator().manual_seed(T + q_len)
    q = torch.randn(2, 4, q_len, 32, generator=g) * 2
    k = torch.randn(2, n_kv, T, 32, generator=g) * 2
    v = torch.randn(2, n_kv, T, 32, generator=g)
    want = REF.diff_attend(q, k, v, torch.tensor(0.42), scale=32**-0.5)
    got = diff_attention(q, k, v, 0.42, 32**-0.5, block_n=128)
    return (got - want).abs().max().item()


def fp16_odd_head_size() -> tuple[torch.dtype, float]:
    """(output dtype, max error against the float32 reference) at head size 24."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 90, 24, generator=g).half()
    k = torch.randn(1, 2, 90, 24, generator=g).half()
    v = torch.randn(1, 2, 90, 24, generator=g).half()
    want = REF.diff_attend(q.float(), k.float(), v.float(), torch.tensor(0.3), scale=24**-0.5)
    got = diff_attention(q, k, v, 0.3, 24**-0.5, block_n=128)
    return got.dtype, (got.float() - want).abs().max().item()


def fused_norm_errors(weighted: bool) -> tuple[float, float]:
    """(error of the fused norm against the reference's, difference the norm makes)."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 50, 24, generator=g)
    k = torch.randn(1, 2, 50, 24, generator=g)
    v = torch.randn(1, 2, 50, 24, generator=g)
    norm = DiffNorm(torch.rand(48, generator=g) + 0.5 if weighted else None, 1e-5, 0.8)
    want = REF.diff_attend(q, k, v, torch.tensor(0.6), scale=24**-0.5, norm=norm)
    got = diff_attention(q, k, v, 0.6, 24**-0.5, norm=norm, block_n=128)
    plain = diff_attention(q, k, v, 0.6, 24**-0.5, block_n=128)
    return (got - want).abs().max().item(), (plain - want).abs().max().item()


def model_errors(weighted: bool) -> tuple[float, float]:
    """(error of a full forward pass on the triton backend, of chunked prefill and decode)."""
    model = tiny_model("diff", n_kv_heads=2, diff_norm_weight=weighted)
    if weighted:
        with torch.no_grad():
            for layer in model.layers:
                layer.attn.subln.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(3))
    ids = torch.randint(0, 300, (1, 70), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.set_backend("reference")
        want = model(ids)
        model.set_backend("triton")
        got = model(ids)
        cache = model.new_cache()  # chunked prefill and decode go through the kernel too
        parts = [model(ids[:, :50], cache), model(ids[:, 50:60], cache)] + [model(ids[:, t:t + 1], cache) for t in range(60, 70)]
    return (got - want).abs().max().item(), (torch.cat(parts, 1) - want).abs().max().item()
