"""`attn-map` end to end: needle prompts, one prefill each with exact attention rows captured
for the query tokens, allocation per category / depth / layer / head, arrays, figures."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.errors import UsageError
from diffeval.probes.attention import (
    CATEGORIES,
    allocation,
    normalise_diff,
    parse_index_list,
    query_positions,
    sample_spans,
)
from diffeval.results import (
    SCHEMA_VERSION,
    ResumeCache,
    content_key,
    peak_memory_mb,
    provenance,
    write_json,
    write_jsonl,
)
from diffeval.runner import RunOptions, progress_bar, default_specs, model_labels, model_record

TASK_VERSION = 1
AGGREGATION = ("mean over the selected layers, heads and query tokens of each prompt, then over "
               "the samples of each depth; DIFF headline rows are the differential rows "
               "(A1 - lambda A2) divided by their sum 1 - lambda of their layer, so categories sum to 1")
POOL_WINDOW_ROWS = 64
POOL_WHOLE_ROWS = 128
WHOLE_PROMPT_LIMIT = 16384  # pooled whole-prompt maps only up to this length (memory)


@dataclasses.dataclass(frozen=True)
class AttnMapOptions:
    layers: str = "all"
    heads: str = "all"
    query: str = "answer"
    sink: int = 4
    arrays: str = "all"  # "all": an .npz per prompt; "figure": only the prompt the figures draw

    def __post_init__(self) -> None:
        if self.arrays not in ("all", "figure"):
            raise UsageError(f"--arrays {self.arrays!r}: choose all or figure")


def _representative(samples) -> int:
    """Index of the sample drawn in the per-prompt figures: index 0 at the depth nearest 50%."""
    best = min(range(len(samples)), key=lambda i: (samples[i].index, abs(samples[i].depth - 50.0), samples[i].length))
    return best


def _pool_positions(sample, spans) -> dict[str, list[int]]:
    n = sample.n_tokens[0]
    s, e = spans.needle
    pad = max(32, e - s)
    a, b = max(0, s - pad), min(n, e + pad)
    out = {"window": sorted(set(np.linspace(a, b - 1, min(POOL_WINDOW_ROWS, b - a)).round().astype(int).tolist()))}
    if n <= WHOLE_PROMPT_LIMIT:
        out["whole"] = sorted(set(np.linspace(0, n - 1, min(POOL_WHOLE_ROWS, n)).round().astype(int).tolist()))
    out["window_keys"] = [a, b]
    return out


def _pool_keys(rows: np.ndarray, a: int, b: int, blocks: int) -> np.ndarray:
    """rows (..., n) -> (..., blocks): summed mass of keys [a, b) in equal blocks."""
    edges = np.linspace(a, b, blocks + 1).round().astype(int)
    return np.stack([rows[..., edges[i]:max(edges[i + 1], edges[i] + 1)].sum(-1) for i in range(blocks)], -1)


def run_attn_map(cfg, specs: list[str], out: Path, opts: RunOptions, amo: AttnMapOptions,
                 log_scale: bool = True) -> dict[str, Any]:
    from diffeval.checkpoints import load
    from diffeval.models import Capture
    from diffeval.probes import needle as probe

    specs = default_specs(specs)
    labels = model_labels(specs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arrays").mkdir(exist_ok=True)
    # the resume key holds what changes the numbers; which arrays are kept does not
    params = {**cfg.to_dict(), "layers": amo.layers, "heads": amo.heads, "query": amo.query, "sink": amo.sink}

    task = {"name": "attn-map", "version": TASK_VERSION, "params": params}
    models, records, timing, reps = [], [], {}, {}
    for label, spec in zip(labels, specs):
        loaded = load(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend, allow_pickle=opts.allow_pickle)
        model, tok, mcfg = loaded.model, loaded.tokenizer, loaded.model.cfg
        layers = parse_index_list(amo.layers, mcfg.n_layers, "layers")
        heads = parse_index_list(amo.heads, mcfg.n_heads, "heads")
        samples = probe.generate(cfg, tok, max_positions=mcfg.max_seq_len, allow_beyond=opts.allow_beyond_max_positions)
        models.append({**model_record(label, loaded, opts), "layers": layers, "heads": heads})
        cache = ResumeCache(out / ".resume" / f"{label}.jsonl")
        rep = _representative(samples)
        started = time.perf_counter()
        prefilled = 0
        bar = progress_bar(len(samples), label, opts.progress)
        try:
            for i, sample in enumerate(samples):
                key = content_key(loaded.info.sha256, task, sample.id, sample.prompts[0])
                if key not in cache:
                    value = _one_sample(model, tok, sample, layers, heads, amo, i == rep,
                                        out / "arrays", label, Capture)
                    prefilled += sample.n_tokens[0]
                    cache.put(key, value)
                rec = cache.get(key)
                records.append({"model": label, **sample.to_record(), **rec})
                bar.update(1)
        finally:
            bar.close()
            cache.close()
        wall = time.perf_counter() - started
        timing[label] = {"prompts": len(samples), "prefilled_tokens": prefilled, "wall_seconds": round(wall, 3),
                         "tokens_per_s": round(prefilled / wall, 1) if wall > 0 and prefilled else None,
                         **peak_memory_mb(opts.device)}
        reps[label] = (samples[rep].id, mcfg.family)
        del loaded, model
    cells = _cells(records, labels)
    metrics = {label: _metrics(records, label) for label in labels}
    from diffeval.plotting.attention import draw_all

    figures = draw_all(out, records, cells, metrics, models, reps, log_scale=log_scale)
    write_jsonl(out / "samples.jsonl", [_slim(r) for r in records])
    results = {
        "schema_version": SCHEMA_VERSION, "probe": "attn-map", "task": task, "models": models,
        "metrics": metrics, "cells": cells, "timing": timing,
        "provenance": provenance(cfg.seed, opts.device),
        "artifacts": {"samples": "samples.jsonl", "figures": [p.name for p in figures],
                      "arrays": sorted(f"arrays/{p.name}" for p in (out / "arrays").glob("*.npz"))},
        "aggregation": AGGREGATION, "categories": list(CATEGORIES),
    }
    write_json(out / "results.json", results)
    return results


@torch.no_grad()
def _one_sample(model, tok, sample, layers, heads, amo: AttnMapOptions, representative: bool,
                arrays: Path, label: str, Capture) -> dict[str, Any]:
    """One prefill with capture -> the sample's record; writes its .npz (and pooled maps)."""
    spans = sample_spans(sample, amo.sink)
    q_pos = query_positions(sample, amo.query, tok)
    pool = _pool_positions(sample, spans) if representative else {}
    extra = sorted(set(pool.get("window", [])) | set(pool.get("whole", [])))
    positions = q_pos + [p for p in extra if p not in set(q_pos)]
    cap = Capture(positions, layers=layers)
    device = model.embed.weight.device
    model(torch.tensor([sample.prompts[0]], device=device), logits="none", capture=cap)
    labels = spans.labels()
    R = len(q_pos)
    is_diff = model.cfg.family == "diff"
    arrays_out: dict[str, np.ndarray] = {
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
    pooled: dict[str, np.ndarray] = {}
    for L in layers:
        rows = cap.rows[L]
        main = rows["diff" if is_diff else "attn"][0][heads].numpy()  # (h, R_all, n)
        arrays_out[f"layer{L}"] = main[:, :R]
        if is_diff:
            lam = float(rows["lambda"])
            lambdas[str(L)] = lam
            arrays_out[f"layer{L}_lambda"] = np.asarray(lam, dtype=np.float32)
        for name in names:
            full = rows[name][0][heads].numpy()  # (h, R_all, n)
            if is_diff and name != "diff":
                arrays_out[f"layer{L}_{name}"] = full[:, :R]
            alloc = allocation(full[:, :R], labels).mean(axis=1)  # (h, C)
            per_lh.setdefault(name, []).append(alloc)
            if name == "diff":
                norm = normalise_diff(alloc, lambdas[str(L)])
                per_lh.setdefault("diff_norm", []).append(norm if norm is not None else np.full_like(alloc, np.nan))
            if pool:
                _pool_layer(pooled, name, full, positions, pool)
    if representative or amo.arrays == "all":
        np.savez_compressed(_tmp(arrays / f"{label}__{sample.id}.npz"), **arrays_out)
        _tmp_done(arrays / f"{label}__{sample.id}.npz")
    if pooled:
        meta = {"window_keys": np.asarray(pool["window_keys"]), "window_rows": np.asarray(pool["window"]),
                "span_needle": np.asarray(spans.needle), "span_answer": np.asarray(spans.answer),
                "span_others": arrays_out["span_others"], "n_tokens": np.asarray(spans.n_tokens)}
        if "whole" in pool:
            meta["whole_rows"] = np.asarray(pool["whole"])
        np.savez_compressed(_tmp(arrays / f"{label}__{sample.id}__pooled.npz"),
                            **{k: np.mean(v, axis=0) for k, v in pooled.items()}, **meta)
        _tmp_done(arrays / f"{label}__{sample.id}__pooled.npz")
    headline = "diff_norm" if is_diff else "attn"
    lh = {k: np.stack(v) for k, v in per_lh.items()}  # (layers, h, C)
    rec: dict[str, Any] = {
        "query_positions": q_pos, "layers": layers, "heads": heads,
        "allocation": _as_dict(np.nanmean(lh[headline], axis=(0, 1))),
        "per_layer_head": {k: np.round(v, 6).tolist() for k, v in lh.items()},
    }
    if is_diff:
        rec["allocation_signed"] = _as_dict(lh["diff"].mean(axis=(0, 1)))
        rec["allocation_map1"] = _as_dict(lh["map1"].mean(axis=(0, 1)))
        rec["allocation_map2"] = _as_dict(lh["map2"].mean(axis=(0, 1)))
        rec["lambda"] = lambdas
    return rec


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp.npz")


def _tmp_done(path: Path) -> None:
    _tmp(path).replace(path)


def _pool_layer(pooled: dict, name: str, full: np.ndarray, positions: list[int], pool: dict) -> None:
    """Accumulate (per layer) pooled query-block x key-block maps, mean over heads."""
    index = {p: j for j, p in enumerate(positions)}
    a, b = pool["window_keys"]
    rows = full[:, [index[p] for p in pool["window"]]]  # (h, Rw, n)
    pooled.setdefault(f"{name}_window", []).append(_pool_keys(rows, a, b, min(POOL_WINDOW_ROWS, b - a)).mean(0))
    if "whole" in pool:
        rows = full[:, [index[p] for p in pool["whole"]]]
        n = full.shape[-1]
        pooled.setdefault(f"{name}_whole", []).append(_pool_keys(rows, 0, n, min(POOL_WHOLE_ROWS, n)).mean(0))


def _as_dict(vec: np.ndarray) -> dict[str, float]:
    out = {c: round(float(v), 6) for c, v in zip(CATEGORIES, vec)}
    out["needle_total"] = round(out["answer"] + out["needle"], 6)
    return out


def _slim(record: dict) -> dict:
    """samples.jsonl line: everything but the per-layer-head arrays (they are in results cells)."""
    return {k: v for k, v in record.items() if k != "per_layer_head"}


def _cells(records: list[dict], labels: list[str]) -> list[dict]:
    """Per (model, length, depth, layer, head): headline category masses, mean over samples."""
    cells = []
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["length"], r["depth"]), []).append(r)
    for (model, length, depth), rows in sorted(groups.items(), key=lambda kv: (labels.index(kv[0][0]), kv[0][1], kv[0][2])):
        name = "diff_norm" if "diff_norm" in rows[0]["per_layer_head"] else "attn"
        arr = np.nanmean(np.stack([np.asarray(r["per_layer_head"][name], dtype=float) for r in rows]), axis=0)
        signed = (np.mean(np.stack([np.asarray(r["per_layer_head"]["diff"], dtype=float) for r in rows]), axis=0)
                  if name == "diff_norm" else None)
        layer_ids, head_ids = rows[0]["layers"], rows[0]["heads"]
        for li in range(arr.shape[0]):
            for hi in range(arr.shape[1]):
                cell = {"model": model, "length": length, "depth": depth, "layer": layer_ids[li], "head": head_ids[hi],
                        "n": len(rows), **{c: round(float(arr[li, hi, k]), 6) for k, c in enumerate(CATEGORIES)}}
                if signed is not None:
                    cell["signed"] = {c: round(float(signed[li, hi, k]), 6) for k, c in enumerate(CATEGORIES)}
                cells.append(cell)
    return cells


def _metrics(records: list[dict], label: str) -> dict[str, Any]:
    mine = [r for r in records if r["model"] == label]
    keys = ["allocation"] + [k for k in ("allocation_signed", "allocation_map1", "allocation_map2") if k in mine[0]]
    out: dict[str, Any] = {}
    for key in keys:
        by_depth: dict[str, dict[str, float]] = {}
        for depth in sorted({r["depth"] for r in mine}):
            rows = [r[key] for r in mine if r["depth"] == depth]
            by_depth[f"{depth:g}"] = {c: round(float(np.mean([x[c] for x in rows])), 6) for c in rows[0]}
        overall = {c: round(float(np.mean([r[key][c] for r in mine])), 6) for c in mine[0][key]}
        out[key.replace("allocation", "by_depth")] = by_depth
        out[key.replace("allocation", "overall")] = overall
    out["n"] = len(mine)
    if "lambda" in mine[0]:
        out["lambda"] = mine[0]["lambda"]
    return out
