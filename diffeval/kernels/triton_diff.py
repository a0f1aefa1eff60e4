"""Fused differential flash attention (Triton), forward: both softmax maps of a differential
head in one pass over the keys, sharing every K/V tile load, online softmax per map, and the
combination (A1 - lambda A2) V in the epilogue. Never materialises a score matrix.

Layout as everywhere in diffeval: q (B, 2H, Tq, d) with maps 1 in heads [0, H) and maps 2 in
[H, 2H); k, v (B, Hkv, Tk, d); differential head j reads kv head j // r for map 1 and
(j + H) // r for map 2 (r = 2H / Hkv), and its value is [v_{j//r} ; v_{(j+H)//r}]. The
queries are the last Tq of the Tk positions (prefill, chunked prefill and decode alike).

Runs on CUDA; on a CPU under TRITON_INTERPRET=1 (fp32 / fp16), which is how it is tested."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffeval.kernels.common import DiffNorm
from diffeval.kernels.sdpa import SdpaBackend


@triton.jit
def _online_step(q, k, va, vb, visible, scale, m, l, acc_a, acc_b, PREC: tl.constexpr):
    """One key tile of one softmax map: online-softmax update of the running max m, sum l and
    the outputs against both value halves (the tiles are shared by the two maps)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    s = tl.where(visible, s, float("-inf"))
    new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp(s - new[:, None])
    alpha = tl.exp(m - new)
    l = l * alpha + tl.sum(p, 1)
    p = p.to(va.dtype)
    acc_a = acc_a * alpha[:, None] + tl.dot(p, va, input_precision=PREC)
    acc_b = acc_b * alpha[:, None] + tl.dot(p, vb, input_precision=PREC)
    return new, l, acc_a, acc_b


@triton.jit
def _combine(acc1a, acc1b, acc2a, acc2b, l1, l2, lam, NW, offs_d, d_ok, D, eps, out_scale,
             NORM: tl.constexpr, HAS_W: tl.constexpr):
    """The epilogue: A1 V - lambda A2 V for both value halves, then (NORM) the per-head
    RMSNorm over the 2d features (padding columns are zero), its weight and the scale."""
    out_a = acc1a / l1[:, None] - lam * (acc2a / l2[:, None])
    out_b = acc1b / l1[:, None] - lam * (acc2b / l2[:, None])
    if NORM:
        ms = (tl.sum(out_a * out_a, 1) + tl.sum(out_b * out_b, 1)) / (2 * D)
        inv = 1.0 / tl.sqrt(ms + eps)
        out_a = out_a * inv[:, None]
        out_b = out_b * inv[:, None]
        if HAS_W:
            out_a = out_a * tl.load(NW + offs_d, mask=d_ok, other=0.0)[None, :]
            out_b = out_b * tl.load(NW + D + offs_d, mask=d_ok, other=0.0)[None, :]
        out_a = out_a * out_scale
        out_b = out_b * out_scale
    return out_a, out_b


@triton.jit
def _diff_attn_fwd(
    Q, K, V, Out, NW, lam, scale, eps, out_scale,
    sqb, sqh, sqt, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sob, soh, sot, sod,
    H, Tq, Tk, D, R,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORM: tl.constexpr, HAS_W: tl.constexpr, PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    j = bh % H
    kv1 = j // R
    kv2 = (j + H) // R
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    q_pos = Tk - Tq + offs_m  # absolute positions of the queries
    m_ok = offs_m < Tq
    d_ok = offs_d < D
    q_ptr = Q + b * sqb + offs_m[:, None] * sqt + offs_d[None, :] * sqd
    q_mask = m_ok[:, None] & d_ok[None, :]
    q1 = tl.load(q_ptr + j * sqh, mask=q_mask, other=0.0)  # (BM, BD)
    q2 = tl.load(q_ptr + (j + H) * sqh, mask=q_mask, other=0.0)

    m1 = tl.full([BLOCK_M], float("-inf"), tl.float32)
    m2 = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l1 = tl.zeros([BLOCK_M], tl.float32)
    l2 = tl.zeros([BLOCK_M], tl.float32)
    acc1a = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # map 1 x value half a (kv1)
    acc1b = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # map 1 x value half b (kv2)
    acc2a = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc2b = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    hi = tl.minimum(Tk, Tk - Tq + (pid_m + 1) * BLOCK_M)  # causal: no key past the last query
    for start in range(0, hi, BLOCK_N):
        offs_n = start + offs_n0
        n_ok = offs_n < Tk
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k_off = b * skb + offs_n[:, None] * skt + offs_d[None, :] * skd
        v_off = b * svb + offs_n[:, None] * svt + offs_d[None, :] * svd
        k1 = tl.load(K + k_off + kv1 * skh, mask=kv_mask, other=0.0)  # (BN, BD)
        k2 = tl.load(K + k_off + kv2 * skh, mask=kv_mask, other=0.0)
        va = tl.load(V + v_off + kv1 * svh, mask=kv_mask, other=0.0)
        vb = tl.load(V + v_off + kv2 * svh, mask=kv_mask, other=0.0)
        visible = (offs_n[None, :] <= q_pos[:, None]) & n_ok[None, :]  # (BM, BN)

        m1, l1, acc1a, acc1b = _online_step(q1, k1, va, vb, visible, scale, m1, l1, acc1a, acc1b, PREC)
        m2, l2, acc2a, acc2b = _online_step(q2, k2, va, vb, visible, scale, m2, l2, acc2a, acc2b, PREC)

    out_a, out_b = _combine(acc1a, acc1b, acc2a, acc2b, l1, l2, lam, NW, offs_d, d_ok, D, eps, out_scale,
                            NORM, HAS_W)
    o_ptr = Out + b * sob + j * soh + offs_m[:, None] * sot + offs_d[None, :] * sod
    tl.store(o_ptr, out_a.to(Out.dtype.element_ty), mask=q_mask)
    tl.store(o_ptr + D * sod, out_b.to(Out.dtype.element_ty), mask=q_mask)


def launch_config(block_d: int) -> dict:
    """Warps and pipeline stages, from a sweep on an H100 (bf16, 16K keys; block_m 32/64/128 x
    block_n 32/64 x 4/8 warps x 2/3 stages): head size 128 wants 8 warps (a 16K prefill 28.6 ->
    15.6 ms, 256 queries after 16K keys 2.1 -> 0.87 ms with block_m 32); head size 64 is best
    at 4 warps, 3 stages."""
    return {"num_warps": 8 if block_d >= 128 else 4, "num_stages": 3}


def diff_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: float, scale: float,
                   norm: "DiffNorm | None" = None, block_m: int | None = None, block_n: int = 64,
                   **launch) -> torch.Tensor:
    """(A1 - lam A2) V, and with `norm` the per-head RMSNorm and output scale fused in.
    q (B, 2H, Tq, d); k, v (B, Hkv, Tk, d) -> (B, H, Tq, 2d) in q's dtype. float32 products are
    exact ("ieee"), not TF32: a GPU run found TF32 off by 1e-3 from the reference path.
    `launch`: num_warps / num_stages for the kernel launch."""
    B, H2, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    H = H2 // 2
    out = q.new_empty(B, H, Tq, 2 * d)
    block_d = max(16, triton.next_power_of_2(d))
    block_m = block_m or (16 if Tq < 64 else 32 if Tq <= 256 else 64)
    launch = {**launch_config(block_d), **launch}
    grid = (triton.cdiv(Tq, block_m), B * H)
    weight = norm.weight.to(torch.float32).contiguous() if norm is not None and norm.weight is not None else None
    _diff_attn_fwd[grid](
        q, k, v, out, weight if weight is not None else out, float(lam), float(scale),
        float(norm.eps) if norm else 0.0, float(norm.out_scale) if norm else 1.0,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Tq, Tk, d, H2 // Hkv,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        NORM=norm is not None, HAS_W=weight is not None, PREC="ieee" if q.dtype == torch.float32 else "tf32",
        **launch,
    )
    return out


def prefers_sdpa(q_len: int, n_keys: int, d_head: int) -> bool:
    """Where SDPA (both maps as 2H padded heads, FlashAttention on CUDA) beat this kernel on an
    H100 in bf16 (benchmarks/bench_prefix_attention.py, bench_triton.py): long query blocks
    (a 16K prefill: 3.9 vs 6.0 ms at head size 64, 7.2 vs 15.6 ms at 128) and, at head size 64,
    queries after more than 8K keys (256 after 16K: 0.36 vs 0.67 ms), where this kernel's one
    program per 32 queries leaves most of the GPU idle. The kernel won short contexts (2K
    prefill 0.22 vs 0.28 ms; 256 after 2K 0.16 vs 0.26 ms) and head size 128 after 16K keys
    (256 queries 0.87 vs 1.26 ms; 2K queries 4.4 vs 4.6 ms)."""
    return q_len >= 4096 or (d_head < 128 and n_keys > 8192)


class TritonBackend:
    """Fused differential attention on CUDA. Softmax attention goes to torch SDPA, whose CUDA
    kernels already fuse it, and so do the DIFF shapes where SDPA was measured faster
    (`prefers_sdpa`); `diff_attention` itself always runs the kernel."""

    name = "triton"

    def __init__(self) -> None:
        self._sdpa = SdpaBackend()

    def attend(self, q, k, v, *, scale: float, logit_fn=None, sinks=None, window=None):
        return self._sdpa.attend(q, k, v, scale=scale, logit_fn=logit_fn, sinks=sinks, window=window)

    def diff_attend(self, q, k, v, lam, *, scale: float, logit_fn=None, norm=None):
        assert logit_fn is None, "logit transforms need the reference backend"
        if prefers_sdpa(q.shape[2], k.shape[2], q.shape[3]):
            return self._sdpa.diff_attend(q, k, v, lam, scale=scale, norm=norm)
        return diff_attention(q, k, v, float(lam), scale, norm)
