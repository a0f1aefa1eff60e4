"""Needle retrieval heatmap: depth (rows) x context length (columns), one panel per model,
with an "Avg" row (mean over depths per length) at the bottom, after the NIAH grid and the
DIFF paper's figure. Cells are results.json rows {"model", "length", "depth", "mean", ...}
(as made by diffeval.stats.mean_per_cell); `value` picks another key to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from diffeval.errors import UsageError
from diffeval.plotting import save_figure
from diffeval.specs import length_label

# red (0) -> yellow (0.5) -> green (1); missing cells are light grey
CMAP = LinearSegmentedColormap.from_list("needle", ["#d7301f", "#f7d348", "#1a9850"]).with_extremes(bad="#dddddd")
AVG_LABEL = "Avg"


def heatmap_matrix(cells: Iterable[Mapping], model: str, value: str = "mean"
                   ) -> tuple[list[float], list[int], np.ndarray]:
    """The grid drawn for `model` -> (depths ascending, lengths ascending, matrix (D + 1, L)):
    row i < D is depth i, the last row is the mean over depths per length (NaN-aware); a
    (depth, length) pair without a cell is NaN."""
    rows = [c for c in cells if c.get("model") == model]
    if not rows:
        raise UsageError(f"no needle cells for model {model!r}")
    depths = sorted({float(c["depth"]) for c in rows})
    lengths = sorted({int(c["length"]) for c in rows})
    grid = np.full((len(depths) + 1, len(lengths)), np.nan)  # (D + 1, L)
    for c in rows:
        i, j = depths.index(float(c["depth"])), lengths.index(int(c["length"]))
        if not math.isnan(grid[i, j]):
            raise UsageError(f"model {model!r} has two cells for length {c['length']}, depth {c['depth']}")
        grid[i, j] = float(c[value])
    body = grid[:-1]
    seen = ~np.isnan(body)  # (D, L)
    counts = seen.sum(axis=0)
    grid[-1] = np.where(counts > 0, np.where(seen, body, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)
    return depths, lengths, grid


def text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def needle_figure(cells: Sequence[Mapping], models: Sequence[str], title: Optional[str] = None,
                  value: str = "mean") -> Figure:
    """The heatmap figure (matplotlib OO API, Agg canvas): one panel per model, side by side."""
    if not models:
        raise UsageError("needle heatmap: no models to draw")
    known = sorted({str(c.get("model")) for c in cells})
    missing = [m for m in models if m not in known]
    if missing:
        raise UsageError(f"needle heatmap: no cells for model {missing[0]!r} (have: {', '.join(known)})")
    grids = [heatmap_matrix(cells, m, value) for m in models]
    n_rows = max(len(d) for d, _, _ in grids) + 1
    widths = [max(2.6, 0.62 * len(ls) + 1.1) for _, ls, _ in grids]
    fig = Figure(figsize=(sum(widths) + 1.2, max(2.6, 0.36 * n_rows + 1.4)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    image = None
    for k, (ax, model, (depths, lengths, grid)) in enumerate(zip(axes, models, grids)):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=CMAP, vmin=0.0, vmax=1.0,
                          aspect="auto", interpolation="nearest")
        size = 8 if len(lengths) <= 8 else 6
        for (i, j), v in np.ndenumerate(grid):
            colour = "#555555" if math.isnan(v) else text_colour(CMAP(v))
            ax.text(j, i, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=size, color=colour)
        ax.axhline(len(depths) - 0.5, color="white", linewidth=3)
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
        ax.set_yticks(range(len(depths) + 1), [f"{d:g}" for d in depths] + [AVG_LABEL])
        ax.tick_params(length=0)
        ax.set_xlabel("Context length (tokens)")
        if k == 0:
            ax.set_ylabel("Needle depth (%)")
        ax.set_title(model, fontsize=10)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.colorbar(image, ax=list(axes), label="Accuracy", fraction=0.05, pad=0.02, aspect=25)
    if title:
        fig.suptitle(title)
    return fig


def needle_heatmap(cells: Sequence[Mapping], models: Sequence[str], out_stem: str | Path,
                   title: Optional[str] = None, value: str = "mean") -> list[Path]:
    """Draw the depth x length heatmap and write `out_stem`.png and `out_stem`.pdf (atomic,
    parent folder created) -> [png path, pdf path]."""
    return save_figure(needle_figure(cells, models, title, value), out_stem)


def heatmap_view(results: dict, run) -> Figure:
    """The depth x length heatmap of a needle run (one panel per model)."""
    p = results["task"]["params"]
    title = (f"needle: {p['needle_kind']} needles, N={p['n_needles']}, R={p['n_queries']}, haystack "
             f"{p['haystack']}, {p['samples']} samples per cell")
    merged = "merged_runs" in results  # runs of several parameter sets side by side (a figure recipe)
    return needle_figure(results["cells"], [m["label"] for m in results["models"]], title=None if merged else title)
