"""Reference attention: explicit softmax maps, computed in query blocks so that memory stays
O(block x n). Works in float64. The source of truth every other backend is tested against,
and the path used whenever attention logits must be seen or changed (capture, statistics,
the quantization hook)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from diffeval.kernels.common import DiffNorm, causal_valid, compute_dtype, diff_values, expand_kv

# fn(logits (B, H, R, Tk), valid (R, Tk) bool, map_index) -> logits
LogitFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

BLOCK_ELEMENTS = 1 << 24  # logits elements per query block (64 MB in float32)


def softmax_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    q_pos: torch.Tensor,
    scale: float,
    logit_fn: Optional[LogitFn] = None,
    map_index: int = 0,
    sinks: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
) -> torch.Tensor:
    """Exact causal attention rows. q (B, H, R, D) at absolute positions q_pos (R,),
    k (B, H, Tk, D) -> probabilities (B, H, R, Tk) in at least float32; masked keys are 0.
    `sinks` (H,): a logit per head that joins every row's denominator (the rows then sum to
    less than 1); `window`: a sliding window of that many most recent keys."""
    ct = compute_dtype(q.dtype)
    logits = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale  # (B, H, R, Tk)
    valid = causal_valid(q_pos, k.shape[2], window)
    if logit_fn is not None:
        logits = logit_fn(logits, valid, map_index)
    logits = logits.masked_fill(~valid, float("-inf"))
    if sinks is None:
        return torch.softmax(logits, dim=-1)
    sink = sinks.to(ct).view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
    return torch.softmax(torch.cat((logits, sink), dim=-1), dim=-1)[..., :-1]


def _blocks(n_queries: int, batch_heads: int, n_keys: int):
    size = max(1, BLOCK_ELEMENTS // max(1, batch_heads * n_keys))
    for start in range(0, n_queries, size):
        yield start, min(n_queries, start + size)


class ReferenceBackend:
    name = "reference"

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float,
        logit_fn: Optional[LogitFn] = None,
        sinks: Optional[torch.Tensor] = None,
        window: Optional[int] = None,
    ) -> torch.Tensor:
        """q (B, H, Tq, D); k, v (B, Hkv, Tk, .); the queries are the last Tq of the Tk
        positions. Returns (B, H, Tq, Dv) in q's dtype. `sinks` (H,) and `window` as in
        softmax_rows."""
        B, H, Tq, _ = q.shape
        Tk = k.shape[2]
        k, v = expand_kv(k, H), expand_kv(v, H)
        ct = compute_dtype(q.dtype)
        out = q.new_empty(B, H, Tq, v.shape[-1])
        for s, e in _blocks(Tq, B * H, Tk):
            q_pos = torch.arange(Tk - Tq + s, Tk - Tq + e, device=q.device)
            p = softmax_rows(q[:, :, s:e], k, q_pos, scale, logit_fn, sinks=sinks, window=window)
            out[:, :, s:e] = torch.matmul(p, v.to(ct)).to(q.dtype)
        return out

    def diff_attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lam: torch.Tensor,
        *,
        scale: float,
        logit_fn: Optional[LogitFn] = None,
        norm: Optional[DiffNorm] = None,
    ) -> torch.Tensor:
        """Differential attention (A1 - lam * A2) V, then `norm` when given.
        q (B, 2H, Tq, d) with maps 1 in heads [0, H) and maps 2 in [H, 2H); k, v (B, Hkv, Tk, d);
        lam a scalar tensor. Returns (B, H, Tq, 2d) in q's dtype."""
        B, H2, Tq, _ = q.shape
        H = H2 // 2
        Tk = k.shape[2]
        kk = expand_kv(k, H2)  # (B, 2H, Tk, d)
        ct = compute_dtype(q.dtype)
        vv = diff_values(v, H).to(ct)  # (B, H, Tk, 2d)
        lam = lam.to(ct)
        out = q.new_empty(B, H, Tq, vv.shape[-1])
        for s, e in _blocks(Tq, B * H2, Tk):
            q_pos = torch.arange(Tk - Tq + s, Tk - Tq + e, device=q.device)
            a1 = softmax_rows(q[:, :H, s:e], kk[:, :H], q_pos, scale, logit_fn, 0)
            a2 = softmax_rows(q[:, H:, s:e], kk[:, H:], q_pos, scale, logit_fn, 1)
            out[:, :, s:e] = torch.matmul(a1 - lam * a2, vv).to(q.dtype)
        return norm.apply(out) if norm is not None else out
