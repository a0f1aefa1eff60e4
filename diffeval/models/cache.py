"""KV cache with fork and rollback: prefill a prefix once, continue several branches from it."""

from __future__ import annotations

import torch

HEADROOM = 256  # spare slots so that decoding after a prefill does not reallocate


class LayerCache:
    """Keys and values of one layer in a growable buffer. k, v: (B, Hkv, capacity, D)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, Hkv, T, D) keys/values; return views of all keys/values so far."""
        T = k.shape[2]
        need = self.length + T
        if self.k is None or need > self.k.shape[2]:
            cap = need + max(HEADROOM, need // 8)
            self._resize(cap, k, v)
        self.k[:, :, self.length : need] = k
        self.v[:, :, self.length : need] = v
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def _resize(self, cap: int, k: torch.Tensor, v: torch.Tensor) -> None:
        nk = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
        nv = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
        if self.k is not None and self.length:
            nk[:, :, : self.length] = self.k[:, :, : self.length]
            nv[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = nk, nv

    def put_row(self, row: int, src: "LayerCache", batch: int, extra: int) -> None:
        """Copy a batch-1 cache's keys/values into row `row`; the first call allocates (batch, Hkv,
        length + extra, D) and fixes the length every row must have."""
        n = src.length
        if self.k is None:
            shape = (batch, src.k.shape[1], n + extra, src.k.shape[3])
            self.k, self.v, self.length = src.k.new_empty(shape), src.v.new_empty(shape), n
        if n != self.length:
            raise ValueError(f"rows of a batch cache need one length: {n} != {self.length}")
        self.k[row, :, :n] = src.k[0, :, :n]
        self.v[row, :, :n] = src.v[0, :, :n]

    def clone(self, batch: int | None, extra: int) -> "LayerCache":
        out = LayerCache()
        if self.k is None:
            return out
        k = self.k[:, :, : self.length]
        v = self.v[:, :, : self.length]
        if batch is not None and batch != k.shape[0]:
            if k.shape[0] != 1:
                raise ValueError(f"can only widen a batch-1 cache, not batch {k.shape[0]}")
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        out._resize(self.length + extra, k, v)
        out.k[:, :, : self.length] = k
        out.v[:, :, : self.length] = v
        out.length = self.length
        return out


class KVCache:
    """Per-layer caches of one decoder. `length` tokens have been processed."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def fork(self, batch: int | None = None, extra: int = HEADROOM) -> "KVCache":
        """An independent copy of the processed prefix (no recompute). `batch` widens a batch-1
        cache to that many branches for batched decoding."""
        out = KVCache(0)
        out.layers = [layer.clone(batch, extra) for layer in self.layers]
        return out

    def put_row(self, row: int, src: "KVCache", batch: int, extra: int = HEADROOM) -> None:
        """Make row `row` of this batch cache a copy of the batch-1 cache `src` (all rows must have
        one length): prompts prefilled one by one, with prefix reuse, then decoded together."""
        if not self.layers:
            self.layers = [LayerCache() for _ in src.layers]
        for mine, theirs in zip(self.layers, src.layers):
            mine.put_row(row, theirs, batch, extra)

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` tokens (for sequential branches sharing one buffer)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        for layer in self.layers:
            layer.length = length
