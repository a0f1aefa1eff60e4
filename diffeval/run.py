"""`run_probe`: the one run function for every probe.

    for each model: load -> probe.generate -> probe.requests -> engine (resume) -> probe.score
    probe.aggregate(records) -> results.json (schema v2) + samples.jsonl + arrays
    probe.figures(run dir)                                   drawn from the files just written

Finished samples are appended to `<out>/.resume/<model>.jsonl` as they complete, keyed by
the content of everything that changes them (weights, config, tokenizer, dtype, backend,
the probe's parameters, the sample and its exact requests), so an interrupted run resumes
and a rerun with other settings never reuses stale outputs. Under torchrun each rank runs a
share of the samples and writes `<model>.rank<k>.jsonl`; rank 0 writes the files (dist.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffeval.errors import ConfigError, UsageError
from diffeval.probes.base import ModelContext, Probe, Scored
from diffeval.results import (
    SCHEMA_VERSION,
    atomic_path,
    claimed_out,
    content_key,
    peak_memory_mb,
    provenance,
    run_identity,
    safe_name,
    write_json,
    write_jsonl,
)

DECODE_MODES = ("default", "ruler")


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
    weights_format: Optional[str] = None  # --format: native | hf | unilm; None: detected
    progress: bool = True
    prompt_format: str = "plain"  # plain | chat
    decode: str = "default"  # default | ruler
    save_prompts: bool = False
    overwrite: bool = False  # replace another run's results in the output folder
    allow_beyond_memory: bool = False  # load a model (and KV cache) larger than the device's memory

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{self.batch_size} must be >= 1", "batch_size")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"{self.max_new_tokens} must be >= 1", "max_new_tokens")
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"{self.decode!r}: choose {' or '.join(DECODE_MODES)}", "decode")
        if self.prompt_format not in ("plain", "chat"):
            raise ConfigError(f"{self.prompt_format!r}: choose plain or chat", "prompt_format")

    def settings(self) -> dict[str, Any]:
        """The options that change outputs, for results.json."""
        return {"device": self.device, "dtype": str(self.dtype).replace("torch.", ""), "backend": self.backend,
                "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "allow_beyond_max_positions": self.allow_beyond_max_positions,
                "prompt_format": self.prompt_format, "decode": self.decode}


@dataclass(frozen=True)
class TaskInfo:
    """Where a run's parameters came from: a preset file (name, version, path, sha256) or a command."""

    name: str
    version: int
    preset: Optional[str] = None
    preset_sha256: Optional[str] = None


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
    return {"label": label, "spec": info.spec, "family": info.family, "n_params": info.n_params,
            "config": info.config, "sha256": info.sha256, "config_sha256": info.config_sha256,
            "tokenizer": info.tokenizer, "tokenizer_sha256": info.tokenizer_sha256, "dtype": info.dtype,
            "backend": info.backend, "device": opts.device, "max_positions": info.max_seq_len}


def progress_bar(total: Optional[int], desc: str, enabled: bool, unit: str = "request"):
    """A progress bar with ETA on stderr (None total: a counter)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)


def model_context(label: str, loaded, opts: RunOptions) -> ModelContext:
    from diffeval.probes.prompts import PromptFormat, prompt_format

    tok = loaded.tokenizer
    fmt = prompt_format(opts.prompt_format, tok) if tok is not None else PromptFormat()
    cfg = loaded.model.cfg
    return ModelContext(label=label, tokenizer=tok, max_positions=cfg.max_seq_len,
                        allow_beyond=opts.allow_beyond_max_positions, n_layers=cfg.n_layers,
                        n_heads=cfg.n_heads, family=cfg.family, max_new_tokens=opts.max_new_tokens,
                        prompt_format=fmt, decode=opts.decode)


def run_probe(probe: Probe, cfg, specs: list[str], out: Path, opts: RunOptions,
              task: Optional[TaskInfo] = None) -> dict[str, Any]:
    """Run `probe` with config `cfg` on every checkpoint; write the run folder `out`, claimed
    (checked writable, locked, not another run's) before any model loads.
    Returns the results dict (as written to results.json)."""
    from diffeval.dist import is_main

    specs = default_specs(list(specs))
    if not is_main():  # under torchrun, rank 0 claims and locks the folder for the whole job
        return _run_probe(probe, cfg, specs, Path(out), opts, task)
    run_id = run_identity(probe.name, cfg.to_dict(), opts.settings(), specs)
    with claimed_out(Path(out), run_id, opts.overwrite) as claimed:
        return _run_probe(probe, cfg, specs, claimed, opts, task)


def _run_probe(probe: Probe, cfg, specs: list[str], out: Path, opts: RunOptions,
               task: Optional[TaskInfo]) -> dict[str, Any]:
    from diffeval.checkpoints import load
    from diffeval.dist import World
    from diffeval.engine import Engine, Stats, fingerprint
    from diffeval.tokenizers import stop_ids

    specs = default_specs(list(specs))
    labels = model_labels(specs)
    params = cfg.to_dict()
    data = probe.data(cfg) if probe.data else {}
    task_rec = {"name": task.name if task else probe.name, "version": task.version if task else probe.version,
                "probe_version": probe.version, "preset": task.preset if task else None,
                "preset_sha256": task.preset_sha256 if task else None, "params": params}
    batched = (("batch_size", opts.batch_size),) if opts.batch_size > 1 else ()  # batched rows may round apart
    identity = content_key(probe.name, probe.version, data, opts.prompt_format, opts.decode, *batched,
                           {k: v for k, v in params.items() if k not in probe.grid_params})
    world = World.join(opts.device)  # torchrun: this rank's share of the samples (diffeval/dist.py)
    models, records, extra, per_model = [], [], {}, {}
    hashed: dict[str, str] = {}  # label -> "read" | "cache": how the weights' sha256 was had
    started_all = time.perf_counter()
    prompts_rows: list[dict] = []
    phases: dict[str, float] = {}  # wall seconds of the run's phases, summed over models
    warming = None  # matplotlib imported in the background while the first model runs
    for label, spec in zip(labels, specs):
        clock = _Clock()
        loaded = load(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend, allow_pickle=opts.allow_pickle,
                      length=_longest(params), allow_beyond_memory=opts.allow_beyond_memory,
                      format=opts.weights_format)
        clock.lap("load")
        hashed[label] = loaded.info.sha256_from
        ctx = model_context(label, loaded, opts)
        samples = probe.generate(cfg, ctx)
        ids = [s.id for s in samples]
        assert len(set(ids)) == len(ids), f"{probe.name}: sample ids repeat"
        work = [probe.requests(cfg, s, ctx) for s in samples]
        fp = {**loaded.info.fingerprint(), "device": torch.device(opts.device).type}
        keys = [content_key(fp, identity, s.id, [fingerprint(r) for r in reqs]) for s, reqs in zip(samples, work)]
        stem = out / ".resume" / safe_name(label)  # labels may hold dots (Llama-3.1-8B): no with_suffix
        cache = world.resume_cache(stem)
        state = probe.state(cfg, ctx) if probe.state else None
        held: set[str] = set()
        state_path = stem.parent / f"{stem.name}.state.npz"
        if state is not None and state_path.exists():
            saved = _load_state(state, state_path)
            if saved is not None and saved <= set(keys):
                held = saved
            else:  # damaged, or saved for other samples: start the statistics afresh
                state = probe.state(cfg, ctx)
        stateful = [state is not None and any(isinstance(r, Stats) or getattr(r, "stats", False) for r in reqs)
                    for reqs in work]
        todo = [i for i, k in enumerate(keys) if k not in cache or (stateful[i] and k not in held)]
        todo, n_todo = world.assign(todo, keys, samples, work, probe.group, stateful)
        tok = loaded.tokenizer
        engine = Engine(loaded.model, stop_ids=stop_ids(tok) if tok is not None else frozenset(),
                        decode=tok.decode if tok is not None else None, batch_size=opts.batch_size,
                        stats=state.stats if state is not None else None)
        bar = progress_bar(sum(len(work[i]) for i in todo), label, opts.progress and world.is_main)
        arrays_dir = out / "arrays"
        clock.lap("generate")
        scoring = _Clock()

        def done(t: int, outputs: list) -> None:
            scoring.restart()
            i = todo[t]
            scored = probe.score(cfg, samples[i], outputs, ctx)
            if not isinstance(scored, Scored):
                scored = Scored(scored)
            for suffix, arrays in scored.arrays.items():
                _save_npz(arrays_dir / f"{safe_name(label)}__{samples[i].id}{suffix}.npz", arrays)
            cache.put(keys[i], scored.record)
            if stateful[i]:
                held.add(keys[i])
                state.save(state_path, sorted(held))
            scoring.lap("score")

        if warming is None and world.is_main:
            from diffeval.plotting import prewarm

            warming = prewarm()
        started = time.perf_counter()
        try:
            engine.run([work[i] for i in todo], done, on_request=lambda: bar.update(1))
        finally:
            bar.close()
            cache.close()
        wall = time.perf_counter() - started
        merged = world.gather(cache, [keys[i] for i in todo], engine.counters, wall, opts.device)
        if merged is None:  # not rank 0: its records went to rank 0
            del loaded, engine
            continue
        for s, k in zip(samples, keys):
            records.append({"model": label, **cache.get(k)})
        if state is not None:
            extra[label] = state.finalise()
        if opts.save_prompts and tok is not None:
            prompts_rows.extend(_prompt_rows(label, samples, work, tok))
        c, wall = merged  # engine counters summed over ranks; the slowest rank's wall time
        clock.laps.update(prefill=c.prefill_seconds, decode=c.decode_seconds, score=scoring.laps.get("score", 0.0))
        per_model[label] = _timing(c, wall, len(samples), len(samples) - n_todo, opts.device, clock.laps)
        for name, seconds in clock.laps.items():
            phases[name] = phases.get(name, 0.0) + seconds
        models.append({**model_record(label, loaded, opts), **({"notes": ctx.notes} if ctx.notes else {})})
        del loaded, engine
    if not world.is_main:
        return world.share(None)
    clock = _Clock()
    cells, metrics = probe.aggregate(cfg, records, models, extra)
    clock.lap("aggregate")
    artifacts: dict[str, Any] = {"samples": "samples.jsonl", "figures": []}
    write_jsonl(out / "samples.jsonl", records)
    if prompts_rows:
        write_jsonl(out / "prompts.jsonl", prompts_rows)
        artifacts["prompts"] = "prompts.jsonl"
    if arrays_dir.exists():
        artifacts["arrays"] = sorted(f"arrays/{p.name}" for p in arrays_dir.glob("*.npz"))
    results = {
        "schema_version": SCHEMA_VERSION,
        "probe": probe.name,
        "task": task_rec,
        "method": probe.method,
        "run": opts.settings(),
        "data": data,
        "models": models,
        "cell_keys": ["model", *probe.cell_keys],
        "metrics": metrics,
        "cells": cells,
        "timing": {"world_size": world.size, "wall_seconds": 0.0, "phases": phases, "models": per_model,
                   "ranks": world.timing()},
        "provenance": {**provenance(params.get("seed"), opts.device), **world.provenance(),
                       "weights_sha256_from": hashed},
        "artifacts": artifacts,
    }
    _finish_timing(results["timing"], started_all, clock, "write")
    write_json(out / "results.json", results)
    if warming is not None:
        warming.join()
    clock.restart()
    from diffeval.plotting.style import styled

    with styled():
        results["artifacts"]["figures"] = [p.name for p in probe.figures(out)]
    _finish_timing(results["timing"], started_all, clock, "figures")
    write_json(out / "results.json", results)
    return world.share(results)


class _Clock:
    """Wall time by phase: `lap(name)` adds the time since the last lap (or restart) to laps[name]."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def _finish_timing(timing: dict, started: float, clock: _Clock, phase: str) -> None:
    clock.lap(phase)
    timing["phases"].update(clock.laps)
    timing["phases"] = {k: round(v, 3) for k, v in timing["phases"].items()}
    timing["wall_seconds"] = round(time.perf_counter() - started, 3)


def _longest(params: dict[str, Any]) -> Optional[int]:
    """The longest prompt or sequence a probe's parameters ask for (None when they name none)."""
    values: list[int] = []
    for key in ("lengths", "length", "seq_len"):
        value = params.get(key)
        values.extend(v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, int))
    return max(values, default=None)


def _load_state(state, path: Path) -> Optional[set[str]]:
    """The sample keys a saved probe state covers, or None (one warning) when the file is damaged."""
    import logging
    import zipfile

    try:
        return set(state.load(path))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logging.getLogger("diffeval").warning("%s: damaged (%s); its statistics are recomputed",
                                              path, type(exc).__name__)
        return None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no suffix
        np.savez_compressed(f, **arrays)


def _timing(c, wall: float, n_samples: int, resumed: int, device: str, phases: dict[str, float]) -> dict[str, Any]:
    def rate(n: int, seconds: float) -> Optional[float]:
        return round(n / seconds, 1) if n and seconds > 0 else None

    return {"wall_seconds": round(wall, 3), "samples": n_samples, "resumed_samples": resumed,
            "requests": c.requests, "prompt_tokens": c.prompt_tokens, "prefilled_tokens": c.prefilled_tokens,
            "generated_tokens": c.generated_tokens,
            "reuse_ratio": round(c.prefilled_tokens / c.prompt_tokens, 4) if c.prompt_tokens else None,
            "tokens_per_s": rate(c.prefilled_tokens, wall),
            "prefill_tokens_per_s": rate(c.prefilled_tokens, c.prefill_seconds),
            "decode_tokens_per_s": rate(c.generated_tokens, c.decode_seconds),
            "phases": {k: round(v, 3) for k, v in phases.items()},
            **peak_memory_mb(device)}


def _prompt_rows(label: str, samples, work, tok) -> list[dict]:
    """prompts.jsonl: the text of every request of every sample (audit a cell by reading it)."""
    rows = []
    for s, reqs in zip(samples, work):
        for j, r in enumerate(reqs):
            ids = getattr(r, "prompt", None) or getattr(r, "ids", None)
            row = {"model": label, "id": s.id, "request": j, "type": type(r).__name__, "n_tokens": len(ids),
                   "text": tok.decode(list(ids))}
            if getattr(r, "candidates", None):
                row["candidates"] = [tok.decode(list(c)) for c in r.candidates]
            rows.append(row)
    return rows
