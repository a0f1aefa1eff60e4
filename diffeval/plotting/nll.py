"""The `nll` figure (the DIFF paper's section 3.3 form): cumulative average NLL against
position on a log x axis, one line per model with its 95% band, the position limit of each
model as a dotted vertical line; below, each model's difference to the first model (with a
paired band where both models scored the same token sequences)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from diffeval.plotting.style import model_colour
from diffeval.specs import length_label
from diffeval.stats import mean_ci


def cumulative_series(results: dict, label: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """One model's curve from results cells -> (positions, means, ci95 (P, 2) or None)."""
    rows = sorted((c for c in results["cells"] if c["model"] == label and c["kind"] == "cumulative"),
                  key=lambda c: c["position"])
    pos = np.array([c["position"] for c in rows])
    mean = np.array([c["mean"] for c in rows])
    ci = np.array([c["ci95"] for c in rows]) if rows and all("ci95" in c for c in rows) else None
    return pos, mean, ci


def paired_difference(samples: list[dict], label: str, base: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-position mean and 95% interval of (label - base) over sequences both models scored
    with the same token ids -> (positions, mean, ci (P, 2)), or None when they share none."""
    mine = {r["id"]: r for r in samples if r["model"] == label}
    theirs = {r["id"]: r for r in samples if r["model"] == base}
    shared = [i for i in mine if i in theirs and mine[i]["ids_sha256"] == theirs[i]["ids_sha256"]]
    if len(shared) < 2:
        return None
    diffs = np.array([np.subtract(mine[i]["cumulative"], theirs[i]["cumulative"]) for i in shared])  # (S, P)
    stats = [mean_ci(list(col)) for col in diffs.T]
    return (np.array(mine[shared[0]]["positions"]), np.array([m for m, _ in stats]),
            np.array([ci for _, ci in stats]))


def nll_curve_figure(results: dict, samples: list[dict]) -> Figure:
    labels = [m["label"] for m in results["models"]]
    fig = Figure(figsize=(7.5, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    limits = {}
    for i, label in enumerate(labels):
        pos, mean, ci = cumulative_series(results, label)
        colour = model_colour(label, i)
        top.plot(pos, mean, color=colour, lw=1.8, marker="o", ms=3, label=label)
        if ci is not None:  # drawn from 0 up: an NLL is never negative, though a t interval can be
            top.fill_between(pos, np.maximum(ci[:, 0], 0), ci[:, 1], color=colour, alpha=0.18, lw=0)
        limit = results["metrics"][label]["position_limit"]["value"]
        if limit < pos[-1]:
            limits.setdefault(limit, []).append((label, colour))
    for limit, owners in limits.items():
        for ax in (top, bottom):
            ax.axvline(limit, color=owners[0][1] if len(owners) == 1 else "0.3", ls=":", lw=1.2)
        names = ", ".join(n for n, _ in owners)
        top.annotate(f"position limit\n{names}", (limit, 1), xycoords=("data", "axes fraction"),
                     xytext=(-3, -3), textcoords="offset points", va="top", ha="right", fontsize=7)
    top.set_xscale("log", base=2)
    top.set_ylabel("Cumulative average NLL (nats)")
    n = {results["metrics"][m]["nll"]["n"] for m in labels}
    p = results["task"]["params"]
    top.set_title(f"NLL by position: {p['data']}, {', '.join(map(str, sorted(n)))} sequences of {p['length']} tokens "
                  f"(short documents {p['short_documents']}; band: 95% interval)", fontsize=9)
    top.legend(fontsize=8, frameon=False)
    top.grid(True, which="major", alpha=0.3)
    base = labels[0]
    bottom.axhline(0, color="black", lw=0.8)
    bpos, bmean, _ = cumulative_series(results, base)
    for i, label in enumerate(labels[1:], start=1):
        colour = model_colour(label, i)
        paired = paired_difference(samples, label, base)
        if paired is not None:
            pos, mean, ci = paired
            bottom.plot(pos, mean, color=colour, lw=1.6, marker="o", ms=3, label=f"{label} - {base}")
            bottom.fill_between(pos, ci[:, 0], ci[:, 1], color=colour, alpha=0.18, lw=0)
        else:
            pos, mean, _ = cumulative_series(results, label)
            common = np.intersect1d(pos, bpos)
            bottom.plot(common, mean[np.isin(pos, common)] - bmean[np.isin(bpos, common)], color=colour, lw=1.6,
                        marker="o", ms=3, label=f"{label} - {base} (different tokens: no paired band)")
    if len(labels) > 1:
        bottom.legend(fontsize=8, frameon=False)
    bottom.set_ylabel(f"Difference to {base} (nats)")
    bottom.set_xlabel("Position (tokens after BOS, log scale)")
    bottom.grid(True, which="major", alpha=0.3)
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda v, _: length_label(int(v)) if v >= 1 else ""))
    return fig


def curve_view(results: dict, run) -> Figure:
    return nll_curve_figure(results, run.samples())
