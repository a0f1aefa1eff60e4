"""What a forward pass can expose besides logits: exact attention rows for chosen queries
(`Capture`), streaming activation statistics (`ActivationStats`), per-layer statistics of
what the attention heads output and of the residual stream (`LayerStats`), and a hook that
transforms attention logits before the softmax (`LogitHook`)."""

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


class LayerStats:
    """Per-layer statistics of one prompt that tell attention variants apart, accumulated over
    its forward calls (prefix reuse included: positions are absolute, cache length + local
    index). Memory is O(layers x heads x bins), never O(T x d): nothing of the size of a
    layer's output is kept.

    - head outputs: per (layer, head, position bin) the sum of squares of what the layer hands
      its output projection (`ctx.head_outputs`), so RMS = sqrt(sum / (tokens x width)). Bin 0
      is position 0 alone (the first token, BOS where there is one); bin b >= 1 holds
      positions [1 + (b - 1) w, 1 + b w) for `bin_width` w.
    - distributions of `lambda` (DIFF; V1: one exact scalar per layer) and `gate` (sigmoid
      gates): per (layer, head) count, sum, min, max and a histogram of HIST_BINS equal bins
      on [0, 1] (values outside are counted in the edge bins; min and max stay exact).
    - the residual stream after each block (`ctx.residual`): the `top_k` largest |h| with
      their (position, feature) and, through ActivationStats, the median |h|, per layer."""

    HIST_BINS = 1000

    def __init__(self, bin_width: int, top_k: int = 10, exact_limit: int = 1 << 20) -> None:
        if bin_width < 1 or top_k < 1:
            raise ValueError(f"bin_width ({bin_width}) and top_k ({top_k}) must be at least 1")
        self.bin_width, self.top_k = bin_width, top_k
        self.sumsq: dict[int, torch.Tensor] = {}  # layer -> (H, bins) float64
        self.tokens: dict[int, torch.Tensor] = {}  # layer -> (bins,) int64, tokens x batch rows
        self.width: dict[int, int] = {}  # layer -> output width per head
        self.dists: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # (name, layer) -> accumulators
        self.scalars: dict[tuple[str, int], float] = {}  # (name, layer) -> one value (DIFF V1's lambda)
        self.top: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # layer -> |h|, position, feature
        self.magnitudes = ActivationStats(top_k=1, exact_limit=exact_limit)  # medians, named by layer

    def bins(self, start: int, n: int, device=None) -> torch.Tensor:
        """Position bin of absolute positions start .. start + n - 1: (n,) int64."""
        pos = torch.arange(start, start + n, device=device)
        return torch.where(pos == 0, 0, (pos - 1) // self.bin_width + 1)

    @staticmethod
    def _grow(t: Optional[torch.Tensor], size: int, shape: tuple) -> torch.Tensor:
        """t padded with zeros along its last dim to `size` (a new zero tensor when None)."""
        if t is None:
            return torch.zeros(*shape, size, dtype=torch.float64 if shape else torch.long)
        return t if t.shape[-1] >= size else torch.nn.functional.pad(t, (0, size - t.shape[-1]))

    def add_heads(self, layer: int, start: int, out: torch.Tensor) -> None:
        """out (B, H, T, Dv) for absolute positions start .. start + T - 1."""
        B, H, T, Dv = out.shape
        if T == 0:
            return
        b = self.bins(start, T)
        ct = torch.promote_types(out.dtype, torch.float32)
        sq = torch.linalg.vector_norm(out.detach(), dim=-1, dtype=ct).double().square().sum(0).cpu()  # (H, T)
        n = int(b[-1]) + 1
        self.sumsq[layer] = self._grow(self.sumsq.get(layer), n, (H,)).index_add_(1, b, sq)
        self.tokens[layer] = self._grow(self.tokens.get(layer), n, ()).index_add_(0, b, torch.full((T,), B))
        self.width[layer] = Dv

    def add_values(self, name: str, layer: int, x: torch.Tensor) -> None:
        """Per-head values: a 0-d tensor (one value for the layer), (B, H, T) or (B, H, T, d)."""
        x = x.detach()
        if x.dim() == 0:
            self.scalars[(name, layer)] = float(x)
            return
        H = x.shape[1]
        v = x.transpose(0, 1).reshape(H, -1).double().cpu()  # (H, values)
        idx = (v * self.HIST_BINS).long().clamp_(0, self.HIST_BINS - 1) + torch.arange(H)[:, None] * self.HIST_BINS
        hist = torch.bincount(idx.flatten(), minlength=H * self.HIST_BINS).view(H, self.HIST_BINS)
        acc = self.dists.get((name, layer))
        new = {"hist": hist, "count": torch.full((H,), v.shape[1], dtype=torch.long), "sum": v.sum(1),
               "min": v.amin(1), "max": v.amax(1)}
        if acc is not None:
            new = {"hist": acc["hist"] + hist, "count": acc["count"] + new["count"], "sum": acc["sum"] + new["sum"],
                   "min": torch.minimum(acc["min"], new["min"]), "max": torch.maximum(acc["max"], new["max"])}
        self.dists[(name, layer)] = new

    def add_residual(self, layer: int, start: int, h: torch.Tensor, chunk: int = 4096) -> None:
        """h (B, T, C), the residual stream after block `layer`, for absolute positions from `start`."""
        h = h.detach()
        B, T, C = h.shape
        a = h.abs().flatten()
        vals, idx = torch.topk(a, min(self.top_k, a.numel()))
        pos, feat = (idx // C) % T + start, idx % C  # flat index over (B, T, C)
        if layer in self.top:
            old = self.top[layer]
            vals, pos, feat = (torch.cat((o, t.to(o.dtype).cpu())) for o, t in zip(old, (vals, pos, feat)))
            keep = torch.topk(vals, min(self.top_k, vals.numel())).indices
            vals, pos, feat = vals[keep], pos[keep], feat[keep]
        self.top[layer] = (vals.double().cpu(), pos.cpu(), feat.cpu())
        for s in range(0, T, chunk):  # bounded host copies for the median's histogram
            self.magnitudes.update(str(layer), h[:, s : s + chunk])


@dataclass
class ForwardContext:
    """Everything a layer needs besides its input: backend, capture, statistics, hook."""

    backend: object
    capture: Optional[Capture] = None
    stats: Optional[ActivationStats] = None
    logit_hook: Optional[LogitHook] = None
    n_layers: int = 0
    layer_stats: Optional[LayerStats] = None
    start: int = 0  # absolute position of this call's first token (the cache length before it)

    def head_outputs(self, layer: int, out: torch.Tensor, *, lam: Optional[torch.Tensor] = None,
                     gate: Optional[torch.Tensor] = None) -> None:
        """Called by every attention layer just before its output projection with what that
        projection sees, per head: out (B, H, T, Dv) (DIFF V1: after the per-head norm and the
        (1 - lambda_init) scale; gated: after the gate). `lam`: DIFF's lambda, 0-d (V1) or
        (B, H, T) (V2); `gate`: sigmoid gates (B, H, T, d), (B, H, T, 1) or (B, H, T). A no-op
        unless the forward call was given LayerStats; outside the attention kernel, so every
        backend reports the same."""
        stats = self.layer_stats
        if stats is None:
            return
        stats.add_heads(layer, self.start, out)
        for name, x in (("lambda", lam), ("gate", gate)):
            if x is not None:
                stats.add_values(name, layer, x)

    def residual(self, layer: int, h: torch.Tensor) -> None:
        """The residual stream h (B, T, C) after block `layer` (a no-op without LayerStats)."""
        if self.layer_stats is not None:
            self.layer_stats.add_residual(layer, self.start, h)

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
