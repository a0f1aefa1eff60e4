"""`halluc` figure: per model, stacked bars of the outcome shares for each question kind."""

from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# colour-blind-safe (Okabe-Ito) colours per outcome
COLOURS = {"correct": "#009E73", "abstained": "#56B4E9", "lookalike": "#F0E442", "confused": "#E69F00",
           "invented": "#D55E00", "wrong": "#999999"}


def outcome_figure(results: dict, outcomes: tuple[str, ...] = tuple(COLOURS)) -> Figure:
    models = [m["label"] for m in results["models"]]
    kinds = list(dict.fromkeys(c["kind"] for c in results["cells"] if c["kind"] != "summary"))
    by = {(c["model"], c["kind"]): c for c in results["cells"]}
    fig = Figure(figsize=(max(5.0, 1.9 * len(kinds) * len(models) / 2 + 2.5), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        x = np.arange(len(kinds)) + (i - (len(models) - 1) / 2) * width
        bottom = np.zeros(len(kinds))
        for o in outcomes:
            vals = np.array([by[(model, k)].get(f"{o}_rate", 0.0) if (model, k) in by else 0.0 for k in kinds])
            ax.bar(x, vals, width * 0.92, bottom=bottom, color=COLOURS[o], edgecolor="white", lw=0.5,
                   label=o if i == 0 else None)
            bottom += vals
        for xi in x:
            ax.text(xi, 1.01, model, rotation=90, ha="center", va="bottom", fontsize=7)
    n = sorted({by[k]["n"] for k in by if k[1] != "summary"})
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylim(0, 1.35)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("Share of answers")
    p = results["task"]["params"]
    what = (f"synthetic, {','.join(map(str, p['lengths']))} tokens, {p['n_facts']} facts" if p["data"] == "synthetic"
            else p["data"])
    ax.set_title(f"Answer outcomes per question kind: {what} (n = {', '.join(map(str, n))} per bar)", fontsize=9)
    ax.legend(ncols=6, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    return fig


def outcome_view(results: dict, run) -> Optional[Figure]:
    """The outcome bars of a halluc run (None when it asked no questions)."""
    return outcome_figure(results) if any(c["kind"] != "summary" for c in results["cells"]) else None
