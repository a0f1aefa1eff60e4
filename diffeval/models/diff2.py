"""Differential attention V2 (Microsoft, 2026), the `diff2` family.

With H output heads of head size d and 2H query heads of the same size d:
    A_h = softmax(Q_h K_g(h)^T / sqrt(d))            (causal; one ordinary attention call)
    lambda_i(t) = sigmoid(W_lambda x_t + b)_i         per token and head, float32
    out_i = A_2i V - lambda_i * A_2i+1 V              value width d
    out = concat(out_1..out_H) Wo                     o_proj takes H * d
where x is the attention input (after the block's RMSNorm) and query heads 2i and 2i+1 read
the same key/value head (one GQA group; g(h) = h // (2H / Hkv), so the group size must be
even). No per-head norm, no (1 - lambda_init), no lambda vectors. Because both maps are heads
of one standard call, every backend runs it with its plain `attend` (fused SDPA on the CPU,
flash / memory-efficient kernels on CUDA), KV cache and prefix continuation included.

`lambda_proj` has no bias by default (`lambda_bias: true` in the config adds one): it is one
more linear map of the normed input, like q/k/v, which carry no bias in Llama-style models."""

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


def _per_map(fn):
    """A logit function for one call over 2H interleaved heads, applied as two calls: the even
    heads as map 0 and the odd heads as map 1 (what statistics and the quantization hook see
    for DIFF V1's two calls)."""

    def split(logits: torch.Tensor, valid: torch.Tensor, _map_index: int) -> torch.Tensor:
        out = torch.empty_like(logits)  # (B, 2H, R, Tk)
        out[:, 0::2] = fn(logits[:, 0::2], valid, 0)
        out[:, 1::2] = fn(logits[:, 1::2], valid, 1)
        return out

    return split


class Diff2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        d, H = cfg.d_head, cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, 2 * H * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * d, cfg.d_model, bias=cfg.o_bias)
        self.lambda_proj = nn.Linear(cfg.d_model, H, bias=cfg.lambda_bias)
        add_qk_norm(self, cfg)

    def lambdas(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model) -> per-token, per-head lambda (B, H, T) in float32 (float64 for
        float64 weights)."""
        ct = torch.promote_types(x.dtype, torch.float32)
        w = self.lambda_proj.weight.to(ct)
        b = self.lambda_proj.bias.to(ct) if self.lambda_proj.bias is not None else None
        return torch.sigmoid(nn.functional.linear(x.to(ct), w, b)).transpose(1, 2)  # (B, H, T)

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
        lam = self.lambdas(x)  # (B, H, T)
        fn = ctx.logit_fn(self.layer_idx)
        backend = REFERENCE if fn is not None else ctx.backend
        both = backend.attend(q, k, v, scale=d**-0.5, logit_fn=_per_map(fn) if fn is not None else None)  # (B, 2H, T, d)
        out = both[:, 0::2] - lam[..., None].to(both.dtype) * both[:, 1::2]  # (B, H, T, d)
        sel = ctx.capture_rows(self.layer_idx, k.shape[2] - T, T)
        if sel is not None:
            self._capture(q, k, lam, sel, ctx)
        ctx.head_outputs(self.layer_idx, out, lam=lam)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * d))

    def _capture(self, q, k, lam, sel, ctx: ForwardContext) -> None:
        """Rows of both maps, the differential row and each captured query row's lambda."""
        local, absolute = sel
        kk = expand_kv(k, 2 * self.n_heads)  # (B, 2H, Tk, d)
        pos = torch.tensor(absolute, device=q.device)
        hook = ctx.logit_fn(self.layer_idx, with_stats=False)
        scale = self.d_head**-0.5
        a1 = softmax_rows(q[:, 0::2, local], kk[:, 0::2], pos, scale, hook, 0)  # (B, H, R, Tk)
        a2 = softmax_rows(q[:, 1::2, local], kk[:, 1::2], pos, scale, hook, 1)
        lam_rows = lam[:, :, local]  # (B, H, R)
        ctx.capture.add(
            self.layer_idx,
            absolute,
            {"map1": a1, "map2": a2, "diff": a1 - lam_rows[..., None].to(a1.dtype) * a2, "lambda": lam_rows.detach()},
        )
