"""Layers shared by every family: RMSNorm, rotary embeddings, SwiGLU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffeval.kernels.common import rms_norm
from diffeval.models.config import RopeConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (at least), cast back to the input dtype."""

    def __init__(self, dim: int, eps: float, weight: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inv_freq(rope: RopeConfig, d_head: int) -> torch.Tensor:
    """Inverse frequencies (rot/2,) in float64, rot = rope.rotary_dim(d_head) (d_head unless
    partial rotary), with the configured scaling applied."""
    rot = rope.rotary_dim(d_head)
    inv = 1.0 / (rope.theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    if rope.type == "linear":
        inv = inv / rope.factor
    elif rope.type == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band
        # between interpolates smoothly (wavelength limits from the original context length).
        old = rope.original_max_position_embeddings
        wavelen = 2 * math.pi / inv
        low_wavelen = old / rope.low_freq_factor
        high_wavelen = old / rope.high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = torch.where(medium, blended, scaled)
    elif rope.type == "yarn":
        inv = _yarn(rope, inv, rot)
    return inv


def _yarn(rope: RopeConfig, inv: torch.Tensor, rot: int) -> torch.Tensor:
    """YaRN: pair m keeps its frequency when it turns more than beta_fast times over the
    original context, is divided by `factor` when fewer than beta_slow, and blends linearly in
    the pair index between (YaRN paper, arXiv 2309.00071; bounds as transformers computes them)."""
    old = rope.original_max_position_embeddings

    def pair_dim(turns: float) -> float:  # the (fractional) rotary dim whose pair turns `turns` times in `old`
        return rot * math.log(old / (turns * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = pair_dim(rope.beta_fast), pair_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot - 1)
    if low == high:
        high += 0.001  # a step, not a division by zero
    ramp = ((torch.arange(rot // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # 0: kept, 1: scaled
    return inv * (1 - ramp) + (inv / rope.factor) * ramp


class Rotary(nn.Module):
    """Rotary embedding, `rotate_half` convention (pairs i and i + rot/2 within the first rot
    dims of each head; rot = d_head unless partial rotary). Holds no state dict."""

    def __init__(self, rope: RopeConfig, d_head: int) -> None:
        super().__init__()
        self.rope = rope
        self.d_head = d_head
        self.scale = rope.attention_scaling()
        self._inv: dict[tuple, torch.Tensor] = {}

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) -> cos, sin (T, rot) in `dtype`, times the attention scaling of yarn.
        Angles are float32 as in Llama checkpoints' own code, float64 when the model runs in
        float64."""
        dev = positions.device
        ct = torch.float64 if dtype == torch.float64 else torch.float32
        if (dev, ct) not in self._inv:
            self._inv[(dev, ct)] = rope_inv_freq(self.rope, self.d_head).to(dev, ct)
        angles = positions.to(ct)[:, None] * self._inv[(dev, ct)][None, :]  # (T, rot/2)
        emb = torch.cat((angles, angles), dim=-1)  # (T, rot)
        cos, sin = emb.cos(), emb.sin()
        if self.scale != 1.0:
            cos, sin = cos * self.scale, sin * self.scale
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin (T, rot), rot <= D: the first rot dims rotated, the rest kept."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)
    half = rot // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def add_qk_norm(attn: nn.Module, cfg) -> None:
    """Give an attention module the per-head q/k RMSNorms of `qk_norm` configs (Qwen3)."""
    if cfg.qk_norm:
        attn.q_norm = RMSNorm(cfg.d_head, cfg.norm_eps)
        attn.k_norm = RMSNorm(cfg.d_head, cfg.norm_eps)


def project_qkv(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache,
                n_q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The start of every family's attention: x (B, T, C) through attn.q_proj / k_proj / v_proj
    -> q (B, n_q, T, D) and k, v (B, Hkv, Tk, D), per-head q/k norms (when the module has
    them) and RoPE applied; a layer cache is extended and its keys/values so far returned
    (Tk = cached + T)."""
    B, T, _ = x.shape
    d, n_kv = attn.d_head, attn.n_kv_heads
    q = attn.q_proj(x).view(B, T, n_q, d)
    k = attn.k_proj(x).view(B, T, n_kv, d)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, n_q, T, D), (B, Hkv, T, D)
    v = attn.v_proj(x).view(B, T, n_kv, d).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if cache is not None:
        k, v = cache.append(k, v)  # (B, Hkv, Tk, D)
    return q, k, v


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
