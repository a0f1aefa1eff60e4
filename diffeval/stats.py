"""Accuracy statistics shared by the probes: Wilson intervals and per-cell aggregation.

Rows and cells are plain dicts so they go straight into results.json. A cell is one group of
rows (e.g. one model, length and depth) with its "mean", count "n" and 95% Wilson "ci95".
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence



def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials -> (lo, hi), clamped to [0, 1].

    k may be fractional (a sum of partial scores). n = 0 carries no information: (0.0, 1.0).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"wilson: n ({n!r}) must be a non-negative integer")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k ({k!r}) must lie in [0, n] with n = {n}")
    if not z > 0:
        raise ValueError(f"wilson: z ({z!r}) must be positive")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At k = 0 and k = n the bound is exactly 0 or 1; rounding would land a hair inside.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _group(rows: Iterable[Mapping], keys: Sequence[str], value: str) -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (*keys, value) if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {', '.join(missing)} (has {', '.join(sorted(row))})")
        groups.setdefault(tuple(row[k] for k in keys), []).append(float(row[value]))
    return groups


def _sort_key(key: tuple) -> tuple:
    # Mixed types (model names, ints, floats) sort by (type name, value) per position.
    return tuple((type(v).__name__ != "str", v) for v in key)


def mean_per_cell(rows: Iterable[Mapping], keys: Sequence[str] = ("length", "depth"),
                  value: str = "score", z: float = 1.96) -> list[dict]:
    """Group rows by `keys` -> one cell per group, sorted by key, in the results.json cell
    layout: {**keys, "mean": mean of row[value], "n": count, "ci95": [wilson lo, hi]}.

    Each row's value must lie in [0, 1] (a per-sample accuracy); the interval treats the
    sum of values as the success count.
    """
    cells = []
    for key, vals in sorted(_group(rows, keys, value).items(), key=lambda kv: _sort_key(kv[0])):
        bad = [v for v in vals if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"cell {dict(zip(keys, key))}: {value} {bad[0]} is outside [0, 1]")
        total = math.fsum(vals)
        lo, hi = wilson(min(total, len(vals)), len(vals), z)
        cells.append({**dict(zip(keys, key)), "mean": total / len(vals), "n": len(vals), "ci95": [lo, hi]})
    return cells


def average_by(cells: Iterable[Mapping], by: Sequence[str], value: str = "mean") -> list[dict]:
    """Unweighted mean of cell means over everything not in `by` (e.g. by=("model", "length")
    gives the "Avg" row of a depth x length heatmap) -> [{**by, "mean", "n_cells", "n"}]."""
    cells = list(cells)
    groups = _group(cells, by, value)
    counts = {key: 0 for key in groups}
    for cell in cells:
        counts[tuple(cell[k] for k in by)] += int(cell.get("n", 0))
    return [{**dict(zip(by, key)), "mean": math.fsum(vals) / len(vals), "n_cells": len(vals), "n": counts[key]}
            for key, vals in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))]


# Student t quantiles t_{0.975, df} for df = 1..30 (standard table values).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Two-sided 95% Student t quantile; beyond the table a Cornish-Fisher expansion (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom ({df}) must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, Optional[tuple[float, float]]]:
    """Mean and its 95% t interval across independent values (None for fewer than two)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = t975(n - 1) * math.sqrt(var / n)
    return mean, (mean - half, mean + half)


def breakdown(metrics: dict, key: str, prefix: str = "") -> dict[str, dict[str, float]]:
    """{value of `key`: {metric: value}} from one model's flat metrics named
    "<prefix><metric>@<key>=<value>" (metrics with a further "." after the prefix are other
    views and left out)."""
    out: dict[str, dict[str, float]] = {}
    for name, m in metrics.items():
        head, _, value = name.partition(f"@{key}=")
        if value and head.startswith(prefix) and "." not in head[len(prefix):]:
            out.setdefault(value, {})[head[len(prefix):]] = m["value"]
    return out
