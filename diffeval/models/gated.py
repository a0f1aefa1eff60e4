"""Output-gated softmax attention, the `gated` family (Qiu et al. 2025; the full-attention
layers of Qwen3-Next and Qwen3.5):
    out_h = softmax(Q_h K^T / sqrt(d)) V  * sigmoid(x W_g)_h       before the output projection
where x is the attention input (after the block's RMSNorm). `gate: element` gives every output
feature its own gate (g_proj: d_model -> H * d); `gate: head` one gate per head (d_model -> H).
The gate is computed in the model's dtype, as in those checkpoints. Everything else, backends,
cache, sliding window and q/k norms included, is softmax attention (attention.py)."""

from __future__ import annotations

import torch
from torch import nn

from diffeval.models.attention import Attention
from diffeval.models.config import ModelConfig


class GatedAttention(Attention):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.gate_width = cfg.d_head if cfg.gate == "element" else 1
        self.g_proj = nn.Linear(cfg.d_model, cfg.n_heads * self.gate_width, bias=cfg.qkv_bias)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model) -> sigmoid gates (B, H, T, d) for element gates, (B, H, T, 1) for head gates."""
        B, T, _ = x.shape
        return torch.sigmoid(self.g_proj(x)).view(B, T, self.n_heads, self.gate_width).transpose(1, 2)

    def gate_output(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gates(x)
        return out * g.to(out.dtype), g
