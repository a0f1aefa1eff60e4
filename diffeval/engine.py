"""The engine: the only code that calls the model. Probes describe what they need as requests;
the engine runs them with batching, prefix-KV reuse, hooks and statistics.

Requests:

    Generate(prompt, max_new_tokens, stop_text, hook)   greedy continuation -> list of token ids
    Choice(prompt, candidates, hook)                     log-likelihood of each candidate -> [ChoiceScore]
    TokenNLL(ids, hook, stats)                           NLL of ids[1:] given the prefix -> (T-1,) float32
    CaptureRows(prompt, positions, layers, layer_stats)  exact attention rows -> {layer: {name: tensor}};
                                                         with layer_stats -> (rows, models.inspect.LayerStats)
    Stats(ids, hook)                                     one forward pass feeding the activation statistics

Generate and Choice requests are run in lexicographic order of their prompts (per hook), so
that prompts sharing a prefix (the R questions over one haystack; the depths of one haystack
up to the needle; ICL queries after one demonstration block) are neighbours. One cache is
kept, in aligned chunks of `align` tokens: before each prompt it is rolled back to the last
chunk boundary within the common prefix, the prompt's further whole chunks are prefilled one
chunk per call, and its last partial chunk in one more call. So every logit is a function of
the prompt alone (not of the prompts before it): reuse on or off, a resumed run or a fresh
one, give the same numbers. The other requests run in the order given."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from diffeval.models.cache import KVCache
from diffeval.models.decoder import Decoder
from diffeval.models.inspect import ActivationStats, Capture, LayerStats
from diffeval.requests import (  # noqa: F401  (the request types are the engine's interface)
    CaptureRows, Choice, ChoiceScore, Generate, Hook, Request, Stats, TokenNLL, fingerprint, ids_sha256,
)


_PREFIX_TYPES = (Generate, Choice)
SYNC_CUDA = 8  # on CUDA the next token is fed from the device; stops are read every this many steps


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0  # sum of request lengths
    prefilled_tokens: int = 0  # tokens actually run through the model (after prefix reuse)
    generated_tokens: int = 0
    seconds: float = 0.0  # the whole of run(), callbacks included
    prefill_seconds: float = 0.0  # model calls over prompt tokens (and Choice candidates)
    decode_seconds: float = 0.0  # token-by-token generation after a prefill


def _finished(outputs: dict, work, i: int, j: int, out: object) -> Iterator[tuple[int, list]]:
    """Record output j of item i; yield the item once all its outputs are in."""
    got = outputs.setdefault(i, {})
    got[j] = out
    if len(got) == len(work[i]):
        del outputs[i]
        yield i, [got[k] for k in range(len(work[i]))]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Engine:
    """Runs requests on one model. `stop_ids` end a generation (EOS); `decode` maps ids to
    text for Generate's stop_text; `stats` receives activations of TokenNLL(stats=True) and
    Stats requests; `batch_size` Generate prompts of equal length are decoded together."""

    model: Decoder
    stop_ids: frozenset = frozenset()
    decode: Optional[Callable[[list[int]], str]] = None
    batch_size: int = 1
    reuse: bool = True
    stats: Optional[ActivationStats] = None
    align: int = 256  # prefix-cache granularity (tokens): see _extend_to
    sync_every: Optional[int] = None  # decode steps per host sync; None: SYNC_CUDA on CUDA, 1 elsewhere
    counters: EngineStats = field(default_factory=EngineStats)

    def __post_init__(self) -> None:
        self._cache: Optional[KVCache] = None
        self._tokens: list[int] = []  # what the cache holds, token by token
        self._hook: Optional[Hook] = None  # the hook the cache was built with

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def run(self, work: Sequence[Sequence[Request]]) -> Iterator[tuple[int, list]]:
        """Run the requests of each work item; yields (item index, outputs in request order)
        as soon as every request of an item has finished."""
        flat = [(i, j, r) for i, reqs in enumerate(work) for j, r in enumerate(reqs)]
        outputs: dict[int, dict[int, object]] = {}
        for i, reqs in enumerate(work):
            if not reqs:
                yield i, []
        seq = [x for x in flat if not isinstance(x[2], _PREFIX_TYPES)]
        pre = sorted((x for x in flat if isinstance(x[2], _PREFIX_TYPES)),
                     key=lambda x: (x[2].hook.name if x[2].hook else "", tuple(x[2].prompt)))
        start = time.perf_counter()
        try:
            for i, j, req in seq:
                with self._timed("prefill"):
                    out = self._one(req)
                yield from _finished(outputs, work, i, j, out)
            for batch, outs in self._prefix_batches(pre):
                for (i, j, _), out in zip(batch, outs):
                    yield from _finished(outputs, work, i, j, out)
        finally:
            self.counters.seconds += time.perf_counter() - start

    def _prefix_batches(self, pre: list) -> Iterator[tuple[list, list]]:
        """Generate requests in batches of up to batch_size that can decode together; Choice alone."""
        k = 0
        while k < len(pre):
            batch = [pre[k]]
            first = pre[k][2]
            if isinstance(first, Generate):
                while (len(batch) < self.batch_size and k + len(batch) < len(pre)
                       and _batchable(first, pre[k + len(batch)][2])):
                    batch.append(pre[k + len(batch)])
                outs = self._generate([x[2] for x in batch])
            else:
                with self._timed("prefill"):
                    outs = [self._choice(first)]
            yield batch, outs
            k += len(batch)

    @contextmanager
    def _timed(self, phase: str):
        """Add the block's wall time to counters.<phase>_seconds (CUDA work finished inside it)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            key = f"{phase}_seconds"
            setattr(self.counters, key, getattr(self.counters, key) + time.perf_counter() - start)

    # --- one request at a time -------------------------------------------------------------

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, T)

    @torch.no_grad()
    def _one(self, req: Request):
        self.counters.requests += 1
        if isinstance(req, CaptureRows):
            self._count(len(req.prompt))
            cap = Capture(list(req.positions), layers=None if req.layers is None else list(req.layers))
            stats = LayerStats(*req.layer_stats) if req.layer_stats else None
            self.model(self._ids(req.prompt), logits="none", capture=cap, layer_stats=stats)
            return cap.rows if stats is None else (cap.rows, stats)
        ids = self._ids(req.ids)
        stats = self.stats if isinstance(req, Stats) or req.stats else None
        if stats is None and (isinstance(req, Stats) or req.stats):
            raise RuntimeError("a statistics request needs an Engine with `stats`")
        hook = req.hook.fn if req.hook else None
        self._count(len(req.ids))
        if stats is not None:
            stats.begin_forward()
        if isinstance(req, Stats):
            self.model.hidden(ids, stats=stats, logit_hook=hook)
            out = None
        else:
            out = self.model.token_nll(ids, stats=stats, logit_hook=hook)[0].numpy()  # (T-1,)
        if stats is not None:
            stats.end_forward()
        return out

    def _count(self, n: int) -> None:
        self.counters.prompt_tokens += n
        self.counters.prefilled_tokens += n

    # --- the model-facing primitives (an engine on another model implementation overrides these) ---

    def _call(self, ids: torch.Tensor, cache: KVCache, logits="last"):
        """(1 or B, T) ids through the model, extending `cache` -> logits per `logits`:
        "last" (B, 1, V), "all" (B, T, V), "none" None."""
        hook = self._hook.fn if self._hook else None
        return self.model(ids, cache, logits=logits, logit_hook=hook)

    def _new_cache(self) -> KVCache:
        return self.model.new_cache()

    def _truncate(self, cache: KVCache, length: int) -> None:
        cache.truncate(length)

    def _new_batch(self) -> KVCache:
        """An empty (B, ...) cache that _put_row fills one prompt at a time."""
        return KVCache(0)

    def _put_row(self, batch: KVCache, row: int, rows: int, extra: int) -> KVCache:
        """Copy what the batch-1 cache holds into row `row` of `batch` (room for `extra` more tokens)."""
        batch.put_row(row, self._cache, rows, extra=extra)
        return batch

    def _batch_ready(self, batch: KVCache) -> KVCache:
        return batch

    @torch.no_grad()
    def _extend_to(self, tokens: list[int], hook: Optional[Hook]) -> int:
        """Make the batch-1 cache hold tokens[:b], b the largest multiple of `align` <= len(tokens),
        reusing what it holds. Every cached position is computed in the call of its own aligned
        chunk, so its keys and values (and hence every later logit) do not depend on which
        prompts ran before: a resumed run, or one with more samples, gives the same numbers."""
        if self._cache is None or not self.reuse or hook != self._hook:
            self._cache, self._tokens, self._hook = self._new_cache(), [], hook
        keep = common_prefix(self._tokens, tokens) // self.align * self.align
        self._truncate(self._cache, keep)
        b = len(tokens) // self.align * self.align
        for s in range(keep, b, self.align):
            self._call(self._ids(tokens[s:s + self.align]), self._cache, logits="none")
            self.counters.prefilled_tokens += self.align
        self._tokens = list(tokens[:b])
        return b

    @torch.no_grad()
    def _generate(self, reqs: list[Generate]) -> list[list[int]]:
        """Prefill each prompt through the shared cache (prefix reuse across the batch and beyond
        it), then decode the batch together: a batch of B > 1 copies each prompt's keys and values
        into one row of a (B, ...) cache, so that every step runs B tokens in one call."""
        max_new = reqs[0].max_new_tokens
        self.counters.requests += len(reqs)
        self.counters.prompt_tokens += sum(len(r.prompt) for r in reqs)
        batch = self._new_batch() if len(reqs) > 1 else None
        firsts = []
        with self._timed("prefill"):
            for row, req in enumerate(reqs):
                prompt = list(req.prompt)
                b = self._extend_to(prompt[:-1], req.hook)  # at least the last token runs with logits
                firsts.append(self._call(self._ids(prompt[b:]), self._cache))  # (1, 1, V)
                self.counters.prefilled_tokens += len(prompt) - b
                if batch is not None:  # the next prompt's _extend_to rolls the shared cache back
                    batch = self._put_row(batch, row, len(reqs), extra=max_new + 1)
        with self._timed("decode"):
            cache = self._cache if batch is None else self._batch_ready(batch)
            outs = self._decode(torch.cat(firsts), cache, len(reqs), max_new, reqs[0].stop_text)
        self._truncate(self._cache, b)  # keep only the aligned prefix
        return outs

    def _decode(self, logits: torch.Tensor, cache: KVCache, batch: int, max_new: int,
                stop_text: Optional[str]) -> list[list[int]]:
        """Greedy decoding. The argmax stays on the device and is fed back as the next input;
        the host reads the tokens (stop ids, stop text) every `sync_every` steps, so a batch
        whose rows all stopped may run up to sync_every - 1 extra steps, whose tokens are
        dropped: the outputs and counters are those of one sync per step."""
        every = self.sync_every or (SYNC_CUDA if self.device.type == "cuda" else 1)
        outs: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        pending: list[torch.Tensor] = []  # (batch,) argmax per step since the last sync
        for step in range(max_new):
            tok = logits[:, -1].argmax(-1)  # (batch,) on the device
            pending.append(tok)
            last = step == max_new - 1
            if len(pending) == every or last:
                self._read_steps(torch.stack(pending).tolist(), outs, done, stop_text)
                pending = []
                if all(done):
                    break
            if last:
                break
            logits = self._call(tok[:, None], cache)
        return outs

    def _read_steps(self, steps: list[list[int]], outs: list[list[int]], done: list[bool],
                    stop_text: Optional[str]) -> None:
        """Append each step's tokens (steps x batch) to the rows not yet stopped, in order."""
        for toks in steps:
            for b, tok in enumerate(toks):
                if done[b]:
                    continue
                if tok in self.stop_ids:
                    done[b] = True
                    continue
                outs[b].append(tok)
                self.counters.generated_tokens += 1
                if stop_text and self.decode and _ends_with_stop(self.decode, outs[b], stop_text):
                    done[b] = True

    @torch.no_grad()
    def _choice(self, req: Choice) -> list[ChoiceScore]:
        """Prefill the prompt once (reusing the cache), then score each candidate after it,
        rolling the cache back between candidates: O(prompt + sum of candidates) tokens."""
        prompt = list(req.prompt)
        b = self._extend_to(prompt[:-1], req.hook)
        self.counters.requests += 1
        self.counters.prompt_tokens += len(prompt) + sum(len(c) for c in req.candidates)
        if len(prompt) - 1 > b:  # the rest of the prompt but its last token, in one call
            self._call(self._ids(prompt[b:-1]), self._cache, logits="none")
            self.counters.prefilled_tokens += len(prompt) - 1 - b
        base = len(prompt) - 1
        scores = []
        for cand in req.candidates:
            ids = [prompt[-1], *cand]  # the last prompt token predicts the first candidate token
            self._truncate(self._cache, base)
            logits = self._call(self._ids(ids[:-1]), self._cache, logits="all")  # (1, len(cand), V)
            logp = F.log_softmax(logits[0].float(), dim=-1)  # (len(cand), V)
            target = torch.tensor(cand, device=logp.device)
            picked = logp.gather(-1, target[:, None])[:, 0]
            greedy = bool((logp.argmax(-1) == target).all())
            scores.append(ChoiceScore(float(picked.double().sum()), len(cand), greedy))
            self.counters.prefilled_tokens += len(cand)
        self._truncate(self._cache, b)  # keep only the aligned prefix
        return scores


def _ends_with_stop(decode, out: list[int], stop_text: str, margin: int = 8) -> bool:
    """Whether stop_text occurs in decode(out), given that it did not before out's last token:
    it then ends in that token's text, so a window of the last tokens that decodes to at least
    len(stop_text) + margin characters holds it (the margin absorbs what a window's first token
    decodes to on its own: a dropped leading space, a cut multi-byte character). The window
    doubles from 4 tokens, so each step decodes O(len(stop_text)) tokens, not the whole output."""
    need, w = len(stop_text) + margin, 4
    while True:
        text = decode(out[-w:])
        if len(text) >= need or w >= len(out):
            return stop_text in text
        w *= 2


def _batchable(a: Generate, b: Generate) -> bool:
    return (len(a.prompt) == len(b.prompt) and a.max_new_tokens == b.max_new_tokens
            and a.stop_text == b.stop_text and a.hook == b.hook)
