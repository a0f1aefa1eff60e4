"""Differential attention V1 (Ye et al. 2024).

For differential head j with head size d:
    A1 = softmax(Q1 K1^T / sqrt(d)),  A2 = softmax(Q2 K2^T / sqrt(d))      (causal)
    head_j = (1 - lambda_init) * RMSNorm_2d((A1 - lambda * A2) V_j)          V_j of width 2d
    lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init   (float32)
    lambda_init = 0.8 - 0.6 exp(-0.3 * layer_index)                            (0-based)

Weights follow the Hugging Face DiffLlama layout: q_proj has 2H heads of width d, maps 1 in
heads [0, H) and maps 2 in [H, 2H); k_proj / v_proj have Hkv heads of width d (GQA group size
r = 2H / Hkv), and differential head j reads value [v_{j//r} ; v_{(j+H)//r}]."""

from __future__ import annotations

import torch
from torch import nn

from diffeval.kernels.common import DiffNorm, expand_kv
from diffeval.kernels.reference import ReferenceBackend, softmax_rows
from diffeval.models.cache import LayerCache
from diffeval.models.config import ModelConfig
from diffeval.models.inspect import ForwardContext
from diffeval.models.layers import RMSNorm, add_qk_norm, project_qkv

REFERENCE = ReferenceBackend()


class DiffAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        d, H = cfg.d_head, cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, 2 * H * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(2 * H * d, cfg.d_model, bias=cfg.o_bias)
        add_qk_norm(self, cfg)
        self.lambda_q1 = nn.Parameter(torch.zeros(d))
        self.lambda_k1 = nn.Parameter(torch.zeros(d))
        self.lambda_q2 = nn.Parameter(torch.zeros(d))
        self.lambda_k2 = nn.Parameter(torch.zeros(d))
        eps = cfg.norm_eps if cfg.diff_norm_eps is None else cfg.diff_norm_eps
        self.subln = RMSNorm(2 * d, eps, weight=cfg.diff_norm_weight)
        self.lambda_init = cfg.lambda_init(layer_idx)

    def lambda_full(self) -> torch.Tensor:
        """The layer's lambda as a 0-d tensor, computed in float32 (float64 for float64 weights)."""
        ct = torch.promote_types(self.lambda_q1.dtype, torch.float32)
        l1 = torch.exp(torch.sum(self.lambda_q1.to(ct) * self.lambda_k1.to(ct)))
        l2 = torch.exp(torch.sum(self.lambda_q2.to(ct) * self.lambda_k2.to(ct)))
        return l1 - l2 + self.lambda_init

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
        H, d = self.n_heads, self.d_head
        q, k, v = project_qkv(self, x, cos, sin, cache, 2 * H)  # (B, 2H, T, d), (B, Hkv, Tk, d)
        lam = self.lambda_full()
        scale = d**-0.5
        fn = ctx.logit_fn(self.layer_idx)
        backend = REFERENCE if fn is not None else ctx.backend
        norm = DiffNorm(self.subln.weight, self.subln.eps, 1 - self.lambda_init)
        out = backend.diff_attend(q, k, v, lam, scale=scale, logit_fn=fn, norm=norm)  # (B, H, T, 2d), normed
        sel = ctx.capture_rows(self.layer_idx, k.shape[2] - T, T)
        if sel is not None:
            self._capture(q, k, lam, sel, ctx)
        ctx.head_outputs(self.layer_idx, out, lam=lam)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, 2 * H * d))

    def _capture(self, q, k, lam, sel, ctx: ForwardContext) -> None:
        local, absolute = sel
        H = self.n_heads
        kk = expand_kv(k, 2 * H)  # (B, 2H, Tk, d)
        pos = torch.tensor(absolute, device=q.device)
        hook = ctx.logit_fn(self.layer_idx, with_stats=False)
        scale = self.d_head**-0.5
        a1 = softmax_rows(q[:, :H, local], kk[:, :H], pos, scale, hook, 0)  # (B, H, R, Tk)
        a2 = softmax_rows(q[:, H:, local], kk[:, H:], pos, scale, hook, 1)
        ctx.capture.add(
            self.layer_idx,
            absolute,
            {"map1": a1, "map2": a2, "diff": a1 - lam.to(a1.dtype) * a2, "lambda": lam.detach()},
        )
