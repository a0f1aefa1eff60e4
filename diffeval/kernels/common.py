"""Head bookkeeping shared by the attention backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class DiffNorm:
    """DIFF's per-head output transform: RMSNorm over the 2d features (optional weight), then
    multiply by out_scale (1 - lambda_init)."""

    weight: Optional[torch.Tensor]
    eps: float
    out_scale: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., 2d) -> same shape and dtype."""
        return self.out_scale * rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm over the last axis, statistics in at least float32, result in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out * weight if weight is not None else out


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, n_heads, T, D); query head i reads kv head i // (n_heads // Hkv)."""
    n_kv = x.shape[1]
    if n_kv == n_heads:
        return x
    return x.repeat_interleave(n_heads // n_kv, dim=1)


def diff_values(v: torch.Tensor, n_diff_heads: int) -> torch.Tensor:
    """Values of the differential heads, (B, Hkv, T, d) -> (B, H, T, 2d).

    With 2H query projections and GQA group size r = 2H / Hkv, differential head j reads
    value [v_{j // r} ; v_{(j + H) // r}] (the Hugging Face DiffLlama layout)."""
    n_kv = v.shape[1]
    r = 2 * n_diff_heads // n_kv
    idx = torch.arange(n_diff_heads, device=v.device)
    return torch.cat((v[:, idx // r], v[:, (idx + n_diff_heads) // r]), dim=-1)


def causal_valid(q_pos: torch.Tensor, n_keys: int, window: Optional[int] = None, first_key: int = 0) -> torch.Tensor:
    """(R,) absolute query positions -> (R, n_keys) bool, True where the key (at absolute
    positions first_key, first_key + 1, ...) is visible: not in the future and, with a sliding
    `window` W, one of the W most recent keys (the query's own included)."""
    keys = torch.arange(first_key, first_key + n_keys, device=q_pos.device)
    valid = keys[None, :] <= q_pos[:, None]
    if window is not None:
        valid &= keys[None, :] > q_pos[:, None] - window
    return valid


def sink_factor(lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention sinks from an ordinary softmax's log-sum-exp: a sink logit s_h in the
    denominator scales head h's output by Z / (Z + e^s) = sigmoid(lse - s). lse (B, H, T)
    float32 -> (B, H, T, 1) float32."""
    return torch.sigmoid(lse.float() - sinks.float()[None, :, None])[..., None]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and logits run in at least float32."""
    return torch.promote_types(dtype, torch.float32)
