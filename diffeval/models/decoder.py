"""The pre-norm decoder every family shares:
    h = embed(ids);  for each layer: h += Attn(RMSNorm(h)); h += SwiGLU(RMSNorm(h));  logits = head(RMSNorm(h))
Attention is the family's module (attention.py, diff.py, diff2.py, gated.py, sinks.py); everything
else is here."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from diffeval.kernels import resolve_backend
from diffeval.models.attention import Attention
from diffeval.models.cache import KVCache
from diffeval.models.config import ModelConfig
from diffeval.models.diff import DiffAttention
from diffeval.models.diff2 import Diff2Attention
from diffeval.models.gated import GatedAttention
from diffeval.models.inspect import ActivationStats, Capture, ForwardContext, LayerStats, LogitHook
from diffeval.models.layers import RMSNorm, Rotary, SwiGLU
from diffeval.models.sinks import SinkAttention

ATTENTION: dict[str, type[nn.Module]] = {
    "transformer": Attention,
    "sha": Attention,
    "diff": DiffAttention,
    "diff2": Diff2Attention,
    "gated": GatedAttention,
    "sinks": SinkAttention,
}

DEFAULT_CHUNK = 4096  # tokens per chunk for the position-wise parts (MLP, head) at inference

Which = Union[str, torch.Tensor]  # "all" | "last" | "none" | positions (P,) LongTensor


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = ATTENTION[cfg.family](cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff, cfg.mlp_bias)

    def mlp_residual(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.mlp_norm(h))


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, chunk: int) -> torch.Tensor:
    """Apply a position-wise fn over (B, T, C) in chunks of T, to bound intermediate memory."""
    if h.shape[1] <= chunk:
        return fn(h)
    return torch.cat([fn(h[:, s : s + chunk]) for s in range(0, h.shape[1], chunk)], dim=1)


class Decoder(nn.Module):
    """Calling the model on (B, T) token ids returns (B, T, vocab) logits. Keyword options:
    `cache` (continue after its prefix and extend it), `logits` ("all", "last", "none", or a
    LongTensor of positions), `capture`, `stats`, `layer_stats`, `logit_hook` (see models/inspect.py)."""

    def __init__(self, cfg: ModelConfig, backend: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.rope, cfg.d_head)
        self.backend = resolve_backend(backend)
        self.chunk_size = DEFAULT_CHUNK

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Fresh weights from a seeded generator: N(0, init_std) matrices and embeddings, zero
        biases, unit norms, DIFF lambda vectors N(0, lambda_std) (diff2's lambda_proj is a matrix)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name or "subln" in name:
                p.fill_(1.0)
            else:
                std = self.cfg.lambda_std if ".lambda_" in name and p.dim() == 1 else self.cfg.init_std
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)

    def set_backend(self, name: str, device: torch.device | str = "cpu") -> None:
        self.backend = resolve_backend(name, device)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (.., d_model) -> logits (.., vocab)."""
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def hidden(
        self,
        ids: torch.Tensor,
        cache: Optional[KVCache] = None,
        *,
        capture: Optional[Capture] = None,
        stats: Optional[ActivationStats] = None,
        logit_hook: Optional[LogitHook] = None,
        layer_stats: Optional[LayerStats] = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, d_model) final-normed hidden states; extends `cache`."""
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, time), got shape {tuple(ids.shape)}")
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + T, device=ids.device)
        h = self.embed(ids)  # (B, T, C)
        cos, sin = self.rotary.cos_sin(positions, h.dtype)  # (T, D)
        ctx = ForwardContext(self.backend, capture, stats, logit_hook, self.cfg.n_layers, layer_stats, start)
        chunk = self.chunk_size if not torch.is_grad_enabled() else max(T, 1)
        for i, block in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            h = h + block.attn(block.attn_norm(h), cos, sin, layer_cache, ctx)
            h = h + _chunked(block.mlp_residual, h, chunk)
            if stats is not None:
                stats.update("hidden", h)
            ctx.residual(i, h)
        return _chunked(self.norm, h, chunk)

    def forward(
        self,
        ids: torch.Tensor,
        cache: Optional[KVCache] = None,
        *,
        logits: Which = "all",
        capture: Optional[Capture] = None,
        stats: Optional[ActivationStats] = None,
        logit_hook: Optional[LogitHook] = None,
        layer_stats: Optional[LayerStats] = None,
    ) -> Optional[torch.Tensor]:
        """(B, T) ids -> logits (B, T, V), (B, 1, V) for "last", (B, P, V) for positions, or None."""
        h = self.hidden(ids, cache, capture=capture, stats=stats, logit_hook=logit_hook, layer_stats=layer_stats)
        if isinstance(logits, torch.Tensor):
            return self.project(h[:, logits])
        if logits == "all":
            return self.project(h)
        if logits == "last":
            return self.project(h[:, -1:])
        if logits == "none":
            return None
        raise ValueError(f"logits must be 'all', 'last', 'none' or a position tensor, not {logits!r}")

    def token_nll(
        self,
        ids: torch.Tensor,
        cache: Optional[KVCache] = None,
        chunk: int = 1024,
        *,
        stats: Optional[ActivationStats] = None,
        logit_hook: Optional[LogitHook] = None,
    ) -> torch.Tensor:
        """Negative log-likelihood of ids[:, 1:] given the prefix: (B, T-1) float32, computed
        over position chunks so that (T x vocab) logits never exist at once."""
        h = self.hidden(ids, cache, stats=stats, logit_hook=logit_hook)  # (B, T, C)
        targets = ids[:, 1:]
        out = []
        for s in range(0, targets.shape[1], chunk):
            tg = targets[:, s : s + chunk]  # (B, c); the last position has no target
            lg = self.project(h[:, s : s + tg.shape[1]]).float()  # (B, c, V)
            out.append(row_nll(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1)).view(tg.shape))  # (B, c)
        return torch.cat(out, dim=1) if out else h.new_zeros(ids.shape[0], 0, dtype=torch.float32)


def row_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per row: logits (N, V) float32, targets (N,) -> (N,)
    float32. Each row's max is taken out and its exponentials summed in float64, so that the
    result is float64's rounded to float32 (within 1e-6 nats per token for |NLL| < 16, at any
    vocabulary size); cross_entropy over the (B, V, T) layout drifted by ~1e-5 at 128K."""
    top = logits.max(dim=-1, keepdim=True).values  # (N, 1)
    total = (logits - top).exp().sum(dim=-1, dtype=torch.float64)  # (N,)
    picked = logits.gather(-1, targets[:, None])[:, 0] - top[:, 0]  # (N,)
    return (total.log() - picked.double()).float()
