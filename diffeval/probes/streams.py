"""Text as token sequences for the activation probe (no torch): the synthetic essay stream,
the cutting of a token stream into sequences, and the constants of the statistics' layout
(the DIFF paper's Table 5)."""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes.haystack import essay_sentence

_TASK_KEY = int.from_bytes(b"outliers", "big")
RANKS = (1, 2, 3, 10, 100)
STAT_KEYS = tuple(f"top{r}" for r in RANKS) + ("median",)
BASELINE_BITS = 16
MIN_BITS = 2  # 2^(k-1) - 1 levels per sign: k = 1 would leave none
# Table-5 rows: activation type -> (names in ActivationStats, label in tables and figures)
ACTIVATIONS: dict[str, str] = {
    "attention_logits": "attention logits",
    "attention_logits_map1": "attention logits, map 1",
    "attention_logits_map2": "attention logits, map 2",
    "hidden_states": "hidden states",
}


def essay_paragraphs(rng: np.random.Generator) -> Iterator[str]:
    """Endless paragraphs of 4 to 12 essay sentences (diffeval.probes.haystack's generator),
    each ending with a blank line."""
    while True:
        n = int(rng.integers(4, 13))
        yield " ".join(essay_sentence(rng) for _ in range(n)) + "\n\n"


def synthetic_rng(seed: int) -> np.random.Generator:
    """The essay stream's generator for `seed` (the task's share of the seed mixed in)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _TASK_KEY])))


def token_stream(blocks: Iterable[str], encode) -> Iterator[int]:
    """Token ids of the text blocks in order; each block is encoded on its own (blocks end at
    paragraph or line breaks), so memory is one block, never the whole text."""
    for block in blocks:
        yield from encode(block)


def sequences(ids: Iterator[int], n_tokens: Optional[int], seq_len: int, bos: Optional[int]
              ) -> Iterator[tuple[int, list[int]]]:
    """Cut a token stream into sequences of `seq_len` tokens (BOS first when the tokenizer has
    one) until `n_tokens` tokens in all (the last sequence may be shorter; None = until the
    stream ends) -> (offset of its first text token in the stream, ids). Raises ConfigError
    when the stream ends before `n_tokens`; the caller counts first to fail before any work."""
    head = [] if bos is None else [int(bos)]
    if seq_len <= len(head):
        raise ConfigError(f"{seq_len} leaves no room for text after BOS", "seq_len")
    done, offset = 0, 0
    while n_tokens is None or done < n_tokens:
        size = seq_len if n_tokens is None else min(seq_len, n_tokens - done)
        body = [t for _, t in zip(range(size - len(head)), ids)]
        if n_tokens is None and not body:
            return
        if n_tokens is not None and len(body) < size - len(head):
            raise ConfigError(f"the data ran out after {done + len(head) + len(body)} of {n_tokens} tokens", "data")
        yield offset, head + body
        offset += len(body)
        done += len(head) + len(body)
        if n_tokens is None and len(body) < seq_len - len(head):
            return


def count_tokens(ids: Iterator[int], limit: Optional[int], seq_len: int, has_bos: bool) -> int:
    """Tokens the sequences of a stream hold in all (BOS included), stopping at `limit`."""
    total = 0
    for _, seq in sequences(ids, None, seq_len, 0 if has_bos else None):
        total += len(seq)
        if limit is not None and total >= limit:
            return limit
    return total


def mean_nll(total: float, n: int) -> float:
    return total / n if n else math.nan
