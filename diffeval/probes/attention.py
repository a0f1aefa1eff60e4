"""Attention allocation: how much of a captured attention row falls on the answer, the needle
sentence, the other needles, the sink, the question, and the rest of the context ("noise").

Categories partition the keys, so that their masses add up to the row's total: 1 for a
softmax row, 1 - lambda for a DIFF differential row (A1 - lambda A2). Priority where spans
overlap: answer > needle > other_needles > sink > query > noise.

    answer         the asked value's tokens
    needle         the rest of the asked needle sentence ("needle_total" = answer + needle)
    other_needles  every other needle sentence (distractors and other asked needles)
    sink           the first `sink` tokens of the prompt (BOS included)
    query          the question and answer prefix after the context
    noise          everything else: the haystack
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


CATEGORIES = ("answer", "needle", "other_needles", "sink", "query", "noise")
QUERY_MODES = ("question", "answer", "last")


@dataclass(frozen=True)
class Spans:
    """Token spans of one prompt, [start, end) each."""

    n_tokens: int
    answer: tuple[int, int]
    needle: tuple[int, int]
    others: tuple[tuple[int, int], ...]
    sink: int
    n_context: int

    def labels(self) -> np.ndarray:
        """(n_tokens,) category index of every key position."""
        lab = np.full(self.n_tokens, CATEGORIES.index("noise"), dtype=np.int8)
        lab[self.n_context:] = CATEGORIES.index("query")
        lab[: min(self.sink, self.n_tokens)] = CATEGORIES.index("sink")
        for s, e in self.others:
            lab[s:e] = CATEGORIES.index("other_needles")
        lab[self.needle[0]:self.needle[1]] = CATEGORIES.index("needle")
        lab[self.answer[0]:self.answer[1]] = CATEGORIES.index("answer")
        return lab

    def to_dict(self) -> dict:
        return {"answer": list(self.answer), "needle": list(self.needle),
                "others": [list(o) for o in self.others], "sink": [0, self.sink],
                "query": [self.n_context, self.n_tokens]}


def sample_spans(sample, sink: int) -> Spans:
    """Spans of a needle sample's first prompt (its first asked needle is the answer)."""
    needles = sample.needles
    first = needles[0]
    return Spans(
        n_tokens=sample.n_tokens[0],
        answer=tuple(sample.answer_spans[0]),
        needle=(first["token_start"], first["token_end"]),
        others=tuple((n["token_start"], n["token_end"]) for n in needles[1:]),
        sink=sink,
        n_context=sample.n_context,
    )


def query_positions(sample, mode: str, tokenizer) -> list[int]:
    """Query token positions in the first prompt: the question sentence, the answer prefix
    ("Answer: The magic number for X is"), or only the last token (which predicts the answer)."""
    n = sample.n_tokens[0]
    if mode == "last":
        return [n - 1]
    prompt = sample.prompts[0]
    text_tail = tokenizer.decode(list(prompt[sample.n_context:]))
    marker = "\nAnswer:"
    if marker in text_tail:  # plain prompts: "Answer: <answer prefix>"
        answer_text = text_tail[text_tail.index(marker) + 1:]
    elif sample.answer_prefix and text_tail.endswith(sample.answer_prefix):  # chat: after the assistant header
        answer_text = sample.answer_prefix
    else:
        raise ValueError(f"sample {sample.id}: cannot find the answer prefix in the prompt")
    k = min(len(tokenizer.encode(answer_text)), n - sample.n_context)
    if mode == "answer":
        return list(range(n - k, n))
    if mode == "question":
        return list(range(sample.n_context, n - k))
    raise ValueError(f"query mode {mode!r}: choose {', '.join(QUERY_MODES)}")


def allocation(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """rows (..., n_keys) -> (..., len(CATEGORIES)) mass per category (keys past a row's query
    are zero in captured rows, so they add nothing)."""
    n = labels.shape[0]
    onehot = np.zeros((n, len(CATEGORIES)), dtype=np.float64)
    onehot[np.arange(n), labels] = 1.0
    return rows[..., :n].astype(np.float64) @ onehot


def normalise_rows(alloc: np.ndarray, lam: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """DIFF rows sum to 1 - lambda; divide each row's categories by its own 1 - lambda so that
    they sum to 1. alloc (..., R, C), lam (..., R) (V1: the layer's lambda on every row; V2:
    each row's per-token lambda) -> (..., R, C), NaN for rows where |1 - lambda| < eps."""
    total = 1.0 - np.asarray(lam, dtype=np.float64)
    total = np.where(np.abs(total) < eps, np.nan, total)
    return alloc / total[..., None]


def summarize_allocations(records: Sequence[dict], key: str = "allocation") -> dict[str, float]:
    """Mean of per-sample category dicts."""
    if not records:
        return {}
    return {c: float(np.mean([r[key][c] for r in records])) for c in records[0][key]}
