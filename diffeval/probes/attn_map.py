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
from diffeval.probes import variants as V
from diffeval.probes.attention import (
    CATEGORIES,
    QUERY_MODES,
    allocation,
    allocation_cells,
    allocation_metrics,
    category_dict,
    normalise_rows,
    pool_layer,
    pool_positions,
    pooled_arrays,
    query_positions,
    row_lambdas,
    sample_spans,
)
from diffeval.probes.base import Figure, Probe, Scored, Table, TableData
from diffeval.probes.config import ProbeConfig, option
from diffeval.requests import CaptureRows
from diffeval.specs import check_int, parse_index_list
from diffeval.stats import breakdown

NAME = "attn-map"
VERSION = 5  # 5: variant metrics (probes/variants.py); 4: BOS by the tokenizer's rule, chat prompts as chat templates
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
    sink_threshold: float = option(V.SINK_THRESHOLD, help="Sink rate: share of heads with first-token mass above this.")
    position_bins: int = option(16, help="Position bins of the head-output RMS (plus the first token's own).")
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
        check_int("position_bins", self.position_bins, 1)
        if not 0 <= self.sink_threshold < 1:
            raise ConfigError(f"{self.sink_threshold!r} must lie in [0, 1)", "sink_threshold")
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
    width = V.position_bin_width(max(cfg.lengths), cfg.position_bins)
    return [CaptureRows(tuple(item.sample.prompts[0]), item.positions, item.layers, (width, V.TOP_K))]


def _arrays(sample, spans, q_pos: list[int], layers: list[int], heads: list[int]) -> dict[str, np.ndarray]:
    return {"input_ids": np.asarray(sample.prompts[0], dtype=np.int64),
            "query_positions": np.asarray(q_pos, dtype=np.int64),
            "span_answer": np.asarray(spans.answer), "span_needle": np.asarray(spans.needle),
            "span_others": np.asarray(spans.others, dtype=np.int64).reshape(-1, 2),
            "span_sink": np.asarray([0, spans.sink]), "span_query": np.asarray([spans.n_context, spans.n_tokens]),
            "layers": np.asarray(layers), "heads": np.asarray(heads)}


def _layer(rows: dict, L: int, item: _Item, labels: np.ndarray, is_diff: bool, acc: dict) -> None:
    """One layer's captured rows into the sample's arrays, per-head allocations, lambdas and
    pooled maps (`acc`)."""
    heads, R = list(item.heads), len(item.query)
    arrays = acc["arrays"]
    arrays[f"layer{L}"] = rows["diff" if is_diff else "attn"][0][heads].numpy()[:, :R]  # (h, R, n)
    if is_diff:
        lam = row_lambdas(rows["lambda"], heads, R)  # (h, R): V1 repeats the layer's one lambda
        v1 = rows["lambda"].dim() == 0
        # record: V1's lambda; V2's mean over the selected heads and query rows (arrays keep each)
        acc["lambdas"][str(L)] = float(rows["lambda"]) if v1 else float(lam.mean())
        arrays[f"layer{L}_lambda"] = np.asarray(float(rows["lambda"]) if v1 else lam, dtype=np.float32)
    for name in ("diff", "map1", "map2") if is_diff else ("attn",):
        full = rows[name][0][heads].numpy()  # (h, R_all, n)
        if is_diff and name != "diff":
            arrays[f"layer{L}_{name}"] = full[:, :R]
        rows_alloc = allocation(full[:, :R], labels)  # (h, R, C)
        acc["per_lh"].setdefault(name, []).append(rows_alloc.mean(axis=1))  # (h, C)
        if name == "diff":
            acc["per_lh"].setdefault("diff_norm", []).append(np.nanmean(normalise_rows(rows_alloc, lam), axis=1))
        if item.pool:
            pool_layer(acc["pooled"], name, full, list(item.positions), item.pool)


def _score(cfg: AttnMapConfig, item: _Item, outputs: list, ctx) -> Scored:
    """Allocation of the captured rows -> the sample's record, its arrays and pooled maps."""
    sample, layers, heads, pool = item.sample, list(item.layers), list(item.heads), item.pool
    spans = sample_spans(sample, cfg.sink)
    is_diff = ctx.family in DIFFERENTIAL
    acc: dict[str, Any] = {"arrays": _arrays(sample, spans, list(item.query), layers, heads), "per_lh": {},
                           "lambdas": {}, "pooled": {}}
    rows, stats = outputs[0]
    for L in layers:
        _layer(rows[L], L, item, spans.labels(), is_diff, acc)
    variants, arrays = V.sample_variants(rows, stats, layers, heads, len(item.query), ctx.family == "sinks")
    acc["arrays"].update(arrays)
    lh = {k: np.stack(v) for k, v in acc["per_lh"].items()}  # (layers, h, C)
    record: dict[str, Any] = {
        **sample.to_record(), "prediction": [], "score": None, "representative": item.representative,
        "query_positions": list(item.query), "layers": layers, "heads": heads,
        "allocation": category_dict(np.nanmean(lh["diff" if is_diff else "attn"], axis=(0, 1))),
        "per_layer_head": {k: np.round(v, 6).tolist() for k, v in lh.items()}, **variants,
    }
    if is_diff:
        record["allocation_normalised"] = category_dict(np.nanmean(lh["diff_norm"], axis=(0, 1)))
        record["allocation_map1"] = category_dict(lh["map1"].mean(axis=(0, 1)))
        record["allocation_map2"] = category_dict(lh["map2"].mean(axis=(0, 1)))
        record["lambda"] = acc["lambdas"]
    out = {"": acc["arrays"]} if item.representative or cfg.arrays == "all" else {}
    if acc["pooled"]:
        out["__pooled"] = pooled_arrays(acc["pooled"], pool, spans)
    return Scored(record, out)


def _aggregate(cfg: AttnMapConfig, records: list[dict], models: list[dict], extra: dict):
    labels = [m["label"] for m in models]
    mine = {label: [r for r in records if r["model"] == label] for label in labels}
    metrics = {k: {**allocation_metrics(v, DIRECTION), **V.variant_metrics(v, cfg.sink_threshold)}
               for k, v in mine.items()}
    cells = allocation_cells(records, labels)
    V.extend_cells(cells, records)
    return cells, metrics


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
    grid_params=("lengths", "depths", "samples", "arrays", "log_scale", "sink_threshold"),
    data=lambda cfg: R.haystack_data(cfg.haystack), uses=("prompt_format",),
    native_only="it captures exact attention rows from diffeval's own attention code (transformers' SDPA "
                "attention returns none)",
    views=(Figure("attn_profile", "attention:profile_view", stem="attn_profile"),
           Figure("attn_layer_head", "attention:layer_head_view", stem="attn_layer_head"),
           Figure("attn_pooled_window", "attention:pooled_window_view", stem="attn_pooled_window"),
           Figure("attn_pooled_whole", "attention:pooled_whole_view", stem="attn_pooled_whole"),
           Figure("attn_allocation", "attention:allocation_view", stem="attn_allocation"),
           Figure("attn_variants", V.variants_view, stem="attn_variants"),
           Table("attn_table", allocation_table), Table("attn_variants_table", V.variants_table)),
    quick={"lengths": [200], "depths": "0,100", "samples": 1, "n_needles": 2, "layers": "0,-1"},
    description="attention allocation on the answer span vs noise, per depth / layer / head",
    summary="Where attention goes: mass on the answer, needles, sink, question and noise, per depth,\n"
            "layer and head (DIFF: differential, map 1, map 2); arrays and figures.",
    examples=("diffeval attn-map --depths 0,50,100 --samples 2",
              "diffeval attn-map --ckpt path/to/model --len 8k --layers 0,-1 --heads all"),
    method=f"categories {', '.join(CATEGORIES)} (needle_total = answer + needle); {AGGREGATION}; {V.METHOD}")
