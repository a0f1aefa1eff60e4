"""Runs the outliers probe end to end: for each model, stream the evaluation text through it
one sequence at a time collecting Table-5 statistics, then measure the chosen metric (mean
token NLL, or needle accuracy) with the attention logits quantized to each bit width; write
results.json, samples.jsonl and the figures. The CLI calls `run_outliers`."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from diffeval.errors import UsageError
from diffeval.probes import outliers as probe
from diffeval.results import SCHEMA_VERSION, peak_memory_mb, provenance, write_json, write_jsonl
from diffeval.runner import RunOptions, default_specs, model_labels, model_record, progress_bar


BLOCK_CHARS = 1 << 16  # characters of a data file encoded at once


# --- data -----------------------------------------------------------------------------------


def data_files(spec: str) -> list[Path]:
    """The .txt files of --data: one file, or a folder searched recursively (sorted)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"--data {spec!r}: no such file or folder (give 'synthetic' or a path to .txt text)")
    from diffeval.probes.haystack import text_files

    return text_files(path, "--data")


def _file_blocks(path: Path) -> Iterator[str]:
    """A file's text in blocks of about BLOCK_CHARS characters, cut after a blank line when
    one comes within the block, else after any line; the file ends with a blank line."""
    block: list[str] = []
    size = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                block.append(line)
                size += len(line)
                if (size >= BLOCK_CHARS and not line.strip()) or size >= 4 * BLOCK_CHARS:
                    yield "".join(block)
                    block, size = [], 0
    except UnicodeDecodeError as exc:
        raise UsageError(f"--data file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"--data file {path}: cannot read ({exc.strerror or exc})") from None
    text = "".join(block)
    yield text + ("" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n")


def text_blocks(data: str, seed: int, files: Optional[list[Path]] = None) -> Iterator[str]:
    """The evaluation text as blocks: essay paragraphs for "synthetic", else the files in order."""
    if data == "synthetic":
        yield from probe.essay_paragraphs(probe.synthetic_rng(seed))
        return
    for path in files if files is not None else data_files(data):
        yield from _file_blocks(path)


def data_record(data: str, seed: int, files: Optional[list[Path]]) -> dict[str, Any]:
    """What the text was: the generator and seed, or the files with a sha256 of their bytes."""
    if data == "synthetic":
        return {"kind": "synthetic", "generator": "diffeval essay paragraphs", "seed": seed}
    digest = hashlib.sha256()
    for p in files or []:
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"kind": "path", "source": data, "n_files": len(files or []), "sha256": digest.hexdigest()}


def _ids_hash(ids: list[int]) -> str:
    import numpy as np

    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


# --- model passes ---------------------------------------------------------------------------


class HookedModel:
    """A Decoder seen through a fixed logit hook: calls pass `logit_hook=hook`, every other
    attribute is the model's. Lets the engine decode under quantized attention unchanged."""

    def __init__(self, model, hook) -> None:
        self._model, self._hook = model, hook

    def __call__(self, ids, cache=None, **kwargs):
        return self._model(ids, cache, logit_hook=self._hook, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


@torch.no_grad()
def _stream_statistics(loaded, label: str, cfg, files, opts: RunOptions, records: list[dict]
                       ) -> tuple[probe.OutlierStats, dict[int, dict], dict[str, Any]]:
    """Statistics over the text, and the NLL per bit width when the metric is nll."""
    model, tok = loaded.model, loaded.tokenizer
    device = model.embed.weight.device
    stream = probe.token_stream(text_blocks(cfg.data, cfg.seed, files), tok.encode)
    n_seq = None if cfg.n_tokens is None else -(-cfg.n_tokens // cfg.seq_len)
    want_nll = cfg.metric == "nll"
    stats = probe.OutlierStats(model.cfg.n_layers)
    sums = {b: [0.0, 0] for b in cfg.bits} if want_nll else {}
    baseline_hook = probe.quant_hook(probe.BASELINE_BITS)
    hooks = {b: probe.quant_hook(b) for b in cfg.bits if b != probe.BASELINE_BITS} if want_nll else {}
    passes = 1 + len(hooks)
    tokens, started = 0, time.perf_counter()
    bar = progress_bar(n_seq * passes if n_seq else None, f"{label} stats", opts.progress, "pass")
    try:
        for index, (offset, seq) in enumerate(probe.sequences(stream, cfg.n_tokens, cfg.seq_len, tok.bos_id)):
            ids = torch.tensor([seq], dtype=torch.long, device=device)  # (1, T)
            row: dict[str, Any] = {"model": label, "kind": "sequence", "index": index, "offset": offset,
                                   "n_tokens": len(seq), "ids_sha256": _ids_hash(seq)}
            stats.begin_forward()
            if want_nll:
                base = model.token_nll(ids, stats=stats, logit_hook=baseline_hook)  # (1, T-1)
            else:
                with torch.no_grad():
                    model.hidden(ids, stats=stats)
            stats.end_forward()
            bar.update(1)
            tokens += len(seq)
            if want_nll:
                row["n_targets"] = int(base.numel())
                row["nll"] = {}
                for b in cfg.bits:  # the baseline's NLL is the statistics pass's own
                    nll = base if b == probe.BASELINE_BITS else model.token_nll(ids, logit_hook=hooks[b])
                    total = float(nll.double().sum())
                    sums[b][0] += total
                    sums[b][1] += nll.numel()
                    row["nll"][str(b)] = round(probe.mean_nll(total, nll.numel()), 6)
                bar.update(len(hooks))
                tokens += len(hooks) * len(seq)
            records.append(row)
    finally:
        bar.close()
    wall = time.perf_counter() - started
    by_bits = {b: {"value": probe.mean_nll(s, n), "n": n} for b, (s, n) in sums.items()}
    timing = {"stats_wall_seconds": round(wall, 3), "stats_tokens": tokens,
              "stats_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None}
    return stats, by_bits, timing


@torch.no_grad()
def _needle_metric(loaded, label: str, cfg, opts: RunOptions, records: list[dict]) -> tuple[dict[int, dict], dict]:
    """Needle accuracy with the attention logits quantized to each bit width."""
    from diffeval.engine import Engine
    from diffeval.probes import needle
    from diffeval.probes.stats import wilson
    from diffeval.runner import answer_budget
    from diffeval.tokenizers import stop_ids

    ncfg = needle.NeedleConfig(lengths=(cfg.seq_len,), depths=cfg.depths, samples=cfg.needle_samples,
                               haystack="essay" if cfg.data == "synthetic" else cfg.data, seed=cfg.seed)
    tok = loaded.tokenizer
    samples = needle.generate(ncfg, tok, max_positions=loaded.info.max_seq_len,
                              allow_beyond=opts.allow_beyond_max_positions)
    max_new = opts.max_new_tokens or answer_budget(samples, tok)
    by_bits: dict[int, dict] = {}
    prefilled, started = 0, time.perf_counter()
    bar = progress_bar(len(samples) * len(cfg.bits), f"{label} needle", opts.progress, "prompt")
    try:
        for b in cfg.bits:
            engine = Engine(HookedModel(loaded.model, probe.quant_hook(b)), max_new, stop_ids=stop_ids(tok),
                            decode=tok.decode, batch_size=opts.batch_size)
            preds: dict[int, str] = {}

            def done(i: int, generated: list[int]) -> None:
                preds[i] = tok.decode(generated).split("\n")[0]
                bar.update(1)

            engine.run([s.prompts[0] for s in samples], done)
            prefilled += engine.stats.prefilled_tokens
            scores = []
            for i, s in enumerate(samples):
                score = needle.score_prediction(s.expected[:1], preds[i])
                scores.append(score)
                records.append({"model": label, "kind": "needle", "bits": b, **s.to_record(),
                                "prediction": preds[i], "score": score})
            n = len(scores)
            mean = sum(scores) / n
            by_bits[b] = {"value": mean, "n": n, "ci95": list(wilson(mean * n, n))}
    finally:
        bar.close()
    wall = time.perf_counter() - started
    return by_bits, {"needle": ncfg.to_dict(), "needle_wall_seconds": round(wall, 3),
                     "needle_prefilled_tokens": prefilled,
                     "needle_tokens_per_s": round(prefilled / wall, 1) if wall > 0 else None}


def _check_length(cfg, loaded, opts: RunOptions, label: str) -> None:
    limit = loaded.info.max_seq_len
    if cfg.seq_len > limit and not opts.allow_beyond_max_positions:
        raise UsageError(f"--len {cfg.seq_len} exceeds the position limit of {label} ({limit} tokens); "
                         "use a shorter --len or --allow-beyond-max-positions")


def _check_available(cfg, loaded, files, label: str) -> None:
    """Fail before any model work when a data file holds fewer than --tokens tokens."""
    if cfg.data == "synthetic" or cfg.n_tokens is None:
        return
    tok = loaded.tokenizer
    stream = probe.token_stream(text_blocks(cfg.data, cfg.seed, files), tok.encode)
    have = probe.count_tokens(stream, cfg.n_tokens, cfg.seq_len, tok.bos_id is not None)
    if have < cfg.n_tokens:
        raise UsageError(f"--data {cfg.data}: holds {have} tokens in sequences of {cfg.seq_len} under the "
                         f"tokenizer of {label}, fewer than --tokens {cfg.n_tokens}; "
                         "lower --tokens or use --tokens all")


# --- the run --------------------------------------------------------------------------------


def run_outliers(cfg, specs: list[str], out: Path, opts: RunOptions) -> dict[str, Any]:
    """Run the outliers probe for every model; write results.json, samples.jsonl and the
    figures into `out`. Returns the results dict."""
    from diffeval.checkpoints import load
    from diffeval.plotting.outliers import layer_outlier_figure, quant_curve

    specs = default_specs(specs)
    labels = model_labels(specs)
    files = None if cfg.data == "synthetic" else data_files(cfg.data)
    data = data_record(cfg.data, cfg.seed, files)
    task = {"name": probe.TASK, "version": probe.VERSION, "params": {**cfg.to_dict(), "data_record": data}}
    models, records, cells, metrics, timing = [], [], [], {}, {}
    for label, spec in zip(labels, specs):
        loaded = load(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend, allow_pickle=opts.allow_pickle)
        if loaded.tokenizer is None:
            raise UsageError(f"{spec}: has no tokenizer; the outliers probe needs one to read text")
        _check_length(cfg, loaded, opts, label)
        _check_available(cfg, loaded, files, label)
        models.append(model_record(label, loaded, opts))
        started = time.perf_counter()
        stats, by_bits, t = _stream_statistics(loaded, label, cfg, files, opts, records)
        if cfg.metric == "needle" and cfg.bits:
            by_bits, t_needle = _needle_metric(loaded, label, cfg, opts, records)
            t.update(t_needle)
        wall = time.perf_counter() - started
        table = stats.table()
        seqs = [r for r in records if r["model"] == label and r["kind"] == "sequence"]
        n_tokens = sum(r["n_tokens"] for r in seqs)
        metrics[label] = {
            "n_tokens": n_tokens,
            "n_sequences": len(seqs),
            "activations": {k: {s: v[s] for s in (*probe.STAT_KEYS, "count", "median_exact") if s in v}
                            for k, v in table.items()},
            "per_layer_top1": stats.per_layer(),
            "quantization": {"metric": cfg.metric,
                             "by_bits": {str(b): _round(v) for b, v in by_bits.items()}},
        }
        cells.extend(probe.table5_cells(label, table))
        cells.extend({"model": label, "kind": "quant", "bits": b, "metric": cfg.metric, **_round(v)}
                     for b, v in by_bits.items())
        timing[label] = {**t, "wall_seconds": round(wall, 3), "tokens": n_tokens, **peak_memory_mb(opts.device)}
        del loaded, stats
    figures = []
    if cfg.bits:
        figures += quant_curve(cells, labels, cfg.metric, out / "quant_curve")
    figures += layer_outlier_figure({m: metrics[m]["per_layer_top1"] for m in labels}, out / "outliers_by_layer")
    write_jsonl(out / "samples.jsonl", records)
    results = {
        "schema_version": SCHEMA_VERSION,
        "probe": probe.TASK,
        "task": task,
        "models": models,
        "metrics": metrics,
        "cells": cells,
        "timing": timing,
        "provenance": {**provenance(cfg.seed, opts.device), "data": data},
        "artifacts": {"samples": "samples.jsonl", "figures": [p.name for p in figures]},
    }
    write_json(out / "results.json", results)
    return results


def _round(v: dict) -> dict:
    return {k: (round(x, 6) if isinstance(x, float) else [round(y, 6) for y in x] if isinstance(x, list) else x)
            for k, x in v.items()}
