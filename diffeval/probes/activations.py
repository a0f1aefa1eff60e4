"""Activation outliers (the DIFF paper's section 3.7), the pure parts: streaming statistics in
the layout of its Table 5, and the attention-logit quantization hook (text streams: probes/streams.py).

What is measured:

- **attention logits**: the scaled, pre-softmax scores q . k / sqrt(d_head) (after RoPE),
  for every layer, head and query position, counting only causally visible (query, key)
  pairs; masked entries are never seen. DIFF has two maps per head: each map has its own
  row (`attention_logits_map1`, `attention_logits_map2`) and `attention_logits` pools both,
  so its top-1 is the larger of the two maps' top-1.
- **hidden states**: each layer's output residual stream h (after the MLP residual, before
  the final norm), every position and feature; the embeddings themselves are not counted.

For each: top-1, 2, 3, 10, 100 and the median of |x| over all values seen (exact median up to
`ActivationStats.exact_limit` values, a log-histogram estimate beyond).

Quantization: dynamic, symmetric absmax round-to-nearest to k bits, per query row: for every
(batch, head, query row) the scale is absmax / (2^(k-1) - 1) over that row's VALID (causal)
logits, and q(x) = round(x / scale) * scale, so |q(x) - x| <= scale / 2. A row's scale
depends on that row alone, so the result does not depend on query blocking, chunked prefill,
KV-cache reuse or batching. Masked entries pass through untouched (the softmax masks them).
16 bits is the paper's unquantized baseline (16-bit float logits): its hook is the identity,
which still routes attention through the reference path, like every quantized run.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from pathlib import Path

from diffeval.models.inspect import ActivationStats, LogitHook
from diffeval.probes.base import ProbeState
from diffeval.results import atomic_path

from diffeval.probes.streams import (  # noqa: F401  (the statistics' layout, and text streams)
    ACTIVATIONS, BASELINE_BITS, MIN_BITS, RANKS, STAT_KEYS, count_tokens, essay_paragraphs, mean_nll, sequences,
    synthetic_rng, token_stream,
)

_POOLED = "attention_logits"
_STATS_NAME = {"attn_logits": "attention_logits_map1", "attn_logits_map2": "attention_logits_map2",
               "hidden": "hidden_states"}


# --- quantization ---------------------------------------------------------------------------


def quantize_absmax(x: torch.Tensor, valid: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric absmax round-to-nearest quantization (returned dequantized) of logits
    x (B, H, R, Tk), one scale per (b, h, row) from the row's valid entries; valid (R, Tk)
    bool. Entries outside `valid`, and rows whose valid entries are all 0, are unchanged.
    |q - x| <= absmax / (2^(bits-1) - 1) / 2 elementwise."""
    if bits < MIN_BITS:
        raise ValueError(f"quantization to {bits} bits leaves no levels; use at least {MIN_BITS}")
    levels = 2 ** (bits - 1) - 1
    amax = x.abs().masked_fill(~valid, 0).amax(dim=-1, keepdim=True)  # (B, H, R, 1)
    scale = amax / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / safe).clamp_(-levels, levels) * safe
    return torch.where(valid & (scale > 0), q, x)


def quant_hook(bits: int) -> LogitHook:
    """The LogitHook applying `quantize_absmax` at `bits` in every layer and map; the identity
    for BASELINE_BITS (unquantized, but still on the reference attention path)."""
    if bits == BASELINE_BITS:
        return lambda logits, valid, layer, map_index: logits
    if not MIN_BITS <= bits < BASELINE_BITS:
        raise ValueError(f"bits ({bits}) must lie in [{MIN_BITS}, {BASELINE_BITS}]")
    return lambda logits, valid, layer, map_index: quantize_absmax(logits, valid, bits)


# --- statistics -----------------------------------------------------------------------------


class OutlierStats(ActivationStats):
    """ActivationStats under Table-5 names, plus the pooled DIFF row and the top-1 per layer.

    The decoder reports, per layer, its attention logits (in query blocks) and then its
    output hidden state, so an "hidden" update closes a layer: logits seen since the last one
    belong to the layer being run. Call `begin_forward()` before each model call and
    `end_forward()` after it (it checks that every layer reported)."""

    def __init__(self, n_layers: int, top_k: int = max(RANKS), exact_limit: int = 1 << 21) -> None:
        super().__init__(top_k=top_k, exact_limit=exact_limit)
        self.n_layers = n_layers
        self.layer_top1: dict[str, list[float]] = {}
        self._layer: Optional[int] = None

    def begin_forward(self) -> None:
        self._layer = 0

    def end_forward(self) -> None:
        if self._layer != self.n_layers:
            raise RuntimeError(f"statistics saw {self._layer} of {self.n_layers} layers in one forward pass")
        self._layer = None

    def update(self, name: str, x: torch.Tensor) -> None:
        table_name = _STATS_NAME.get(name, name)
        if self._layer is None and name in _STATS_NAME:
            raise RuntimeError("OutlierStats.update outside begin_forward() / end_forward()")
        super().update(table_name, x)
        if name in _STATS_NAME and x.numel():
            top = self.layer_top1.setdefault(table_name, [0.0] * self.n_layers)
            top[self._layer] = max(top[self._layer], float(x.detach().abs().max()))
        if name == "hidden":
            self._layer += 1

    def _pool(self, parts: Sequence[str], into: str) -> None:
        """Statistics of the union of `parts` (top-k, counts, histogram, exact values) under
        `into`, as if every value had been fed to it: cheaper than feeding them twice."""
        tops = [self._top[p] for p in parts]
        self._top[into] = torch.topk(torch.cat(tops), min(self.top_k, sum(t.numel() for t in tops))).values
        self._count[into] = sum(self._count[p] for p in parts)
        self._zeros[into] = sum(self._zeros[p] for p in parts)
        self._hist[into] = sum(self._hist[p] for p in parts)
        exact = [self._exact[p] for p in parts]
        fits = all(e is not None for e in exact) and self._count[into] <= self.exact_limit
        self._exact[into] = [t for e in exact for t in e] if fits else None

    def state(self) -> dict[str, np.ndarray]:
        """Everything the statistics hold, as arrays (to resume a run)."""
        out: dict[str, np.ndarray] = {}
        for name in self.names():
            out[f"top::{name}"] = self._top[name].numpy()
            out[f"hist::{name}"] = self._hist[name].numpy()
            out[f"count::{name}"] = np.asarray(self._count[name])
            out[f"zeros::{name}"] = np.asarray(self._zeros[name])
            if self._exact[name] is not None:
                out[f"exact::{name}"] = torch.cat(self._exact[name]).numpy() if self._exact[name] else np.zeros(0, np.float32)
        for name, tops in self.layer_top1.items():
            out[f"layer::{name}"] = np.asarray(tops, dtype=np.float64)
        return out

    def load_state(self, arrays) -> None:
        """Restore what `state()` returned."""
        for key in arrays.files if hasattr(arrays, "files") else arrays:
            kind, name = key.split("::", 1)
            value = arrays[key]
            if kind == "top":
                self._top[name] = torch.from_numpy(np.array(value, dtype=np.float64))
                self._exact.setdefault(name, None)
            elif kind == "hist":
                self._hist[name] = torch.from_numpy(np.array(value, dtype=np.int64))
            elif kind == "count":
                self._count[name] = int(value)
            elif kind == "zeros":
                self._zeros[name] = int(value)
            elif kind == "exact":
                self._exact[name] = [torch.from_numpy(np.array(value, dtype=np.float32))]
            elif kind == "layer":
                self.layer_top1[name] = [float(x) for x in value]

    def table(self) -> dict[str, dict]:
        """{activation: {top1, top2, top3, top10, top100, median, count, median_exact}} in
        ACTIVATIONS order; the map rows only for DIFF (when map 2 was seen)."""
        seen = set(self.names())
        maps = [m for m in ("attention_logits_map1", "attention_logits_map2") if m in seen]
        if maps:
            self._pool(maps, _POOLED)
            seen.add(_POOLED)
        diff = len(maps) == 2
        rows = {}
        for name in ACTIVATIONS:
            if name not in seen or (name.endswith(("_map1", "_map2")) and not diff):
                continue
            rows[name] = self.summary(name, RANKS)
        return rows

    def per_layer(self) -> dict[str, list[float]]:
        """{activation: top-1 |x| per layer} (pooled logits = max over the maps)."""
        out = {k: list(v) for k, v in self.layer_top1.items()}
        if "attention_logits_map1" in out:
            maps = [out[m] for m in ("attention_logits_map1", "attention_logits_map2") if m in out]
            out[_POOLED] = [max(vals) for vals in zip(*maps)]
        if "attention_logits_map2" not in out:
            out.pop("attention_logits_map1", None)
        return {k: out[k] for k in ACTIVATIONS if k in out}


class StatsState(ProbeState):
    """The outliers probe's running statistics, saved and restored with the resume cache."""


    def __init__(self, n_layers: int) -> None:
        self.stats = OutlierStats(n_layers)

    def save(self, path: Path, keys: list[str]) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.stats.state(), **{"meta::keys": np.asarray(keys, dtype=str)})

    def load(self, path: Path) -> list[str]:
        with np.load(path) as z:
            keys = [str(k) for k in z["meta::keys"]]
            self.stats.load_state({k: z[k] for k in z.files if not k.startswith("meta::")})
        return keys

    def finalise(self) -> dict:
        return {"activations": self.stats.table(), "per_layer_top1": self.stats.per_layer()}
