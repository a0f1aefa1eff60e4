"""Runs prompts through a model with greedy decoding and prefix-KV reuse.

Prompts are processed in lexicographic order of their token ids, so that prompts sharing a
prefix (the R questions over one haystack; the depths of one haystack up to the needle) are
neighbours. One cache is kept: before each prompt (or batch of prompts) it is rolled back to
the longest common prefix with what it holds, and only the rest is prefilled."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch

from diffeval.models.cache import KVCache
from diffeval.models.decoder import Decoder


@dataclass
class EngineStats:
    prompts: int = 0
    prompt_tokens: int = 0  # sum of prompt lengths
    prefilled_tokens: int = 0  # tokens actually run through prefill (after prefix reuse)
    generated_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "prompt_tokens": self.prompt_tokens,
            "prefilled_tokens": self.prefilled_tokens,
            "generated_tokens": self.generated_tokens,
            "wall_seconds": round(self.seconds, 3),
            "prefill_tokens_per_s": round(self.prefilled_tokens / self.seconds, 1) if self.seconds else None,
            "reuse_ratio": round(self.prefilled_tokens / self.prompt_tokens, 4) if self.prompt_tokens else None,
        }


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Engine:
    """Greedy generation over many prompts. `stop_ids` end a continuation (EOS), `stop_text`
    ends it when the decoded text so far contains it (e.g. a newline); `decode` maps ids to
    text for that check."""

    model: Decoder
    max_new_tokens: int
    stop_ids: frozenset = frozenset()
    decode: Optional[Callable[[list[int]], str]] = None
    stop_text: Optional[str] = "\n"
    batch_size: int = 1
    reuse: bool = True
    stats: EngineStats = field(default_factory=EngineStats)

    def __post_init__(self) -> None:
        self._cache: Optional[KVCache] = None
        self._tokens: list[int] = []  # what the cache holds, token by token

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def run(self, prompts: Sequence[Sequence[int]], on_done: Callable[[int, list[int]], None],
            order: Optional[Iterable[int]] = None) -> None:
        """Generate for each prompt; calls on_done(index, generated ids) as each finishes."""
        idx = list(order) if order is not None else sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
        start = time.perf_counter()
        try:
            i = 0
            while i < len(idx):
                batch = [idx[i]]
                while (len(batch) < self.batch_size and i + len(batch) < len(idx)
                       and len(prompts[idx[i + len(batch)]]) == len(prompts[batch[0]])):
                    batch.append(idx[i + len(batch)])
                outs = self._run_batch([list(prompts[j]) for j in batch])
                for j, out in zip(batch, outs):
                    on_done(j, out)
                i += len(batch)
        finally:
            self.stats.seconds += time.perf_counter() - start

    @torch.no_grad()
    def _prefill_shared(self, prefix: list[int]) -> None:
        """Make the batch-1 cache hold exactly `prefix` (roll back, then extend)."""
        if self._cache is None or not self.reuse:
            self._cache, self._tokens = self.model.new_cache(), []
        keep = common_prefix(self._tokens, prefix)
        self._cache.truncate(keep)
        self._tokens = self._tokens[:keep]
        rest = prefix[keep:]
        if rest:
            ids = torch.tensor([rest], dtype=torch.long, device=self.device)
            self.model(ids, self._cache, logits="none")
            self.stats.prefilled_tokens += len(rest)
            self._tokens.extend(rest)

    @torch.no_grad()
    def _run_batch(self, prompts: list[list[int]]) -> list[list[int]]:
        n = len(prompts[0])
        shared = n - 1  # at least the last token is run with logits
        for p in prompts[1:]:
            shared = min(shared, common_prefix(prompts[0], p))
        self._prefill_shared(prompts[0][:shared])
        self.stats.prompts += len(prompts)
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        if len(prompts) == 1:
            cache = self._cache
        else:
            cache = self._cache.fork(batch=len(prompts), extra=n - shared + self.max_new_tokens + 1)
        suffix = torch.tensor([p[shared:] for p in prompts], dtype=torch.long, device=self.device)
        logits = self.model(suffix, cache, logits="last")  # (B, 1, V)
        self.stats.prefilled_tokens += suffix.numel()
        outs = self._decode(logits, cache, len(prompts))
        if len(prompts) == 1:
            self._tokens = (prompts[0] + outs[0])[: cache.length]
        return outs

    def _decode(self, logits: torch.Tensor, cache: KVCache, batch: int) -> list[list[int]]:
        outs: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        for step in range(self.max_new_tokens):
            toks = logits[:, -1].argmax(-1).tolist()
            for b, tok in enumerate(toks):
                if done[b]:
                    continue
                if tok in self.stop_ids:
                    done[b] = True
                    continue
                outs[b].append(tok)
                self.stats.generated_tokens += 1
                if self.stop_text and self.decode and self.stop_text in self.decode(outs[b]):
                    done[b] = True
            if all(done) or step == self.max_new_tokens - 1:
                break
            nxt = torch.tensor([[t] for t in toks], dtype=torch.long, device=self.device)
            logits = self.model(nxt, cache, logits="last")
        return outs
