"""The fused Triton differential-attention kernel against the reference path, run in Triton's
interpreter on the CPU, and compiled ahead of time for sm_80 / sm_90."""

import os
import subprocess
import sys

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run in its interpreter
triton = pytest.importorskip("triton")

from diffeval.kernels import resolve_backend  # noqa: E402
from diffeval.kernels.triton_diff import diff_attention  # noqa: E402
from helpers import tiny_model  # noqa: E402

REF = resolve_backend("reference")


@pytest.mark.parametrize("T,q_len,n_kv", [(1, 1, 4), (7, 7, 2), (64, 64, 4), (300, 300, 1), (200, 1, 2), (150, 40, 4)])
def test_kernel_matches_reference_fp32(T, q_len, n_kv):
    g = torch.Generator().manual_seed(T + q_len)
    q = torch.randn(2, 4, q_len, 32, generator=g) * 2
    k = torch.randn(2, n_kv, T, 32, generator=g) * 2
    v = torch.randn(2, n_kv, T, 32, generator=g)
    want = REF.diff_attend(q, k, v, torch.tensor(0.42), scale=32**-0.5)
    got = diff_attention(q, k, v, 0.42, 32**-0.5, block_n=128)
    assert (got - want).abs().max().item() <= 1e-5


def test_kernel_fp16_and_a_head_size_that_is_not_a_power_of_two():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 90, 24, generator=g).half()
    k = torch.randn(1, 2, 90, 24, generator=g).half()
    v = torch.randn(1, 2, 90, 24, generator=g).half()
    want = REF.diff_attend(q.float(), k.float(), v.float(), torch.tensor(0.3), scale=24**-0.5)
    got = diff_attention(q, k, v, 0.3, 24**-0.5, block_n=128)
    assert got.dtype == torch.float16
    assert (got.float() - want).abs().max().item() <= 2e-3


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_norm_matches_reference(weighted):
    from diffeval.kernels.common import DiffNorm

    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 50, 24, generator=g)
    k = torch.randn(1, 2, 50, 24, generator=g)
    v = torch.randn(1, 2, 50, 24, generator=g)
    norm = DiffNorm(torch.rand(48, generator=g) + 0.5 if weighted else None, 1e-5, 0.8)
    want = REF.diff_attend(q, k, v, torch.tensor(0.6), scale=24**-0.5, norm=norm)
    got = diff_attention(q, k, v, 0.6, 24**-0.5, norm=norm, block_n=128)
    assert (got - want).abs().max().item() <= 1e-5
    plain = diff_attention(q, k, v, 0.6, 24**-0.5, block_n=128)
    assert (plain - want).abs().max().item() > 1e-2  # the norm really is applied


@pytest.mark.parametrize("weighted", [False, True])
def test_model_on_the_triton_backend_matches_reference(weighted):
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
    assert (got - want).abs().max().item() <= 1e-4
    assert (torch.cat(parts, 1) - want).abs().max().item() <= 1e-4


AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from diffeval.kernels.triton_diff import _diff_attn_fwd
dtype, prec = sys.argv[2], {"fp16": "tf32", "fp32": "ieee"}[sys.argv[2]]
sig = {n: (f"*{dtype}" if n in ("Q", "K", "V", "Out") else "*fp32" if n == "NW"
           else "fp32" if n in ("lam", "scale", "eps", "out_scale")
           else "constexpr" if n.startswith("BLOCK") or n in ("NORM", "HAS_W", "PREC") else "i32")
       for n in _diff_attn_fwd.arg_names}
src = ASTSource(fn=_diff_attn_fwd, signature=sig, constexprs={"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 64, "NORM": True,
                                                              "HAS_W": True, "PREC": prec})
print(len(triton.compile(src, target=GPUTarget("cuda", int(sys.argv[1]), 32)).asm["cubin"]))
"""


@pytest.mark.integration
@pytest.mark.parametrize("arch,dtype", [(80, "fp16"), (90, "fp16"), (90, "fp32")])
def test_kernel_compiles_for_real_gpus(arch, dtype):
    """Ahead-of-time compilation to a cubin (no GPU needed), outside the interpreter; float32
    with exact ("ieee") products."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", AOT, str(arch), dtype], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 10000
