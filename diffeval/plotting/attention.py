"""Figures of `attn-map`: attention profiles over the context, layer x head answer mass,
pooled query-block x key-block maps (DIFF: map 1, map 2, differential), allocation bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.families import DIFFERENTIAL
from diffeval.plotting.style import model_colour

def _figure(w: float, h: float, rows: int = 1, cols: int = 1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _shade(ax, npz, horizontal: bool = False) -> None:
    """Mark the answer needle (green), other needles (grey) and the sink (blue)."""
    span = ax.axhspan if horizontal else ax.axvspan
    s, e = npz["span_needle"]
    span(s, e, color="tab:green", alpha=0.25, lw=0, label="asked needle")
    for k, (a, b) in enumerate(npz["span_others"]):
        span(a, b, color="0.5", alpha=0.25, lw=0, label="other needles" if k == 0 else None)


def profile_figure(arrays: dict[str, Any], log_scale: bool = True, query: str = "answer",
                   prompts: Optional[dict[str, str]] = None):
    """Attention over context positions for the representative prompt of each model: up to
    three captured layers, mean over the selected heads and query tokens."""
    who = "last token" if query == "last" else f"{query} tokens"
    fig, axes = _figure(10, 2.6 * len(arrays), rows=len(arrays))
    for ax, (label, (npz, family)) in zip(axes[:, 0], arrays.items()):
        layers = [int(x) for x in npz["layers"]]
        pick = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
        n = len(npz["input_ids"])
        for L in pick:
            row = npz[f"layer{L}"].mean(axis=(0, 1))  # (n,)
            ax.plot(np.arange(n), row, lw=0.8, label=f"layer {L}")
        _shade(ax, npz)
        if log_scale:
            if family in DIFFERENTIAL:
                ax.set_yscale("symlog", linthresh=1e-5)
            else:
                ax.set_yscale("log")
                ax.set_ylim(1e-7, 1.0)  # attention weights: at most 1
        what = "differential row A1 - λA2" if family in DIFFERENTIAL else "attention"
        prompt = f" (prompt {prompts[label]})" if prompts and label in prompts else ""
        ax.set_title(f"{label}: {what} of the {who} over the context{prompt}", fontsize=9)
        ax.set_xlabel("key position (token)")
        ax.set_ylabel("attention")
        ax.set_xlim(0, n)
        ax.legend(loc="upper left", fontsize=7, ncols=3)
    return fig


def layer_head_figure(cells: list[dict], labels: list[str], category: str = "answer"):
    """Layer x head heatmap of one category's share (mean over depths and samples), one colour
    scale shared by every model (diverging around 0 when a DIFF row is negative)."""
    grids = {}
    for label in labels:
        mine = [c for c in cells if c["model"] == label]
        layers = sorted({c["layer"] for c in mine})
        heads = sorted({c["head"] for c in mine})
        grid = np.zeros((len(layers), len(heads)))
        count = np.zeros_like(grid)
        for c in mine:
            i, j = layers.index(c["layer"]), heads.index(c["head"])
            grid[i, j] += c[category]
            count[i, j] += 1
        grids[label] = (layers, heads, grid / np.maximum(count, 1))
    lo = min(float(g.min()) for _, _, g in grids.values())
    hi = max(float(g.max()) for _, _, g in grids.values())
    signed = lo < 0
    vmax = max(abs(lo), abs(hi)) or 1.0
    fig, axes = _figure(3.2 * len(labels) + 1.2, 4, cols=len(labels))
    for ax, label in zip(axes[0], labels):
        layers, heads, grid = grids[label]
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r" if signed else "viridis", origin="lower",
                       interpolation="nearest", vmin=-vmax if signed else 0.0, vmax=vmax if signed else hi or 1.0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads])
        step = max(1, len(layers) // 12)
        ax.set_yticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=f"{category} share")
    fig.suptitle(f"{category} share per layer and head (mean over depths, samples and query tokens; "
                 "DIFF: signed A1 - λA2)", fontsize=9)
    return fig


def pooled_figure(pooled: dict[str, Any], part: str = "window"):
    """Pooled query-block x key-block maps of each model's representative prompt; DIFF models
    show map 1, map 2 and the differential map side by side."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, SymLogNorm

    rows = [(label, npz, fam) for label, (npz, fam) in pooled.items() if f"{'diff' if fam == 'diff' else 'attn'}_{part}" in npz]
    if not rows:
        return None
    # Panels in rows of three: a DIFF model's three maps share a row; softmax models fill rows.
    panels: list[list[tuple]] = []
    for label, npz, fam in rows:
        names = ("map1", "map2", "diff") if fam in DIFFERENTIAL else ("attn",)
        if fam in DIFFERENTIAL or not panels or len(panels[-1]) >= 3 or panels[-1][0][2] == "diff":
            panels.append([])
        panels[-1].extend((label, npz, n) for n in names)
    cols = max(len(p) for p in panels)
    fig, axes = _figure(4.2 * cols, 3.8 * len(panels), rows=len(panels), cols=cols)
    titles = {"map1": "softmax map 1", "map2": "softmax map 2", "diff": "differential A1 - λA2", "attn": "attention"}
    for r, row in enumerate(panels):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(row):
                ax.axis("off")
                continue
            label, npz, name = row[c]
            if part == "window":
                a, b = (int(x) for x in npz["window_keys"])
                qrows = npz["window_rows"]
            else:
                a, b = 0, int(npz["n_tokens"])
                qrows = npz["whole_rows"]
            m = npz[f"{name}_{part}"]  # (rows, key blocks)
            signed = name == "diff"
            vmax = float(np.abs(m).max()) or 1.0
            # Log colour scales: a few sharp entries (the first rows, the sink) would
            # otherwise hide everything else. Exact zeros are keys a query cannot see (grey).
            norm = (SymLogNorm(linthresh=vmax * 1e-3, vmin=-vmax, vmax=vmax) if signed
                    else LogNorm(vmin=vmax * 1e-4, vmax=vmax))
            cmap = colormaps["RdBu_r" if signed else "magma"].with_extremes(bad="0.82")
            shown = np.ma.masked_equal(m, 0) if signed else np.ma.masked_less_equal(m, 0)
            im = ax.imshow(shown, aspect="auto", origin="upper", interpolation="nearest", cmap=cmap,
                           norm=norm, extent=(a, b, float(qrows[-1]), float(qrows[0])))
            s, e = (int(x) for x in npz["span_needle"])
            for x in (s, e):
                ax.axvline(x, color="lime", lw=0.8, ls="--")
                ax.axhline(x, color="lime", lw=0.8, ls="--")
            ax.set_title(f"{label}: {titles[name]}", fontsize=9)
            ax.set_xlabel("key position (pooled blocks)")
            ax.set_ylabel("query position")
            bar = fig.colorbar(im, ax=ax, shrink=0.8)
            if signed:  # few ticks: symlog labels near 0 would print over each other
                bar.set_ticks([-vmax, -vmax * 1e-2, 0.0, vmax * 1e-2, vmax])
                bar.set_ticklabels([f"{t:.0e}" if t else "0" for t in (-vmax, -vmax * 1e-2, 0.0, vmax * 1e-2, vmax)])
    where = "around the asked needle (dashed)" if part == "window" else "whole prompt"
    fig.suptitle(f"{where}: mean over the captured layers and heads; grey: keys the query cannot see", fontsize=10)
    return fig


def allocation_figure(metrics: dict[str, Any], labels: list[str], families: Optional[dict[str, str]] = None):
    """Answer-span and noise-context share by depth, one bar per model (the paper's Table 3).
    Softmax rows are masses; DIFF rows are the signed differential rows A1 - λA2 (summing to
    1 - λ, possibly negative), said so in the legend."""
    # the depths every model has (merged runs may differ); the recipe runner names the others
    depths = sorted(set.intersection(*({float(d) for d in m["by_depth"]} for m in metrics.values())))
    if not depths:
        return None
    fig, axes = _figure(11, 4.0, cols=2)
    families = families or {}
    width = 0.8 / max(1, len(labels))
    for ax, cat, title in ((axes[0, 0], "answer", "answer span"), (axes[0, 1], "noise", "noise context")):
        for k, label in enumerate(labels):
            vals = [metrics[label]["by_depth"][f"{d:g}"][cat] for d in depths]
            name = label + (" (A1 - λA2)" if families.get(label) in DIFFERENTIAL else "")
            bars = ax.bar(np.arange(len(depths)) + (k - (len(labels) - 1) / 2) * width, vals, width, label=name,
                          color=model_colour(label, k))
            if len(labels) <= 2:
                ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
        ax.set_xticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_xlabel("needle depth")
        ax.set_ylabel("share of the attention row")
        ax.set_title(title)
        ax.axhline(0, color="black", lw=0.6)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=8, frameon=False)
    fig.suptitle("attention allocation by depth (mean over layers, heads, query tokens and samples)", fontsize=10)
    return fig


def _load_arrays(path: Path):
    """A run's saved arrays, fully read; a missing or damaged file is one error naming it."""
    import zipfile

    from diffeval.errors import UsageError

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        why = "missing" if isinstance(exc, FileNotFoundError) else f"damaged ({type(exc).__name__})"
        raise UsageError(f"{path}: {why}; rerun the run's command to recompute its arrays") from None


def representatives(reps: dict[str, tuple[Path, str]]) -> tuple[dict, dict, dict]:
    """The arrays of each model's representative prompt. `reps`: model label -> (path of its
    arrays without the suffix, family) -> (arrays by label, pooled maps by label, prompt id by
    label), each array entry (npz, family)."""
    arrays, pooled = {}, {}
    for label, (stem, family) in reps.items():
        arrays[label] = (_load_arrays(stem.with_name(stem.name + ".npz")), family)
        pooled_path = stem.with_name(stem.name + "__pooled.npz")
        if pooled_path.exists():
            pooled[label] = (_load_arrays(pooled_path), family)
    return arrays, pooled, {label: stem.name.split("__", 1)[1] for label, (stem, _) in reps.items()}


# --- the attn-map probe's declared figures: (results, run folder) -> figure ------------------


def _run_representatives(results: dict, run) -> tuple[dict, dict, dict]:
    from diffeval.results import safe_name

    family = {m["label"]: m["family"] for m in results["models"]}
    # merged runs (figure recipes) keep each sample's own folder in "_run"
    reps = {r["model"]: (Path(r.get("_run", run.path)) / "arrays" / f"{safe_name(r['model'].split('/')[-1])}__{r['id']}",
                         family[r["model"]]) for r in run.samples() if r.get("representative")}
    return representatives(reps)


def profile_view(results: dict, run):
    arrays, _, prompts = _run_representatives(results, run)
    p = results["task"]["params"]
    return profile_figure(arrays, p.get("log_scale", True), p.get("query", "answer"), prompts)


def pooled_window_view(results: dict, run):
    return pooled_figure(_run_representatives(results, run)[1], "window")


def pooled_whole_view(results: dict, run):
    return pooled_figure(_run_representatives(results, run)[1], "whole")


def layer_head_view(results: dict, run):
    return layer_head_figure(results["cells"], [m["label"] for m in results["models"]])


def allocation_view(results: dict, run):
    from diffeval.stats import breakdown

    view = {label: {"by_depth": breakdown(m, "depth")} for label, m in results["metrics"].items()}
    return allocation_figure(view, [m["label"] for m in results["models"]],
                             {m["label"]: m["family"] for m in results["models"]})
