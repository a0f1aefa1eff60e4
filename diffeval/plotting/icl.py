"""`icl` figures: accuracy against the number of demonstrations (log x, one line per model,
Wilson band of the pooled accuracy), and order robustness (the DIFF paper's Figure 7 form:
per model and arrangement, each permutation's accuracy and the best - worst spread)."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from diffeval.plotting.style import model_colour


def _models(results: dict) -> list[str]:
    return [m["label"] for m in results["models"]]


def curve_series(results: dict, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(demonstrations, pooled accuracy, Wilson interval (B, 2)) per budget of one model."""
    rows = []
    for name, m in results["metrics"][label].items():
        if name.startswith("accuracy@") and "," not in name and "shots" in m:
            rows.append((m["shots"], m["value"], m["ci95"]))
    rows.sort()
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def icl_curve_figure(results: dict) -> Figure:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, label in enumerate(_models(results)):
        x, y, ci = curve_series(results, label)
        colour = model_colour(label, i)
        ax.plot(x, y, color=colour, marker="o", lw=1.8, ms=4, label=label)
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=colour, alpha=0.18, lw=0)
    params = results["task"]["params"]
    classes = {m.get("notes", {}).get("classes") for m in results["models"]} - {None}
    if len(classes) == 1:
        chance = 1 / classes.pop()
        ax.axhline(chance, color="0.4", ls="--", lw=1)
        ax.annotate("chance", (1, chance), xycoords=("axes fraction", "data"), xytext=(-3, 3),
                    textcoords="offset points", ha="right", fontsize=7, color="0.3")
    ax.set_xscale("log")
    shots = sorted({int(v) for label in _models(results) for v in curve_series(results, label)[0]})
    ax.set_xticks(shots)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Demonstrations in the context (log scale)")
    ax.set_ylabel("Accuracy")
    ax.set_ylim(-0.02, 1.02)
    task = params["data"] + (", labels remapped" if params["remap_labels"] else "")
    ax.set_title(f"Many-shot ICL: {task} ({params['mode']}; band: 95% interval)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


def icl_order_figure(results: dict) -> Figure:
    """At the largest budget: one column per (model, arrangement), a dot per permutation, a bar
    from worst to best, the mean as a tick, std and margin written above."""
    perm = [c for c in results["cells"] if c["kind"] == "permutation"]
    summ = [c for c in results["cells"] if c["kind"] == "arrangement"]
    top = max(c["shots"] for c in summ)
    cols = [c for c in summ if c["shots"] == top]
    fig = Figure(figsize=(max(4.5, 1.3 * len(cols) + 1.5), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    models = _models(results)
    for x, c in enumerate(cols):
        colour = model_colour(c["model"], models.index(c["model"]))
        accs = [p["accuracy"] for p in perm if (p["model"], p["arrangement"], p["shots"]) == (c["model"], c["arrangement"], top)]
        ax.vlines(x, c["worst"], c["best"], color=colour, lw=6, alpha=0.35)
        ax.scatter(np.full(len(accs), x), accs, color=colour, s=18, zorder=3)
        ax.hlines(c["accuracy"], x - 0.25, x + 0.25, color=colour, lw=2)
        ax.annotate(f"std {c['std']:.3f}\nmargin {c['margin']:.3f}", (x, c["best"]), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{c['model']}\n{c['arrangement']}" for c in cols], fontsize=8)
    ax.set_xlim(-0.6, len(cols) - 0.4)
    ax.set_ylim(-0.02, 1.12)
    ax.set_ylabel("Accuracy per permutation")
    p = results["task"]["params"]["permutations"]
    ax.set_title(f"Order robustness at {top} demonstrations ({p} permutations)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def curve_view(results: dict, run) -> Figure:
    return icl_curve_figure(results)


def order_view(results: dict, run) -> Figure:
    return icl_order_figure(results)
