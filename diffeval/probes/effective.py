"""Effective context length (RULER's and two stricter readings) and its bootstrap interval.

Input: per-sample scores in [0, 1] grouped by (task, length), optionally with the relative
depth of each sample's needle. The per-length average is the unweighted mean over tasks of
the cell means (RULER's "Avg."); effective length is the longest length L such that L and
every shorter length pass:

- ruler: the average is >= the threshold (0-100; RULER: 85.6, Llama-2-7B at 4K);
- relative: the average is >= RELATIVE x the shortest length's average (NoLiMa's reading);
- strict: every task, and every depth bin of the needle tasks pooled, is >= the threshold.

0 means the shortest length already fails. The bootstrap resamples the samples of every cell
with replacement (depths move with their scores), recomputes all of the above per replicate,
and reports percentile intervals; replicates are seeded, so an interval is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

RELATIVE = 0.85
DEPTH_BINS = 5  # strict: needle depth bins [0, 0.2), ..., [0.8, 1]
REPLICATES = 1000
METRICS = {"ruler": "effective_length", "relative": "effective_length@definition=relative",
           "strict": "effective_length@definition=strict"}  # the results' names; RULER's is the headline


@dataclass(frozen=True)
class Cell:
    scores: np.ndarray  # (n,) per-sample score in [0, 1]
    depths: Optional[np.ndarray] = None  # (n,) relative needle depth in [0, 1], needle tasks only


def _prefix(lengths: np.ndarray, passes: np.ndarray) -> np.ndarray:
    """passes (..., L) bool over sorted lengths -> the longest passing prefix's length (0: none)."""
    k = np.cumprod(passes, axis=-1).sum(axis=-1)
    return np.where(k > 0, lengths[np.maximum(k - 1, 0)], 0)


def _bins(depths: np.ndarray) -> np.ndarray:
    return np.minimum((depths * DEPTH_BINS).astype(np.int64), DEPTH_BINS - 1)


def _lengths_stats(per_task: np.ndarray, depth_sum: np.ndarray, depth_n: np.ndarray, lengths: np.ndarray,
                   threshold: float) -> dict[str, np.ndarray]:
    """per_task (..., T, L) cell means in 0-100 (nan: no cell); depth_sum/depth_n (..., B, L)
    pooled needle scores per depth bin -> {"avg" (..., L), and each definition (...)}."""
    avg = np.nanmean(per_task, axis=-2)
    base = avg[..., :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        depth_mean = np.where(depth_n > 0, 100.0 * depth_sum / np.maximum(depth_n, 1), np.inf)
    worst = np.minimum(np.nanmin(per_task, axis=-2), depth_mean.min(axis=-2))
    return {"avg": avg,
            "ruler": _prefix(lengths, avg >= threshold),
            "relative": _prefix(lengths, (base > 0) & (avg >= RELATIVE * base)),
            "strict": _prefix(lengths, worst >= threshold)}


def effective(cells: Mapping[tuple[str, int], Cell], threshold: float, seed: int = 0,
              replicates: int = REPLICATES) -> dict:
    """cells {(task, length): Cell} -> {"lengths", "avg": [per length, 0-100], definition:
    value, definition + "_ci95": [lo, hi]}."""
    tasks = sorted({t for t, _ in cells})
    lengths = np.array(sorted({L for _, L in cells}), dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    shape = (len(tasks), len(lengths))
    point = np.full(shape, np.nan)
    boot = np.full((replicates, *shape), np.nan)
    d_sum, d_n = np.zeros((DEPTH_BINS, len(lengths))), np.zeros((DEPTH_BINS, len(lengths)))
    bd_sum, bd_n = np.zeros((replicates, DEPTH_BINS, len(lengths))), np.zeros((replicates, DEPTH_BINS, len(lengths)))
    for (task, L), cell in sorted(cells.items()):
        i, j = tasks.index(task), int(np.searchsorted(lengths, L))
        s = np.asarray(cell.scores, dtype=np.float64)
        idx = rng.integers(0, len(s), size=(replicates, len(s)))
        point[i, j], boot[:, i, j] = 100.0 * s.mean(), 100.0 * s[idx].mean(axis=1)
        if cell.depths is not None:
            b = _bins(np.asarray(cell.depths, dtype=np.float64))
            onehot = np.eye(DEPTH_BINS)[b]  # (n, B)
            d_sum[:, j] += s @ onehot
            d_n[:, j] += onehot.sum(axis=0)
            bd_sum[:, :, j] += np.einsum("rn,rnb->rb", s[idx], onehot[idx])
            bd_n[:, :, j] += onehot[idx].sum(axis=1)
    now = _lengths_stats(point, d_sum, d_n, lengths, threshold)
    reps = _lengths_stats(boot, bd_sum, bd_n, lengths, threshold)
    out: dict = {"lengths": lengths.tolist(), "avg": now["avg"].tolist()}
    for d in METRICS:
        out[d] = int(now[d])
        out[d + "_ci95"] = [int(x) for x in np.quantile(reps[d], [0.025, 0.975], method="inverted_cdf")]
    return out


def weighted_averages(avg: Sequence[float]) -> dict[str, float]:
    """RULER's wAvg over lengths in increasing order: weights rising (inc) or falling (dec)
    linearly with the length's rank."""
    inc = [k + 1 for k in range(len(avg))]
    return {w: math.fsum(x * a for x, a in zip(ws, avg)) / sum(ws)
            for w, ws in (("increasing", inc), ("decreasing", inc[::-1]))}
