"""The fused Triton differential-attention kernel against the reference path, run in Triton's
interpreter on the CPU, and compiled ahead of time for sm_80 / sm_90.

Triton reads TRITON_INTERPRET when triton.language is imported, and diffeval when the triton
backend is chosen, so the interpreted checks (tests/kernels/triton_cases.py) run in a worker
process started with the variable set: this process's environment and its Triton, which
later tests use on a real GPU, stay as they were."""

import importlib.util
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
OWN_SETTING = os.environ.get("TRITON_INTERPRET")  # a user's own, if any


@pytest.fixture(scope="module")
def interpreted():
    """run(name, *args): triton_cases.name(*args) in the worker whose Triton interprets kernels."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        pool.submit(os.getpid).result()  # the worker starts now, with the variable set
    with pool:
        yield lambda name, *args: pool.submit(_case, name, *args).result()


def _case(name: str, *args):
    import triton_cases

    return getattr(triton_cases, name)(*args)


@pytest.mark.parametrize("T,q_len,n_kv", [(1, 1, 4), (7, 7, 2), (64, 64, 4), (300, 300, 1), (200, 1, 2), (150, 40, 4)])
def test_kernel_matches_reference_fp32(interpreted, T, q_len, n_kv):
    assert interpreted("fp32_error", T, q_len, n_kv) <= 1e-5


def test_kernel_fp16_and_a_head_size_that_is_not_a_power_of_two(interpreted):
    dtype, error = interpreted("fp16_odd_head_size")
    assert dtype == torch.float16
    assert error <= 2e-3


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_norm_matches_reference(interpreted, weighted):
    error, without_norm = interpreted("fused_norm_errors", weighted)
    assert error <= 1e-5
    assert without_norm > 1e-2  # the norm really is applied


@pytest.mark.parametrize("weighted", [False, True])
def test_model_on_the_triton_backend_matches_reference(interpreted, weighted):
    full, chunked = interpreted("model_errors", weighted)
    assert full <= 1e-4
    assert chunked <= 1e-4


def test_only_the_worker_interprets(interpreted):
    assert interpreted("interpreting") is True
    assert os.environ.get("TRITON_INTERPRET") == OWN_SETTING  # this process's environment as it was


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
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a user's own setting
    proc = subprocess.run([sys.executable, "-c", AOT, str(arch), dtype], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 10000
