"""The attn-map figure that puts attention variants side by side (data from
probes/variants.figure_data): attention sinks by layer, head-output RMS by position, the
distribution of DIFF's lambda or of output gates by layer, and massive residual-stream
activations by layer; one colour per model."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffeval.plotting.style import model_colour


def _nan(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _sinks(ax, models: dict, threshold: float) -> None:
    for k, (label, d) in enumerate(models.items()):
        c = model_colour(label, k)
        ax.plot(d["layers"], _nan(d["sink_rate"]), color=c, marker="o", ms=3.5)
        ax.plot(d["layers"], _nan(d["first_token"]), color=c, ls=":", lw=1.2)
        if any(v is not None for v in d.get("learned_sink", [])):
            ax.plot(d["layers"], _nan(d["learned_sink"]), color=c, ls="-.", lw=1.2)
    ax.axhline(threshold, color="0.5", lw=0.7, ls="--")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("share")
    ax.set_title(f"attention sink: heads with first-token mass > {threshold:g}")
    learned = any(v is not None for d in models.values() for v in d.get("learned_sink", []))
    _styles(ax, [("-", "o", "sink rate"), (":", None, "first-token mass")]
            + ([("-.", None, "learned-sink mass")] if learned else []) + [("--", None, "threshold")])


def _styles(ax, entries) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.5" if ls == "--" else "0.2", ls=ls, marker=mk, ms=3.5) for ls, mk, _ in entries]
    ax.legend(handles, [name for *_, name in entries], loc="best", fontsize=7, frameon=False)


def _plain_log(ax) -> None:
    """Log y with plain numbers (0.4, 0.5, ...) rather than 4 x 10^-1; minor ticks labelled only
    when the data span less than a decade (else their labels would collide)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt if hi < 10 * lo else NullFormatter())


def _rms(ax, models: dict) -> None:
    for k, (label, d) in enumerate(models.items()):
        pos, rms = np.asarray(d["positions"]), _nan(d["head_rms"])
        c = model_colour(label, k)
        ax.plot(pos[1:], rms[1:], color=c, marker=".", ms=4)
        ax.plot(pos[:1], rms[:1], color=c, marker="x", ms=6, ls="none")
    _plain_log(ax)
    ax.set_xlabel("position (bin start; x: the first token)")
    ax.set_ylabel("RMS of head output")
    ax.set_title("head output before the output projection, by position")


def _dist(ax, models: dict) -> None:
    shown = 0
    for k, (label, d) in enumerate(models.items()):
        if not d["dist"]:
            continue
        c = model_colour(label, k)
        ax.plot(d["layers"], _nan(d["dist_q"]["q50"]), color=c, marker="o", ms=3.5)
        ax.fill_between(d["layers"], _nan(d["dist_q"]["q05"]), _nan(d["dist_q"]["q95"]), color=c, alpha=0.2, lw=0)
        shown += 1
    if not shown:
        ax.text(0.5, 0.5, "no model has a λ or a gate", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel("layer")
    ax.set_ylabel("value")
    ax.set_title("λ (DIFF) or gate over the prompt's tokens: median, 5-95%")


def _massive(ax, models: dict) -> None:
    for k, (label, d) in enumerate(models.items()):
        c = model_colour(label, k)
        ax.plot(d["layers"], _nan(d["massive_top1"]), color=c, marker="o", ms=3.5)
        ax.plot(d["layers"], _nan(d["massive_median"]), color=c, ls=":", lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("|hidden state|")
    ax.set_title("residual stream after each block")
    _styles(ax, [("-", "o", "largest |h|"), (":", None, "median |h|")])


def variants_figure(data: dict[str, Any]):
    """Four panels, one line (colour) per model; `data` from probes.variants.figure_data."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    models = data["models"]
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    _sinks(axes[0, 0], models, data["threshold"])
    _rms(axes[0, 1], models)
    _dist(axes[1, 0], models)
    _massive(axes[1, 1], models)
    for ax in (axes[0, 0], axes[1, 0], axes[1, 1]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=model_colour(label, k), lw=2) for k, label in enumerate(models)]
    names = [f"{label} ({d['family']})" for label, d in models.items()]
    fig.legend(handles, names, loc="outside lower center", ncols=min(5, len(names)), frameon=False)
    fig.suptitle("attention variants: sinks, head outputs, λ / gates and massive activations "
                 "(DIFF: differential rows A1 - λA2)", fontsize=10)
    return fig
