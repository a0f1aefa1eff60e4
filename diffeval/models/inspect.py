"""What a forward pass can expose besides logits: exact attention rows for chosen queries
(`Capture`), streaming activation statistics (`ActivationStats`), and a hook that transforms
attention logits before the softmax (`LogitHook`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

# hook(logits (B, H, R, Tk), valid (R, Tk) bool, layer, map_index) -> logits; map 1 is DIFF's second map
LogitHook = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


@dataclass
class Capture:
    """Request exact attention rows for absolute query `positions` (and optionally only some
    `layers`). After the forward pass, `rows[layer][name]` holds (B, H, R, n_keys) float32
    tensors on the CPU, R ordered as `positions`, keys past the query zero. Names: `attn` for
    softmax attention; for DIFF `map1`, `map2`, `diff` (= map1 - lambda * map2) and `lambda`
    (a 0-d tensor for V1; (B, H, R), each captured row's own lambda, for V2). Memory is
    O(R x n) per layer and head."""

    positions: Sequence[int]
    layers: Optional[Sequence[int]] = None
    _parts: dict = field(default_factory=dict, repr=False)
    _rows: dict = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> dict:
        """layer -> {name: tensor}; assembled once per layer after the forward calls."""
        for layer in self._parts:
            if layer not in self._rows:
                self._rows[layer] = self._assemble(layer)
        return self._rows

    def wants(self, layer: int, n_layers: int) -> bool:
        if self.layers is None:
            return True
        return layer in {i % n_layers for i in self.layers}

    def select(self, q_start: int, n_queries: int) -> tuple[list[int], list[int]]:
        """Requested positions inside queries [q_start, q_start + n_queries): (local, absolute)."""
        absolute = [p for p in self.positions if q_start <= p < q_start + n_queries]
        return [p - q_start for p in absolute], absolute

    def add(self, layer: int, absolute: list[int], tensors: dict[str, torch.Tensor]) -> None:
        """Store rows computed for `absolute` positions in one forward call."""
        self._parts.setdefault(layer, []).append((absolute, tensors))
        self._rows.pop(layer, None)  # re-assembled on the next read

    def _assemble(self, layer: int) -> dict[str, torch.Tensor]:
        parts = self._parts[layer]
        order = {p: i for i, p in enumerate(self.positions)}
        n_keys = max(t.shape[-1] for _, ts in parts for t in ts.values() if t.dim() == 4)
        out: dict[str, torch.Tensor] = {}
        for name, first in parts[0][1].items():
            if first.dim() == 4:  # rows (B, H, R, Tk), zero-padded to n_keys
                full = torch.zeros(first.shape[0], first.shape[1], len(self.positions), n_keys)
            elif first.dim() == 3:  # one value per row (B, H, R)
                full = torch.zeros(first.shape[0], first.shape[1], len(self.positions))
            else:  # one value per layer: the last call's
                out[name] = parts[-1][1][name].detach().float().cpu()
                continue
            for absolute, ts in parts:
                t = ts[name].detach().float().cpu()
                for j, p in enumerate(absolute):
                    if t.dim() == 4:
                        full[:, :, order[p], : t.shape[-1]] = t[:, :, j]
                    else:
                        full[:, :, order[p]] = t[:, :, j]
            out[name] = full
        return out


class ActivationStats:
    """Streaming top-k and median of |x| per named activation; memory independent of the
    number of values seen. The median is exact while at most `exact_limit` values have been
    seen; beyond that it comes from a log-spaced histogram (relative error below 0.3%)."""

    LOG_LO, LOG_HI, N_BINS = -12.0, 12.0, 1 << 14

    def __init__(self, top_k: int = 100, exact_limit: int = 1 << 21) -> None:
        self.top_k = top_k
        self.exact_limit = exact_limit
        self._top: dict[str, torch.Tensor] = {}
        self._hist: dict[str, torch.Tensor] = {}
        self._zeros: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._exact: dict[str, Optional[list[torch.Tensor]]] = {}

    def update(self, name: str, x: torch.Tensor) -> None:
        a = x.detach().abs().flatten().to(torch.float64).cpu()
        if a.numel() == 0:
            return
        top = torch.topk(a, min(self.top_k, a.numel())).values
        if name in self._top:
            top = torch.topk(torch.cat((self._top[name], top)), min(self.top_k, self._top[name].numel() + top.numel())).values
        self._top[name] = top
        self._count[name] = self._count.get(name, 0) + a.numel()
        exact = self._exact.get(name, [])
        if exact is not None:
            exact.append(a.float())
            if self._count[name] > self.exact_limit:
                exact = None
        self._exact[name] = exact
        zero = a == 0
        self._zeros[name] = self._zeros.get(name, 0) + int(zero.sum())
        pos = a[~zero]
        idx = ((pos.log10() - self.LOG_LO) / (self.LOG_HI - self.LOG_LO) * self.N_BINS).long()
        hist = torch.bincount(idx.clamp_(0, self.N_BINS - 1), minlength=self.N_BINS)
        self._hist[name] = self._hist.get(name, torch.zeros(self.N_BINS, dtype=torch.long)) + hist

    def begin_forward(self) -> None:
        """Called before each model call that feeds these statistics (subclasses check layers)."""

    def end_forward(self) -> None:
        """Called after each such model call."""

    def names(self) -> list[str]:
        return sorted(self._count)

    def median(self, name: str) -> float:
        exact = self._exact[name]
        if exact is not None:
            return float(torch.cat(exact).double().median())  # lower median, as torch defines it
        n = self._count[name]
        rank = (n - 1) // 2  # 0-based rank of the lower median
        if rank < self._zeros[name]:
            return 0.0
        cum = torch.cumsum(self._hist[name], 0)
        target = rank - self._zeros[name]
        b = int(torch.searchsorted(cum, torch.tensor(target + 1)))
        before = int(cum[b - 1]) if b else 0
        frac = (target - before + 0.5) / max(1, int(self._hist[name][b]))
        width = (self.LOG_HI - self.LOG_LO) / self.N_BINS
        return float(10 ** (self.LOG_LO + (b + frac) * width))

    def summary(self, name: str, ranks: Sequence[int] = (1, 2, 3, 10, 100)) -> dict[str, float]:
        """{'top1': .., 'top2': .., ..., 'median': .., 'count': ..} for one activation."""
        top = self._top[name]
        out = {f"top{r}": float(top[r - 1]) for r in ranks if r <= top.numel()}
        out["median"] = self.median(name)
        out["count"] = self._count[name]
        out["median_exact"] = self._exact[name] is not None
        return out


@dataclass
class ForwardContext:
    """Everything a layer needs besides its input: backend, capture, statistics, hook."""

    backend: object
    capture: Optional[Capture] = None
    stats: Optional[ActivationStats] = None
    logit_hook: Optional[LogitHook] = None
    n_layers: int = 0

    def logit_fn(self, layer: int, with_stats: bool = True):
        """The per-layer logit function for the reference path, or None for the fast path."""
        stats = self.stats if with_stats else None
        hook = self.logit_hook
        if stats is None and hook is None:
            return None

        def fn(logits: torch.Tensor, valid: torch.Tensor, map_index: int) -> torch.Tensor:
            if stats is not None:
                stats.update("attn_logits" if map_index == 0 else "attn_logits_map2", logits[:, :, valid])
            if hook is not None:
                logits = hook(logits, valid, layer, map_index)
            return logits

        return fn

    def capture_rows(self, layer: int, q_start: int, n_queries: int):
        """(local indices, absolute positions) to capture in this layer and call, or None."""
        cap = self.capture
        if cap is None or not cap.wants(layer, self.n_layers):
            return None
        local, absolute = cap.select(q_start, n_queries)
        return (local, absolute) if local else None
