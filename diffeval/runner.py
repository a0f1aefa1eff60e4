"""Runs a probe end to end: load each model, generate its samples, run them through the
engine with resume, score, aggregate, and write the result files. The CLI calls these."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from diffeval.errors import UsageError
from diffeval.results import (
    SCHEMA_VERSION,
    ResumeCache,
    content_key,
    peak_memory_mb,
    provenance,
    write_json,
    write_jsonl,
)


@dataclass(frozen=True)
class RunOptions:
    """Where and how models run; shared by every probe."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    backend: str = "auto"
    batch_size: int = 1
    max_new_tokens: Optional[int] = None
    allow_beyond_max_positions: bool = False
    allow_pickle: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size ({self.batch_size}) must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens ({self.max_new_tokens}) must be >= 1")


def default_specs(specs: list[str]) -> list[str]:
    """The given checkpoints, or every zoo model when none is given."""
    if specs:
        return specs
    from diffeval.checkpoints.zoo import zoo_models

    models = zoo_models()
    if not models:
        raise UsageError("no --ckpt given and no zoo models are installed")
    return [f"zoo:{name}" for name in models]


def model_labels(specs: list[str]) -> list[str]:
    """Short distinct names: zoo name or directory name, numbered when repeated."""
    base = [s[4:] if s.startswith("zoo:") else (Path(s).name or s) for s in specs]
    out = []
    for i, b in enumerate(base):
        out.append(b if base.count(b) == 1 else f"{b}#{base[:i + 1].count(b)}")
    return out


def model_record(label: str, loaded, opts: RunOptions) -> dict[str, Any]:
    info = loaded.info
    return {
        "label": label,
        "spec": info.spec,
        "family": info.family,
        "n_params": info.n_params,
        "config": info.config,
        "sha256": info.sha256,
        "tokenizer": info.tokenizer,
        "dtype": info.dtype,
        "backend": info.backend,
        "device": opts.device,
    }


def progress_bar(total: Optional[int], desc: str, enabled: bool, unit: str = "prompt"):
    """A progress bar with ETA on stderr (None total: a counter)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)


def run_needle(cfg, specs: list[str], out: Path, opts: RunOptions) -> dict[str, Any]:
    """Run the needle probe for every model; write results.json, samples.jsonl and the heatmap.
    Returns the results dict."""
    from diffeval.checkpoints import load
    from diffeval.engine import Engine
    from diffeval.probes import needle as probe
    from diffeval.tokenizers import stop_ids

    specs = default_specs(specs)
    labels = model_labels(specs)
    out.mkdir(parents=True, exist_ok=True)
    task = {"name": "needle", "version": probe.VERSION, "params": cfg.to_dict()}
    models, records, timing = [], [], {}
    for label, spec in zip(labels, specs):
        loaded = load(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend,
                      allow_pickle=opts.allow_pickle)
        samples = probe.generate(cfg, loaded.tokenizer, max_positions=loaded.info.max_seq_len,
                                 allow_beyond=opts.allow_beyond_max_positions)
        models.append(model_record(label, loaded, opts))
        cache = ResumeCache(out / ".resume" / f"{label}.jsonl")
        keys = [content_key(loaded.info.sha256, task, s.id, s.prompts) for s in samples]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        tok = loaded.tokenizer
        max_new = opts.max_new_tokens or answer_budget(samples, tok)
        engine = Engine(loaded.model, max_new, stop_ids=stop_ids(tok), decode=tok.decode,
                        batch_size=opts.batch_size)
        flat = [(i, r) for i in todo for r in range(len(samples[i].prompts))]
        answers: dict[int, dict[int, str]] = {}
        bar = progress_bar(len(flat), label, opts.progress)
        started = time.perf_counter()

        def done(j: int, generated: list[int]) -> None:
            i, r = flat[j]
            answers.setdefault(i, {})[r] = tok.decode(generated).split("\n")[0]
            bar.update(1)
            if len(answers[i]) == len(samples[i].prompts):
                preds = [answers[i][q] for q in range(len(samples[i].prompts))]
                cache.put(keys[i], {"predictions": preds})

        try:
            engine.run([samples[i].prompts[r] for i, r in flat], done)
        finally:
            bar.close()
            cache.close()
        wall = time.perf_counter() - started
        for i, s in enumerate(samples):
            preds = cache.get(keys[i])["predictions"]
            scores = [probe.score_prediction([e], p) for e, p in zip(s.expected, preds)]
            records.append({
                "model": label, **s.to_record(), "prediction": preds,
                "score": sum(scores) / len(scores), "all_correct": all(x == 1.0 for x in scores),
            })
        timing[label] = {**engine.stats.to_dict(), "wall_seconds": round(wall, 3),
                         "resumed_samples": len(samples) - len(todo),
                         "tokens_per_s": round(engine.stats.prefilled_tokens / wall, 1) if wall > 0 else None,
                         **peak_memory_mb(opts.device)}
        del loaded, engine
    cells = aggregate_cells(records, labels)
    metrics = {label: summarize(cells, records, label) for label in labels}
    from diffeval.plotting.needle import needle_heatmap

    figure_paths = needle_heatmap(cells, labels, out / "needle_heatmap")
    write_jsonl(out / "samples.jsonl", records)
    results = {
        "schema_version": SCHEMA_VERSION,
        "probe": "needle",
        "task": task,
        "models": models,
        "metrics": metrics,
        "cells": cells,
        "timing": timing,
        "provenance": provenance(cfg.seed, opts.device),
        "artifacts": {"samples": "samples.jsonl", "figures": [p.name for p in figure_paths]},
    }
    write_json(out / "results.json", results)
    return results


def answer_budget(samples, tok) -> int:
    """Enough new tokens for the longest expected answer (" value.") plus a newline."""
    longest = max((len(tok.encode(f" {v}.")) for s in samples for v in s.expected), default=8)
    return longest + 2


def aggregate_cells(records: list[dict], labels: list[str]) -> list[dict]:
    """One row per (model, length, depth), models in run order: mean score, n, Wilson 95% CI,
    all-correct rate and mean real token count."""
    from diffeval.probes.stats import mean_per_cell

    keys = ("model", "length", "depth")
    extra: dict[tuple, list[dict]] = {}
    for r in records:
        extra.setdefault(tuple(r[k] for k in keys), []).append(r)
    cells = []
    for cell in sorted(mean_per_cell(records, keys), key=lambda c: labels.index(c["model"])):
        rows = extra[tuple(cell[k] for k in keys)]
        cells.append({
            **cell, "mean": round(cell["mean"], 6), "ci95": [round(x, 6) for x in cell["ci95"]],
            "all_correct": round(sum(r["all_correct"] for r in rows) / len(rows), 6),
            "n_tokens_mean": round(sum(max(r["n_tokens"]) for r in rows) / len(rows), 1),
        })
    return cells


def summarize(cells: list[dict], records: list[dict], label: str) -> dict[str, Any]:
    """Per-model aggregates: overall (with CI), per length and per depth (the average rows)."""
    from diffeval.probes.stats import average_by, wilson

    mine = [r for r in records if r["model"] == label]
    n = len(mine)
    total = math.fsum(r["score"] for r in mine)
    mean = total / n if n else 0.0
    lo, hi = wilson(min(total, n), n) if n else (0.0, 1.0)
    own = [c for c in cells if c["model"] == label]

    def by(key: str) -> dict[str, float]:
        return {f"{row[key]:g}" if isinstance(row[key], float) else str(row[key]): round(row["mean"], 6)
                for row in average_by(own, by=(key,))}

    return {
        "accuracy": round(mean, 6), "n": n, "ci95": [round(lo, 6), round(hi, 6)],
        "all_correct": round(sum(r["all_correct"] for r in mine) / n, 6) if n else 0.0,
        "by_length": by("length"), "by_depth": by("depth"),
    }
