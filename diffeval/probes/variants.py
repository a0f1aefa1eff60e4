"""Metrics that tell attention variants apart, measured by `attn-map` on every family from one
prefill per prompt (the captured rows and `models.inspect.LayerStats`):

    first_token   attention mass of the query rows on position 0 (BOS where the prompt has one),
                  mean over the query rows of a prompt, per layer and head. DIFF: the headline is
                  the signed differential row A1 - lambda A2 (what the layer mixes values with);
                  `map1.` and `map2.` are each softmax map alone.
    sink_rate     Gu et al. 2024 ("When Attention Sink Emerges in Language Models", ICLR 2025),
                  Sink_1^eps: the share of (layer, head) pairs whose mean attention on the first
                  token exceeds eps (their default eps = 0.3), per prompt, then the mean over
                  prompts; `sink_rate@layer=L` the share of that layer's heads. Gu et al. average
                  over every query of short sequences; here the rows are the captured query
                  tokens (`--query`) at the end of a long prompt. DIFF: the differential row,
                  and `map1.sink_rate` / `map2.sink_rate` for each map.
    learned_sink  (family `sinks`) the mass the learned sink logits take from the query rows,
                  1 - the row's sum over the real keys, per layer and head: where those heads
                  put attention "nowhere" instead of on the first token.
    head_rms      RMS of each head's output just before the output projection (DIFF V1 after its
                  per-head norm and (1 - lambda_init) scale; DIFF V2 after the subtraction; gated
                  after the gate) over the prompt's tokens and the head's features;
                  `head_rms@position=P` per position bin (P its first position; bin 0 is the
                  first token alone), pooled over the selected layers and heads;
                  `head_rms.first_token` that first bin.
    lambda. gate. the distribution of DIFF's lambda (V1: one value per layer; V2: per token and
                  head) and of output gates (per token, head and feature) over the prompt's
                  tokens: mean, min, max, q05 ... q95 (quantiles from a 1e-3-wide histogram on
                  [0, 1]; min, max and mean exact), pooled over the selected layers and heads, and
                  `@layer=L`.
    massive.      Sun et al. 2024 ("Massive Activations in Large Language Models", COLM): per layer,
                  the largest |h| of the residual stream after the block (`massive.top1`, with its
                  position and feature), the median |h| and their ratio (massive activations
                  are ~100 and more, thousands of times the median); headline: the max over layers.

Every metric is descriptive (higher_is_better null): the mean over the prompts of each
prompt's value."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from diffeval.probes.base import TableData, metric

SINK_THRESHOLD = 0.3  # Gu et al. 2024, eps of Sink_k^eps
TOP_K = 10  # largest residual-stream activations kept per layer
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DISTRIBUTIONS = ("lambda", "gate")
HIST_OUT = 100  # histogram bins per (layer, head) written to the arrays

# Every metric the module writes, declared once: name -> meaning (breakdowns add @layer= / @position=).
METRICS = {
    "first_token": "attention mass of the query rows on position 0 (DIFF: differential row)",
    "sink_rate": "share of (layer, head) with first_token above the threshold (Gu et al. 2024)",
    "learned_sink": "mass of the query rows on the learned sink logits (family sinks): 1 - the row's sum",
    "head_rms": "RMS of the heads' outputs before the output projection",
    "head_rms.first_token": "head_rms at position 0",
    **{f"{d}.{s}": f"{d} over the prompt's tokens: {s}" for d in DISTRIBUTIONS
       for s in ("mean", "min", "max", *(f"q{round(q * 100):02d}" for q in QUANTILES))},
    "massive.top1": "largest |residual stream| (max over layers)",
    "massive.median": "median |residual stream| of the layer with massive.top1",
    "massive.ratio": "largest top1 / median over layers",
}
METHOD = ("variant metrics: first_token = mass of the query rows on position 0 (DIFF: differential row; map1./map2. "
          "each map), sink_rate = share of (layer, head) with first_token above sink_threshold (Gu et al. 2024), per "
          "prompt; head_rms = RMS of the heads' outputs before the output projection over the prompt's tokens "
          "(@position= by position bin); lambda./gate. = distribution over the prompt's tokens; massive. = largest "
          "|residual stream| per layer and its ratio to the median (Sun et al. 2024); each the mean over prompts")

def position_bin_width(max_length: int, n_bins: int) -> int:
    """Bin width so that positions 1 .. max_length - 1 fill `n_bins` bins (position 0 has its own)."""
    return max(1, math.ceil((max_length - 1) / n_bins))


# --- one prompt -----------------------------------------------------------------------------


def _views(rows: dict) -> tuple[str, ...]:
    return ("diff", "map1", "map2") if "diff" in rows else ("attn",)


def first_token(rows: dict, layers: list[int], heads: list[int], n_rows: int) -> dict[str, np.ndarray]:
    """{view: (layers, heads) mean mass of the first n_rows captured rows on key 0}."""
    return {v: np.stack([rows[L][v][0][heads, :n_rows, 0].double().mean(-1).numpy() for L in layers])
            for v in _views(rows[layers[0]])}


def learned_sink(rows: dict, layers: list[int], heads: list[int], n_rows: int) -> np.ndarray:
    """(layers, heads) mean over the first n_rows captured rows of 1 - the row's sum (family sinks)."""
    return np.stack([1 - rows[L]["attn"][0][heads, :n_rows].double().sum(-1).mean(-1).numpy() for L in layers])


def head_rms(stats, layers: list[int], heads: list[int]) -> dict[str, Any]:
    """RMS by (layer, head), by (layer, position bin) over the heads, and the bins' tokens."""
    n_bins = max(stats.sumsq[L].shape[1] for L in layers)
    sumsq = np.stack([np.pad(stats.sumsq[L][heads].numpy(), ((0, 0), (0, n_bins - stats.sumsq[L].shape[1])))
                      for L in layers])  # (L, h, bins)
    tokens = np.pad(stats.tokens[layers[0]].numpy(), (0, n_bins - stats.tokens[layers[0]].shape[0]))  # (bins,)
    width = np.asarray([stats.width[L] for L in layers], dtype=np.float64)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        by_bin = np.sqrt(sumsq / (tokens * width))  # (L, h, bins); NaN where a bin has no token
        by_head = np.sqrt(sumsq.sum(-1) / (tokens.sum() * width[..., 0]))
    starts = [0] + [1 + b * stats.bin_width for b in range(n_bins - 1)]
    return {"by_bin": by_bin, "by_head": by_head, "tokens": tokens, "starts": starts}


def _distribution(stats, name: str, layer: int, heads: list[int]) -> Optional[dict[str, np.ndarray]]:
    """Accumulators (hist (h, bins), count, sum, min, max per head) of one layer's values; a
    layer with one value (DIFF V1's lambda) as that value on every token of every head."""
    if (name, layer) in stats.scalars:
        v, n = stats.scalars[(name, layer)], int(stats.tokens[layer].sum())
        hist = np.zeros((len(heads), stats.HIST_BINS), dtype=np.int64)
        hist[:, min(max(int(v * stats.HIST_BINS), 0), stats.HIST_BINS - 1)] = n
        full = np.full(len(heads), v)
        return {"hist": hist, "count": np.full(len(heads), n), "sum": full * n, "min": full, "max": full}
    acc = stats.dists.get((name, layer))
    return None if acc is None else {k: t[heads].numpy() for k, t in acc.items()}


def quantiles(hist: np.ndarray, lo: float, hi: float, qs=QUANTILES) -> list[float]:
    """Quantiles of values counted in equal bins on [0, 1], linear within a bin, clipped to the
    exact [lo, hi]."""
    cum = np.cumsum(hist)
    n, width = int(cum[-1]), 1.0 / len(hist)
    out = []
    for q in qs:
        rank = q * (n - 1)
        b = int(np.searchsorted(cum, rank, side="right"))
        before = cum[b - 1] if b else 0
        out.append(float(np.clip((b + (rank - before + 0.5) / max(1, hist[b])) * width, lo, hi)))
    return out


def _summary(acc: dict[str, np.ndarray]) -> dict[str, float]:
    """One pooled distribution: mean, min, max and QUANTILES."""
    hist = acc["hist"].reshape(-1, acc["hist"].shape[-1]).sum(0)
    lo, hi = float(acc["min"].min()), float(acc["max"].max())
    out = {"mean": float(acc["sum"].sum() / acc["count"].sum()), "min": lo, "max": hi}
    out.update({f"q{round(q * 100):02d}": v for q, v in zip(QUANTILES, quantiles(hist, lo, hi))})
    return out


def _exact(values: list[float]) -> dict[str, float]:
    """The summary of values of equal weight (DIFF V1: one lambda per layer, each on as many tokens)."""
    v = np.asarray(values, dtype=np.float64)
    out = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    out.update({f"q{round(q * 100):02d}": float(x) for q, x in zip(QUANTILES, np.quantile(v, QUANTILES))})
    return out


def distributions(stats, layers: list[int], heads: list[int]) -> tuple[dict, dict[str, np.ndarray]]:
    """({name: {"all": summary, "<layer>": summary}}, arrays {name}_hist (L, h, HIST_OUT)) for
    the lambdas and gates the layers reported."""
    record, arrays = {}, {}
    for name in DISTRIBUTIONS:
        accs = [_distribution(stats, name, L, heads) for L in layers]
        if any(a is None for a in accs):
            continue
        pooled = {k: np.stack([a[k] for a in accs]) for k in accs[0]}
        scalars = [stats.scalars.get((name, L)) for L in layers]
        overall = _summary(pooled) if None in scalars else _exact(scalars)  # V1: values outside [0, 1] too
        record[name] = {"all": overall, **{str(L): _summary(a) for L, a in zip(layers, accs)}}
        h = pooled["hist"]  # (L, h, HIST_BINS)
        arrays[f"{name}_hist"] = h.reshape(*h.shape[:2], HIST_OUT, -1).sum(-1).astype(np.int64)
    return record, arrays


def massive(stats, layers: list[int]) -> dict[str, list]:
    """Per layer: the top-k |h| with their positions and features, and the median |h|."""
    return {"top": [stats.top[L][0].tolist() for L in layers],
            "position": [stats.top[L][1].tolist() for L in layers],
            "feature": [stats.top[L][2].tolist() for L in layers],
            "median": [stats.magnitudes.median(str(L)) for L in layers]}


def sample_variants(rows: dict, stats, layers: list[int], heads: list[int], n_rows: int,
                    sinks: bool = False) -> tuple[dict, dict]:
    """One prompt's record fields and arrays (see the module doc); `sinks`: the model has
    learned sink logits (its rows sum to less than 1)."""
    ft = first_token(rows, layers, heads, n_rows)
    rms = head_rms(stats, layers, heads)
    dist, dist_arrays = distributions(stats, layers, heads)
    mas = massive(stats, layers)
    record = {
        "first_token": {v: np.round(a, 6).tolist() for v, a in ft.items()},
        "head_rms": {"by_head": np.round(rms["by_head"], 6).tolist(),
                     "by_bin": [[_round(x) for x in row] for row in np.sqrt(np.nanmean(rms["by_bin"] ** 2, axis=1))],
                     "tokens": rms["tokens"].tolist(), "starts": rms["starts"]},
        "distributions": {n: {k: {s: round(v, 6) for s, v in d.items()} for k, d in by.items()}
                          for n, by in dist.items()},
        "massive": {**mas, "top": np.round(mas["top"], 6).tolist(), "median": [round(m, 9) for m in mas["median"]]},
    }
    arrays = {**{f"first_token_{v}": a.astype(np.float32) for v, a in ft.items()},
              "head_rms": rms["by_bin"].astype(np.float32), "head_rms_tokens": rms["tokens"],
              "head_rms_starts": np.asarray(rms["starts"]), **dist_arrays,
              "massive_top": np.asarray(mas["top"], dtype=np.float32), "massive_position": np.asarray(mas["position"]),
              "massive_feature": np.asarray(mas["feature"]), "massive_median": np.asarray(mas["median"])}
    if sinks:
        ls = learned_sink(rows, layers, heads, n_rows)
        record["learned_sink"] = np.round(ls, 6).tolist()
        arrays["learned_sink"] = ls.astype(np.float32)
    return record, arrays


def _round(x: float) -> Optional[float]:
    return None if not np.isfinite(x) else round(float(x), 6)


# --- over the prompts of one model ------------------------------------------------------------


def _m(name: str, values, **extra) -> dict:
    """A declared descriptive metric: the mean over prompts (NaN-free) of `values`."""
    assert name.partition("@")[0].removeprefix("map1.").removeprefix("map2.") in METRICS, name
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return metric(float(np.mean(vals)) if vals else None, len(vals), None, **extra)


def _sink_metrics(mine: list[dict], layers: list[int], threshold: float) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for view in mine[0]["first_token"]:
        prefix = "" if view in ("attn", "diff") else f"{view}."
        ft = [np.asarray(r["first_token"][view], dtype=float) for r in mine]  # each (L, h)
        out[f"{prefix}first_token"] = _m("first_token", [a.mean() for a in ft])
        out[f"{prefix}sink_rate"] = _m("sink_rate", [(a > threshold).mean() for a in ft], threshold=threshold)
        for i, L in enumerate(layers):
            out[f"{prefix}first_token@layer={L}"] = _m("first_token", [a[i].mean() for a in ft])
            out[f"{prefix}sink_rate@layer={L}"] = _m("sink_rate", [(a[i] > threshold).mean() for a in ft],
                                                     threshold=threshold)
    if "learned_sink" in mine[0]:
        ls = [np.asarray(r["learned_sink"], dtype=float) for r in mine]  # each (L, h)
        out["learned_sink"] = _m("learned_sink", [a.mean() for a in ls])
        for i, L in enumerate(layers):
            out[f"learned_sink@layer={L}"] = _m("learned_sink", [a[i].mean() for a in ls])
    return out


def _rms_metrics(mine: list[dict], layers: list[int]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    by_bin = [np.asarray(r["head_rms"]["by_bin"], dtype=float) for r in mine]  # (L, bins), NaN: no token
    tokens = [np.asarray(r["head_rms"]["tokens"], dtype=float) for r in mine]
    out["head_rms"] = _m("head_rms", [np.sqrt(np.nansum(b ** 2 * t) / (t.sum() * len(b)))
                                      for b, t in zip(by_bin, tokens)])
    out["head_rms.first_token"] = _m("head_rms.first_token", [np.sqrt(np.mean(b[:, 0] ** 2)) for b in by_bin])
    for i, L in enumerate(layers):
        out[f"head_rms@layer={L}"] = _m("head_rms", [np.sqrt(np.nansum(b[i] ** 2 * t) / t.sum())
                                                     for b, t in zip(by_bin, tokens)])
    starts = max((r["head_rms"]["starts"] for r in mine), key=len)
    for j, p in enumerate(starts):
        out[f"head_rms@position={p}"] = _m("head_rms", [np.sqrt(np.mean(b[:, j] ** 2)) if j < b.shape[1] else None
                                                        for b in by_bin])
    return out


def _dist_metrics(mine: list[dict], layers: list[int]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, by in mine[0]["distributions"].items():
        for stat in by["all"]:
            out[f"{name}.{stat}"] = _m(f"{name}.{stat}", [r["distributions"][name]["all"][stat] for r in mine])
        for L in layers:
            for stat in ("mean", "q05", "q50", "q95"):
                out[f"{name}.{stat}@layer={L}"] = _m(f"{name}.{stat}",
                                                     [r["distributions"][name][str(L)][stat] for r in mine])
    return out


def _massive_metrics(mine: list[dict], layers: list[int]) -> dict[str, dict]:
    top1 = np.asarray([[t[0] for t in r["massive"]["top"]] for r in mine])  # (samples, L)
    median = np.asarray([r["massive"]["median"] for r in mine])
    with np.errstate(divide="ignore"):
        ratio = top1 / median
    s, li = np.unravel_index(int(np.argmax(top1)), top1.shape)  # where the largest one is
    at = {"layer": layers[li], "position": mine[s]["massive"]["position"][li][0],
          "feature": mine[s]["massive"]["feature"][li][0]}
    out = {"massive.top1": _m("massive.top1", top1.max(1), **at),
           "massive.median": _m("massive.median", median[np.arange(len(mine)), top1.argmax(1)]),
           "massive.ratio": _m("massive.ratio", ratio.max(1))}
    for i, L in enumerate(layers):
        for key, arr in (("top1", top1), ("median", median), ("ratio", ratio)):
            out[f"massive.{key}@layer={L}"] = _m(f"massive.{key}", arr[:, i])
    return out


def variant_metrics(mine: list[dict], threshold: float = SINK_THRESHOLD) -> dict[str, dict]:
    """One model's variant metrics over its prompts' records (see the module doc)."""
    layers = mine[0]["layers"]
    return {**_sink_metrics(mine, layers, threshold), **_rms_metrics(mine, layers), **_dist_metrics(mine, layers),
            **_massive_metrics(mine, layers)}


def extend_cells(cells: list[dict], records: list[dict]) -> None:
    """Add `first_token` (headline view) and `head_rms` per (layer, head) to the attn-map cells
    (model, length, depth, layer, head), means over the cell's prompts."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["length"], r["depth"]), []).append(r)
    for c in cells:
        mine = groups[(c["model"], c["length"], c["depth"])]
        li, hi = mine[0]["layers"].index(c["layer"]), mine[0]["heads"].index(c["head"])
        view = "diff" if "diff" in mine[0]["first_token"] else "attn"
        c["first_token"] = round(float(np.mean([r["first_token"][view][li][hi] for r in mine])), 6)
        c["head_rms"] = round(float(np.mean([r["head_rms"]["by_head"][li][hi] for r in mine])), 6)


# --- the table and the figure -----------------------------------------------------------------


def _fmt(m: Optional[dict], spec: str = ".3f") -> str:
    return "-" if m is None or m["value"] is None else format(m["value"], spec)


def variants_table(results: dict) -> TableData:
    """One row per model: first-token mass and sink rate, head-output RMS, lambda / gate
    distribution and the largest residual-stream activation."""
    threshold = results["task"]["params"].get("sink_threshold", SINK_THRESHOLD)
    rows = []
    for m in results["models"]:
        got = results["metrics"][m["label"]]
        dist = next((d for d in DISTRIBUTIONS if f"{d}.q50" in got), None)
        spread = (f"{dist} {_fmt(got[f'{dist}.q50'])} ({_fmt(got[f'{dist}.q05'])}, {_fmt(got[f'{dist}.q95'])})"
                  if dist else "-")
        top = got.get("massive.top1")
        where = f" (L{top['layer']}, t{top['position']}, f{top['feature']})" if top and "layer" in top else ""
        rows.append([f"{m['label']} ({m['family']})", _fmt(got.get("first_token")), _fmt(got.get("sink_rate"), ".2f"),
                     _fmt(got.get("learned_sink")),
                     _fmt(got.get("head_rms"), ".4g"), _fmt(got.get("head_rms.first_token"), ".4g"), spread,
                     _fmt(top, ".4g") + where, _fmt(got.get("massive.ratio"), ".1f")])
    return TableData(f"attention variants (DIFF: differential rows A1 - λA2; sink: first-token mass > {threshold:g}, "
                     "Gu et al. 2024; massive activations: Sun et al. 2024)",
                     ["model", "first token", "sink rate", "learned sink", "head RMS", "RMS at t=0",
                      "λ / gate q50 (q05, q95)", "max |h| (layer, pos, feat)", "max/median"], rows)


def figure_data(results: dict) -> dict[str, Any]:
    """What the variants figure draws, per model label: sink rate and massive activation by
    layer, head RMS by position, lambda / gate quantiles by layer; and the threshold."""
    from diffeval.stats import breakdown

    out: dict[str, Any] = {"threshold": results["task"]["params"].get("sink_threshold", SINK_THRESHOLD),
                           "models": {}}
    for m in results["models"]:
        got = results["metrics"][m["label"]]
        layer, pos = breakdown(got, "layer"), breakdown(got, "position")
        mas = breakdown(got, "layer", "massive.")
        dist = next((d for d in DISTRIBUTIONS if f"{d}.q50" in got), None)
        spread = breakdown(got, "layer", f"{dist}.") if dist else {}
        key = sorted(layer, key=int)
        out["models"][m["label"]] = {
            "family": m["family"], "layers": [int(L) for L in key],
            "sink_rate": [layer[L].get("sink_rate") for L in key],
            "first_token": [layer[L].get("first_token") for L in key],
            "learned_sink": [layer[L].get("learned_sink") for L in key],
            "positions": sorted(int(p) for p in pos), "head_rms": [pos[p]["head_rms"] for p in sorted(pos, key=int)],
            "massive_top1": [mas[L]["top1"] for L in key], "massive_median": [mas[L]["median"] for L in key],
            "dist": dist, "dist_q": {q: [spread[L][q] for L in key] for q in ("q05", "q50", "q95")} if dist else {},
        }
    return out


def variants_view(results: dict, run):
    """The declared figure: families side by side on the variant metrics (None for runs made
    before they existed)."""
    if not any("sink_rate" in m for m in results["metrics"].values()):
        return None
    from diffeval.plotting.variants import variants_figure

    return variants_figure(figure_data(results))
