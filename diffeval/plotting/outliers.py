"""Outlier figures: the quantization curve (metric vs attention-logit bits, one line per model,
the DIFF paper's Figure 8 form) and the top-1 |activation| per layer. Inputs are results.json
data: quant cells {"model", "kind": "quant", "bits", "value", "n", ("ci95")} and
{model: {activation: [top-1 per layer]}}."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from diffeval.errors import UsageError
from diffeval.plotting import save_figure
from diffeval.plotting.style import model_colour

METRIC_LABELS = {"nll": "Mean token NLL (nats, lower is better)",
                 "needle": "Needle accuracy (higher is better)"}
LAYER_PANELS = (("attention_logits", "Attention logits (max |q.k|/sqrt(d))"),
                ("hidden_states", "Hidden states (max |h|)"))


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")


def _style(i: int, label: str = "") -> dict:
    """Colour, marker and dash per model, so lines that coincide stay distinguishable."""
    return {"color": model_colour(label, i), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def quant_series(cells: Sequence[Mapping], model: str) -> tuple[list[int], np.ndarray, Optional[np.ndarray]]:
    """One model's curve -> (bits, descending; values (K,); ci95 (K, 2) or None)."""
    rows = sorted((c for c in cells if c.get("kind") == "quant" and c.get("model") == model),
                  key=lambda c: -int(c["bits"]))
    if not rows:
        raise UsageError(f"quantization curve: no quant cells for model {model!r}")
    bits = [int(c["bits"]) for c in rows]
    if len(set(bits)) != len(bits):
        raise UsageError(f"quantization curve: model {model!r} has two cells for one bit width")
    values = np.array([float(c["value"]) for c in rows])
    ci = np.array([c["ci95"] for c in rows], dtype=float) if all("ci95" in c for c in rows) else None
    return bits, values, ci


def quant_figure(cells: Sequence[Mapping], models: Sequence[str], metric: str) -> Figure:
    """Metric vs bits (16 on the left, evenly spaced as in the paper), one line per model."""
    if not models:
        raise UsageError("quantization curve: no models to draw")
    series = [quant_series(cells, m) for m in models]
    all_bits = sorted({b for bits, _, _ in series for b in bits}, reverse=True)
    x_of = {b: i for i, b in enumerate(all_bits)}
    fig = Figure(figsize=(max(3.8, 1.0 * len(all_bits) + 1.6), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # NLL effects of a few hundredths of a nat vanish on an absolute axis: draw the change
    # relative to each model's 16-bit (unquantized) NLL when there is one.
    relative = metric == "nll" and all(16 in bits for bits, _, _ in series)
    for i, (model, (bits, values, ci)) in enumerate(zip(models, series)):
        x = np.array([x_of[b] for b in bits])
        if relative:  # the paired change over the same sequences, and its interval when recorded
            rows = {int(c["bits"]): c for c in cells if c.get("kind") == "quant" and c.get("model") == model}
            values = np.array([rows[b].get("delta", values[k] - values[bits.index(16)]) for k, b in enumerate(bits)])
            have = all("delta_ci95" in rows[b] for b in bits)
            ci = np.array([rows[b]["delta_ci95"] for b in bits]) if have else None
        ax.plot(x, values, label=model, linewidth=1.8, markersize=6 - min(i, 3), **_style(i, model))
        if ci is not None:
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=_style(i, model)["color"], alpha=0.12, linewidth=0)
    ax.set_xticks(range(len(all_bits)), [f"{b}" if b != 16 else "16\n(float)" for b in all_bits])
    ax.set_xlabel("Attention-logit bits (absmax, per query row)")
    ax.set_ylabel("NLL change vs 16-bit (nats, lower is better;\nband: 95% paired over sequences)" if relative
                  else METRIC_LABELS.get(metric, metric))
    if relative:
        ax.axhline(0, color="0.3", lw=0.8)
    if metric == "needle":
        ax.set_ylim(-0.03, 1.03)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Accuracy under attention-logit quantization" if metric == "needle"
                 else "NLL under attention-logit quantization", fontsize=10)
    return fig


def layer_figure(per_layer: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Two panels (attention logits, hidden states): top-1 |x| per layer, log scale, one line
    per model. The x axis is the layer index when all models have the same depth, else the
    relative depth layer / (n_layers - 1), so a deep single-head stack and a shallow model
    share it."""
    if not per_layer:
        raise UsageError("outliers by layer: no models to draw")
    depths = {len(rows[name]) for rows in per_layer.values() for name, _ in LAYER_PANELS if name in rows}
    relative = len(depths) > 1
    fig = Figure(figsize=(9.4, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(LAYER_PANELS))
    for ax, (name, title) in zip(axes, LAYER_PANELS):
        drawn = []
        for i, (model, rows) in enumerate(per_layer.items()):
            if name not in rows:
                continue
            # DIFF: each softmax map's logits on its own line (the pooled row is their max)
            maps = [m for m in (f"{name}_map1", f"{name}_map2") if m in rows]
            series = [(f"{model}, map {k + 1}", rows[m], ("-", "--")[k]) for k, m in enumerate(maps)] if maps \
                else [(model, rows[name], None)]
            for j, (legend, values, dash) in enumerate(series):
                y = np.asarray(values, dtype=float)  # (n_layers,)
                x = np.arange(len(y)) / max(1, len(y) - 1) if relative else np.arange(len(y))
                style = _style(i, model)
                if dash is not None:
                    style["linestyle"] = dash
                    style["marker"] = ("o", "s")[j]
                if len(y) > 40:  # deep stacks: lines only
                    style["marker"] = None
                ax.plot(x, y, label=legend, linewidth=1.5, markersize=3.5, **style)
                drawn.append(y[y > 0])
        ax.set_yscale("log")
        _log_labels(ax, np.concatenate(drawn) if drawn else np.ones(1))
        ax.set_xlabel("Relative depth (layer / last layer)" if relative else "Layer")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        if not relative:
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("Top-1 |activation|")
    handles, labels = [], []
    for ax in axes:  # map lines appear in the first panel only; hidden states name every model
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=8)
    return fig


def _log_labels(ax, values: np.ndarray) -> None:
    """Plain numbers on a log axis; minor ticks labelled only when the data spans less than a
    decade (else they crowd)."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    narrow = values.size and values.max() / max(values.min(), 1e-30) < 10
    ax.yaxis.set_minor_formatter(plain if narrow else NullFormatter())
    ax.tick_params(axis="y", which="both", labelsize=8)


def quant_curve(cells: Sequence[Mapping], models: Sequence[str], metric: str, out_stem: str | Path) -> list[Path]:
    """Draw the quantization curve; write `out_stem`.png and .pdf -> [png, pdf]."""
    return save_figure(quant_figure(cells, models, metric), Path(out_stem))


def layer_outlier_figure(per_layer: Mapping[str, Mapping[str, Sequence[float]]], out_stem: str | Path) -> list[Path]:
    """Draw top-1 |activation| per layer; write `out_stem`.png and .pdf -> [png, pdf]."""
    return save_figure(layer_figure(per_layer), Path(out_stem))


def quant_view(results: dict, run) -> Optional[Figure]:
    """The metric vs bit width (None without quantized runs)."""
    if not any(c["kind"] == "quant" for c in results["cells"]):
        return None
    return quant_figure(results["cells"], [m["label"] for m in results["models"]], results["task"]["params"]["metric"])


def by_layer_view(results: dict, run) -> Figure:
    per_layer: dict[str, dict[str, list[float]]] = {}
    for c in results["cells"]:
        if c["kind"] == "layer":
            per_layer.setdefault(c["model"], {}).setdefault(c["activation"], []).append(c["top1"])
    return layer_figure({m["label"]: per_layer.get(m["label"], {}) for m in results["models"]})
