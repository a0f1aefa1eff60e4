"""Softmax attention, MHA and GQA: the `transformer` family, `sha` (the same code with one
head per layer and a head size independent of d_model), and the base of `gated` (gated.py)
and `sinks` (sinks.py), which change only what their hooks below say. Every softmax layer can
have per-head q/k norms (`qk_norm`) and a sliding window (`sliding_window`, `layer_types`)."""

from __future__ import annotations

import torch
from torch import nn

from diffeval.kernels.common import expand_kv
from diffeval.kernels.reference import ReferenceBackend, softmax_rows
from diffeval.models.cache import LayerCache
from diffeval.models.config import ModelConfig
from diffeval.models.inspect import ForwardContext
from diffeval.models.layers import add_qk_norm, project_qkv

REFERENCE = ReferenceBackend()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.window = cfg.window(layer_idx)
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=cfg.o_bias)
        add_qk_norm(self, cfg)

    def sink_logits(self) -> torch.Tensor | None:
        """(H,) logits that join every row's softmax denominator (sinks.py); None here."""
        return None

    def gate_output(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The heads' output before the output projection (gated.py multiplies it by its gate)
        and the gate (B, H, T, d or 1; None here). out (B, H, T, D); x the layer's input."""
        return out, None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerCache | None,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model)."""
        B, T, _ = x.shape
        q, k, v = project_qkv(self, x, cos, sin, cache, self.n_heads)  # (B, H, T, D), (B, Hkv, Tk, D)
        scale = self.d_head**-0.5
        sinks = self.sink_logits()
        fn = ctx.logit_fn(self.layer_idx)
        backend = REFERENCE if fn is not None else ctx.backend
        out = backend.attend(q, k, v, scale=scale, logit_fn=fn, sinks=sinks, window=self.window)  # (B, H, T, D)
        out, gate = self.gate_output(x, out)
        q_start = k.shape[2] - T
        sel = ctx.capture_rows(self.layer_idx, q_start, T)
        if sel is not None:
            local, absolute = sel
            rows = softmax_rows(
                q[:, :, local], expand_kv(k, self.n_heads), torch.tensor(absolute, device=q.device),
                scale, ctx.logit_fn(self.layer_idx, with_stats=False), sinks=sinks, window=self.window,
            )  # (B, H, R, Tk)
            extra = {} if gate is None else {"gate": gate[:, :, local].detach().float().mean(-1)}  # (B, H, R)
            ctx.capture.add(self.layer_idx, absolute, {"attn": rows, **extra})
        ctx.head_outputs(self.layer_idx, out, gate=gate)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))
