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
from typing import Any, Sequence

import numpy as np

from diffeval.probes.base import metric


CATEGORIES = ("answer", "needle", "other_needles", "sink", "query", "noise")
POOL_WINDOW_ROWS = 64
POOL_WHOLE_ROWS = 128
WHOLE_PROMPT_LIMIT = 16384  # pooled whole-prompt maps only up to this length (memory)
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


# --- pooled maps for the figures, and per-row lambda ------------------------------------------


def pool_positions(sample, spans) -> dict[str, list[int]]:
    """Rows pooled for the figures of one prompt: a window around the needle (and the whole
    prompt up to WHOLE_PROMPT_LIMIT tokens), and the key range of the window."""
    n = sample.n_tokens[0]
    s, e = spans.needle
    pad = max(32, e - s)
    a, b = max(0, s - pad), min(n, e + pad)
    out = {"window": sorted(set(np.linspace(a, b - 1, min(POOL_WINDOW_ROWS, b - a)).round().astype(int).tolist()))}
    if n <= WHOLE_PROMPT_LIMIT:
        out["whole"] = sorted(set(np.linspace(0, n - 1, min(POOL_WHOLE_ROWS, n)).round().astype(int).tolist()))
    out["window_keys"] = [a, b]
    return out


def pool_keys(rows: np.ndarray, a: int, b: int, blocks: int) -> np.ndarray:
    """rows (..., n) -> (..., blocks): summed mass of keys [a, b) in equal blocks."""
    edges = np.linspace(a, b, blocks + 1).round().astype(int)
    return np.stack([rows[..., edges[i]:max(edges[i + 1], edges[i] + 1)].sum(-1) for i in range(blocks)], -1)


def pool_layer(pooled: dict, name: str, full: np.ndarray, positions: list[int], pool: dict) -> None:
    """Accumulate (per layer) pooled query-block x key-block maps, mean over heads."""
    index = {p: j for j, p in enumerate(positions)}
    a, b = pool["window_keys"]
    rows = full[:, [index[p] for p in pool["window"]]]  # (h, Rw, n)
    pooled.setdefault(f"{name}_window", []).append(pool_keys(rows, a, b, min(POOL_WINDOW_ROWS, b - a)).mean(0))
    if "whole" in pool:
        rows = full[:, [index[p] for p in pool["whole"]]]
        n = full.shape[-1]
        pooled.setdefault(f"{name}_whole", []).append(pool_keys(rows, 0, n, min(POOL_WHOLE_ROWS, n)).mean(0))


def row_lambdas(lam, heads: list[int], n_rows: int) -> np.ndarray:
    """Captured lambda -> (h, R) per query row: DIFF V1's one scalar per layer, or DIFF V2's
    (B, H, R_all) per-token, per-head values (batch 0, the selected heads, the query rows)."""
    if lam.dim() == 0:
        return np.full((len(heads), n_rows), float(lam))
    return lam[0][heads].numpy()[:, :n_rows].astype(np.float64)


def category_dict(vec: np.ndarray) -> dict[str, float]:
    out = {c: round(float(v), 6) for c, v in zip(CATEGORIES, vec)}
    out["needle_total"] = round(out["answer"] + out["needle"], 6)
    return out


def pooled_arrays(pooled: dict[str, list], pool: dict, spans: Spans) -> dict[str, np.ndarray]:
    """The representative prompt's pooled maps (mean over layers) and where they lie."""
    meta = {"window_keys": np.asarray(pool["window_keys"]), "window_rows": np.asarray(pool["window"]),
            "span_needle": np.asarray(spans.needle), "span_answer": np.asarray(spans.answer),
            "span_others": np.asarray(spans.others, dtype=np.int64).reshape(-1, 2), "n_tokens": np.asarray(spans.n_tokens)}
    if "whole" in pool:
        meta["whole_rows"] = np.asarray(pool["whole"])
    return {**{k: np.mean(v, axis=0) for k, v in pooled.items()}, **meta}


# --- aggregation over samples ----------------------------------------------------------------


def allocation_cells(records: list[dict], labels: list[str]) -> list[dict]:
    """Per (model, length, depth, layer, head): headline category masses, mean over samples."""
    cells = []
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["length"], r["depth"]), []).append(r)
    for (model, length, depth), rows in sorted(groups.items(), key=lambda kv: (labels.index(kv[0][0]), kv[0][1], kv[0][2])):
        name = "diff" if "diff" in rows[0]["per_layer_head"] else "attn"
        arr = np.mean(np.stack([np.asarray(r["per_layer_head"][name], dtype=float) for r in rows]), axis=0)
        normalised = (np.nanmean(np.stack([np.asarray(r["per_layer_head"]["diff_norm"], dtype=float) for r in rows]),
                                 axis=0) if name == "diff" else None)
        layer_ids, head_ids = rows[0]["layers"], rows[0]["heads"]
        for li in range(arr.shape[0]):
            for hi in range(arr.shape[1]):
                cell = {"model": model, "length": length, "depth": depth, "layer": layer_ids[li], "head": head_ids[hi],
                        "n": len(rows), **{c: round(float(arr[li, hi, k]), 6) for k, c in enumerate(CATEGORIES)}}
                if normalised is not None:
                    cell["normalised"] = {c: round(float(normalised[li, hi, k]), 6) for k, c in enumerate(CATEGORIES)}
                cells.append(cell)
    return cells


VIEWS = {"allocation": "", "allocation_normalised": "normalised.", "allocation_map1": "map1.", "allocation_map2": "map2."}


def allocation_metrics(mine: list[dict], direction: dict[str, bool]) -> dict[str, Any]:
    """One model's flat metrics: "<view><category>" over all samples and "...@depth=<d>" per
    depth; views are the headline rows (DIFF: signed differential rows), and for DIFF
    "normalised.", "map1.", "map2."; "lambda@layer=<L>". `direction`: category -> higher is better."""
    out: dict[str, Any] = {}
    for key, prefix in VIEWS.items():
        if key not in mine[0]:
            continue
        for c in mine[0][key]:
            out[f"{prefix}{c}"] = metric(np.mean([r[key][c] for r in mine]), len(mine), direction.get(c))
        for depth in sorted({r["depth"] for r in mine}):
            rows = [r[key] for r in mine if r["depth"] == depth]
            for c in rows[0]:
                out[f"{prefix}{c}@depth={depth:g}"] = metric(np.mean([x[c] for x in rows]), len(rows), direction.get(c))
    for layer, lam in mine[0].get("lambda", {}).items():
        out[f"lambda@layer={layer}"] = metric(lam, 1, None)
    return out
