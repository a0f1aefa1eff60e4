"""`attn-map`: where attention goes at long context (the DIFF paper's Table 3). Needle prompts
(the first needle is asked), one prefill each with exact attention rows captured for the
query tokens; allocation per category / depth / layer / head (see probes/attention.py);
arrays per prompt and pooled maps of one representative prompt for the figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffeval.errors import ConfigError
from diffeval.families import DIFFERENTIAL
from diffeval.probes import retrieval as R
from diffeval.probes.attention import (
    CATEGORIES,
    QUERY_MODES,
    allocation,
    category_dict,
    normalise_rows,
    pool_layer,
    pool_positions,
    query_positions,
    row_lambdas,
    sample_spans,
)
from diffeval.probes.base import Figure, Probe, Scored, Table, TableData, metric
from diffeval.probes.config import ProbeConfig, option
from diffeval.requests import CaptureRows
from diffeval.specs import check_int, parse_index_list
from diffeval.stats import breakdown

NAME = "attn-map"
VERSION = 3  # 3: the DIFF headline is the signed differential row (2: the pipeline)
AGGREGATION = ("mean over the selected layers, heads and query tokens of each prompt, then over "
               "the samples of each depth; DIFF headline rows are the differential rows A1 - lambda A2 as "
               "the layer computes them (categories sum to 1 - lambda, and can be negative: not a mass); "
               "'normalised.' metrics divide each row by its 1 - lambda (DIFF V1: the layer's lambda; "
               "DIFF V2: the row's own per-token, per-head lambda; unbounded where lambda is near 1); "
               "'map1.' and 'map2.' are the two softmax maps (true masses)")
DIRECTION = {"answer": True, "needle": True, "needle_total": True, "noise": False}  # others: descriptive


def _indices(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class AttnMapConfig(ProbeConfig):
    PROBE = NAME
    lengths: tuple[int, ...] = R.lengths_option()
    depths: tuple[float, ...] = R.depths_option()
    samples: int = option(2, help="Prompts per (length, depth).")
    n_needles: int = option(1, flag="--needles", help="Needles in the context (the first is asked).")
    haystack: str = R.haystack_option()
    needle_kind: str = R.kind_option()
    seed: int = R.seed_option()
    layers: str = option("all", parse=_indices, help="all, or indices like 0,5,-1.")
    heads: str = option("all", parse=_indices, help="all, or indices like 0,3 (DIFF: differential heads).")
    query: str = option("answer", help="Query tokens: question, answer (the answer prefix) or last.")
    sink: int = option(4, help="Leading tokens counted as the attention sink.")
    arrays: str = option("all", help="all: an .npz of captured rows per prompt; figure: only the prompt drawn in the "
                         "figures.")
    log_scale: bool = option(True, flag="--log-scale/--linear-scale", help="Log y axis in the profile figure.")

    def __post_init__(self) -> None:
        grid = self.grid()  # validates the needle fields
        object.__setattr__(self, "lengths", grid.lengths)
        object.__setattr__(self, "depths", grid.depths)
        if self.query not in QUERY_MODES:
            raise ConfigError(f"{self.query!r}: choose {', '.join(QUERY_MODES)}", "query")
        check_int("sink", self.sink, 0)
        if self.arrays not in ("all", "figure"):
            raise ConfigError(f"{self.arrays!r}: choose all or figure", "arrays")
        for name in ("layers", "heads"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{value!r}: give 'all' or indices like 0,-1", name)

    def grid(self) -> R.NeedleGrid:
        return R.NeedleGrid(tuple(self.lengths), tuple(self.depths), self.n_needles, 1, self.samples, self.haystack,
                            self.needle_kind, self.seed)


@dataclass(frozen=True)
class _Item:
    sample: R.NeedleSample
    representative: bool  # drawn in the per-prompt figures (pooled maps are computed for it)
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    query: tuple[int, ...] = ()  # the query positions whose rows are analysed
    positions: tuple[int, ...] = ()  # every captured position (query first, then pooling rows)
    pool: dict = field(default_factory=dict)  # pooling plan (representative prompt only)

    @property
    def id(self) -> str:
        return self.sample.id


def _representative(samples) -> int:
    """Index of the sample drawn in the per-prompt figures: index 0 at the depth nearest 50%."""
    return min(range(len(samples)), key=lambda i: (samples[i].index, abs(samples[i].depth - 50.0), samples[i].length))


def _generate(cfg: AttnMapConfig, ctx) -> list[_Item]:
    tok = ctx.need_tokenizer(NAME)
    layers = tuple(parse_index_list(cfg.layers, ctx.n_layers, "layers"))
    heads = tuple(parse_index_list(cfg.heads, ctx.n_heads, "heads"))
    samples = R.generate(cfg.grid(), tok, ctx.max_positions, ctx.allow_beyond, ctx.prompt_format)
    rep = _representative(samples)
    return [_Item(s, i == rep, layers, heads, *_positions(cfg, s, i == rep, tok)) for i, s in enumerate(samples)]


def _positions(cfg: AttnMapConfig, sample, representative: bool, tok) -> tuple[tuple, tuple, dict]:
    """(query positions, every captured position, pooling plan) of one prompt."""
    q_pos = query_positions(sample, cfg.query, tok)
    pool = pool_positions(sample, sample_spans(sample, cfg.sink)) if representative else {}
    extra = sorted(set(pool.get("window", [])) | set(pool.get("whole", [])))
    return tuple(q_pos), tuple(q_pos + [p for p in extra if p not in set(q_pos)]), pool


def _requests(cfg: AttnMapConfig, item: _Item, ctx) -> list:
    return [CaptureRows(tuple(item.sample.prompts[0]), item.positions, item.layers)]


def _score(cfg: AttnMapConfig, item: _Item, outputs: list, ctx) -> Scored:
    """Allocation of the captured rows -> the sample's record, its arrays and pooled maps."""
    sample, layers, heads = item.sample, list(item.layers), list(item.heads)
    rows_by_layer = outputs[0]
    spans = sample_spans(sample, cfg.sink)
    q_pos, positions, pool = list(item.query), list(item.positions), item.pool
    labels = spans.labels()
    R = len(q_pos)
    is_diff = ctx.family in DIFFERENTIAL
    arrays: dict[str, np.ndarray] = {
        "input_ids": np.asarray(sample.prompts[0], dtype=np.int64),
        "query_positions": np.asarray(q_pos, dtype=np.int64),
        "span_answer": np.asarray(spans.answer), "span_needle": np.asarray(spans.needle),
        "span_others": np.asarray(spans.others, dtype=np.int64).reshape(-1, 2),
        "span_sink": np.asarray([0, spans.sink]), "span_query": np.asarray([spans.n_context, spans.n_tokens]),
        "layers": np.asarray(layers), "heads": np.asarray(heads),
    }
    per_lh: dict[str, list] = {}
    lambdas: dict[str, float] = {}
    names = ("diff", "map1", "map2") if is_diff else ("attn",)
    pooled: dict[str, list] = {}
    for L in layers:
        rows = rows_by_layer[L]
        arrays[f"layer{L}"] = rows["diff" if is_diff else "attn"][0][heads].numpy()[:, :R]  # (h, R, n)
        if is_diff:
            lam = row_lambdas(rows["lambda"], heads, R)  # (h, R): V1 repeats the layer's one lambda
            v1 = rows["lambda"].dim() == 0
            # record: V1's lambda; V2's mean over the selected heads and query rows (arrays keep each)
            lambdas[str(L)] = float(rows["lambda"]) if v1 else float(lam.mean())
            arrays[f"layer{L}_lambda"] = np.asarray(float(rows["lambda"]) if v1 else lam, dtype=np.float32)
        for name in names:
            full = rows[name][0][heads].numpy()  # (h, R_all, n)
            if is_diff and name != "diff":
                arrays[f"layer{L}_{name}"] = full[:, :R]
            rows_alloc = allocation(full[:, :R], labels)  # (h, R, C)
            per_lh.setdefault(name, []).append(rows_alloc.mean(axis=1))  # (h, C)
            if name == "diff":
                per_lh.setdefault("diff_norm", []).append(np.nanmean(normalise_rows(rows_alloc, lam), axis=1))
            if pool:
                pool_layer(pooled, name, full, positions, pool)
    headline = "diff" if is_diff else "attn"
    lh = {k: np.stack(v) for k, v in per_lh.items()}  # (layers, h, C)
    record: dict[str, Any] = {
        **sample.to_record(), "prediction": [], "score": None, "representative": item.representative,
        "query_positions": q_pos, "layers": layers, "heads": heads,
        "allocation": category_dict(np.nanmean(lh[headline], axis=(0, 1))),
        "per_layer_head": {k: np.round(v, 6).tolist() for k, v in lh.items()},
    }
    if is_diff:
        record["allocation_normalised"] = category_dict(np.nanmean(lh["diff_norm"], axis=(0, 1)))
        record["allocation_map1"] = category_dict(lh["map1"].mean(axis=(0, 1)))
        record["allocation_map2"] = category_dict(lh["map2"].mean(axis=(0, 1)))
        record["lambda"] = lambdas
    out: dict[str, dict[str, np.ndarray]] = {}
    if item.representative or cfg.arrays == "all":
        out[""] = arrays
    if pooled:
        meta = {"window_keys": np.asarray(pool["window_keys"]), "window_rows": np.asarray(pool["window"]),
                "span_needle": np.asarray(spans.needle), "span_answer": np.asarray(spans.answer),
                "span_others": arrays["span_others"], "n_tokens": np.asarray(spans.n_tokens)}
        if "whole" in pool:
            meta["whole_rows"] = np.asarray(pool["whole"])
        out["__pooled"] = {**{k: np.mean(v, axis=0) for k, v in pooled.items()}, **meta}
    return Scored(record, out)


def _cells(records: list[dict], labels: list[str]) -> list[dict]:
    """Per (model, length, depth, layer, head): headline category masses, mean over samples."""
    cells = []
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["length"], r["depth"]), []).append(r)
    for (model, length, depth), rows in sorted(groups.items(), key=lambda kv: (labels.index(kv[0][0]), kv[0][1], kv[0][2])):
        name = "diff" if "diff" in rows[0]["per_layer_head"] else "attn"
        arr = np.mean(np.stack([np.asarray(r["per_layer_head"][name], dtype=float) for r in rows]), axis=0)
        normalised = (np.nanmean(np.stack([np.asarray(r["per_layer_head"]["diff_norm"], dtype=float) for r in rows]),
                                 axis=0) if name == "diff" else None)
        layer_ids, head_ids = rows[0]["layers"], rows[0]["heads"]
        for li in range(arr.shape[0]):
            for hi in range(arr.shape[1]):
                cell = {"model": model, "length": length, "depth": depth, "layer": layer_ids[li], "head": head_ids[hi],
                        "n": len(rows), **{c: round(float(arr[li, hi, k]), 6) for k, c in enumerate(CATEGORIES)}}
                if normalised is not None:
                    cell["normalised"] = {c: round(float(normalised[li, hi, k]), 6) for k, c in enumerate(CATEGORIES)}
                cells.append(cell)
    return cells


VIEWS = {"allocation": "", "allocation_normalised": "normalised.", "allocation_map1": "map1.", "allocation_map2": "map2."}


def _metrics(records: list[dict], label: str) -> dict[str, Any]:
    """Flat metrics: "<view><category>" over all samples and "...@depth=<d>" per depth; views
    are the headline rows (DIFF: signed differential rows), and for DIFF "normalised.",
    "map1.", "map2."; "lambda@layer=<L>"."""
    mine = [r for r in records if r["model"] == label]
    out: dict[str, Any] = {}
    for key, prefix in VIEWS.items():
        if key not in mine[0]:
            continue
        for c in mine[0][key]:
            out[f"{prefix}{c}"] = metric(np.mean([r[key][c] for r in mine]), len(mine), DIRECTION.get(c))
        for depth in sorted({r["depth"] for r in mine}):
            rows = [r[key] for r in mine if r["depth"] == depth]
            for c in rows[0]:
                out[f"{prefix}{c}@depth={depth:g}"] = metric(np.mean([x[c] for x in rows]), len(rows), DIRECTION.get(c))
    for layer, lam in mine[0].get("lambda", {}).items():
        out[f"lambda@layer={layer}"] = metric(lam, 1, None)
    return out


def _aggregate(cfg: AttnMapConfig, records: list[dict], models: list[dict], extra: dict):
    labels = [m["label"] for m in models]
    return _cells(records, labels), {label: _metrics(records, label) for label in labels}


def allocation_table(results: dict) -> TableData:
    """The DIFF paper's Table 3 layout: answer-span and noise-context mass by depth per model."""
    views = {m["label"]: breakdown(results["metrics"][m["label"]], "depth") for m in results["models"]}
    depths = sorted({float(d) for v in views.values() for d in v})
    p = results["task"]["params"]
    rows = []
    for m in results["models"]:
        by = views[m["label"]]
        for cat, name in (("answer", "answer"), ("noise", "noise context")):
            rows.append([f"{m['label']} ({m['family']})" if cat == "answer" else "", name,
                         *[f"{by[f'{d:g}'][cat]:.3f}" for d in depths]])
    return TableData(f"attention allocation by needle depth ({p['needle_kind']} needles, {p['n_needles']} in the "
                     f"context, haystack {p['haystack']}, {p['samples']} samples per depth)\n(mean over layers, "
                     "heads, query tokens; DIFF: signed differential rows A1 - λA2, summing to 1 - λ)",
                     ["model", "span", *[f"{d:g}%" for d in depths]], rows)


PROBE = Probe(
    name=NAME, version=VERSION, Config=AttnMapConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=_aggregate, cell_keys=("length", "depth", "layer", "head"),
    grid_params=("lengths", "depths", "samples", "arrays", "log_scale"),
    data=lambda cfg: R.haystack_data(cfg.haystack), uses=("prompt_format",),
    views=(Figure("attn_profile", "attention:profile_view", stem="attn_profile"),
           Figure("attn_layer_head", "attention:layer_head_view", stem="attn_layer_head"),
           Figure("attn_pooled_window", "attention:pooled_window_view", stem="attn_pooled_window"),
           Figure("attn_pooled_whole", "attention:pooled_whole_view", stem="attn_pooled_whole"),
           Figure("attn_allocation", "attention:allocation_view", stem="attn_allocation"),
           Table("attn_table", allocation_table)),
    description="attention allocation on the answer span vs noise, per depth / layer / head",
    summary="Where attention goes: mass on the answer, needles, sink, question and noise, per depth,\n"
            "layer and head (DIFF: differential, map 1, map 2); arrays and figures.",
    examples=("diffeval attn-map --depths 0,50,100 --samples 2",
              "diffeval attn-map --ckpt path/to/model --len 8k --layers 0,-1 --heads all"),
    method=f"categories {', '.join(CATEGORIES)} (needle_total = answer + needle); {AGGREGATION}")
