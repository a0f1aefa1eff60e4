"""The `ruler` figures: a task x length heatmap per model (the average row below the tasks,
RULER's effective length marked by a line after its column), and the per-length average
over tasks against length, one line per model with its 95% Wilson band (pooled over the tasks), the threshold
dashed and each model's effective length marked."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffeval.plotting.needle import CMAP, text_colour
from diffeval.plotting.style import model_colour
from diffeval.specs import length_label


def _lengths(results: dict) -> list[int]:
    return sorted({c["length"] for c in results["cells"]})


def _average(met: dict, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(per-length average 0-100, its (L, 2) interval; nan where the run lacks one)."""
    rows = [met.get(f"score@length={L}") for L in lengths]
    mean = np.array([100 * r["value"] if r else math.nan for r in rows])
    ci = np.array([[100 * x for x in r["ci95"]] if r and "ci95" in r else (math.nan, math.nan) for r in rows])
    return mean, ci


def heatmap_view(results: dict, run) -> Figure:
    p, labels, lengths = results["task"]["params"], [m["label"] for m in results["models"]], _lengths(results)
    tasks = [*p["tasks"], "avg"]
    fig = Figure(figsize=(max(4.0, 1.8 + 0.75 * len(lengths) * len(labels)), 1.1 + 0.3 * len(tasks)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for k, (label, ax) in enumerate(zip(labels, axes)):
        met = results["metrics"][label]
        grid = np.full((len(tasks), len(lengths)), np.nan)  # (tasks + avg, L) in 0-100
        for c in results["cells"]:
            if c["model"] == label and c["task"] in p["tasks"]:
                grid[p["tasks"].index(c["task"]), lengths.index(c["length"])] = 100 * c["mean"]
        grid[-1] = _average(met, lengths)[0]
        ax.imshow(np.ma.masked_invalid(grid), cmap=CMAP, vmin=0, vmax=100, aspect="auto", interpolation="nearest")
        ax.axhline(len(tasks) - 1.5, color="white", lw=2.5)  # the average row below the tasks
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="#555555" if np.isnan(v) else text_colour(CMAP(v / 100)))
        eff = met["effective_length"]["value"]
        if eff in lengths:  # after the last passing column
            ax.axvline(lengths.index(eff) + 0.5, color="black", lw=1.8, ls="--")
        ax.set_xticks(range(len(lengths)), [length_label(L) for L in lengths])
        ax.set_yticks(range(len(tasks)), tasks if k == 0 else [""] * len(tasks))
        ax.set_title(f"{label}: effective length {length_label(eff) if eff else 'none'}")
    fig.supxlabel("length (tokens: prompt + generation budget)", fontsize=9)
    fig.suptitle(f"RULER score (0-100) by task and length; dashed: effective length (average "
                 f">= {p['threshold']:g}), {p['samples']} samples per cell", fontsize=9)
    return fig


def curve_view(results: dict, run) -> Figure:
    p, labels, lengths = results["task"]["params"], [m["label"] for m in results["models"]], _lengths(results)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(lengths))  # evenly spaced: RULER's lengths double
    for i, label in enumerate(labels):
        met, colour = results["metrics"][label], model_colour(label, i)
        mean, ci = _average(met, lengths)
        ax.plot(x, mean, color=colour, marker="o", ms=4, label=label)
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=colour, alpha=0.18, lw=0)
        eff = met["effective_length"]["value"]
        if eff in lengths:
            j = lengths.index(eff)
            ax.plot([x[j]], [mean[j]], marker="D", ms=9, mfc="none", mec=colour, mew=1.6)
    ax.axhline(p["threshold"], color="#555555", ls="--", lw=1.0)
    ax.annotate(f"threshold {p['threshold']:g}", (x[-1], p["threshold"]), xytext=(0, 3), textcoords="offset points",
                ha="right", va="bottom", fontsize=7, color="#555555")
    ax.set_xticks(x, [length_label(L) for L in lengths])
    ax.set_xlim(x[0] - 0.3, x[-1] + 0.3)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("length (tokens: prompt + generation budget)")
    ax.set_ylabel("average over tasks (0-100)")
    ax.grid(True, axis="y")
    ax.legend(loc="lower left", frameon=False)
    ax.set_title(f"RULER average over {len(p['tasks'])} tasks (95% intervals); "
                 "diamond: effective length")
    return fig
