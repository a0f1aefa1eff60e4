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

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffeval.errors import ConfigError, UsageError
from diffeval.hashing import file_sha256
from diffeval.probes.base import ModelContext, Probe, ProbeState, Scored
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
from diffeval.tokenizers import BOS_POLICIES

DECODE_MODES = ("default", "ruler")
ENGINES = ("native", "hf")  # diffeval.hf_engine.ENGINES, without importing it


log = logging.getLogger("diffeval")


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
    weights_format: Optional[str] = None  # --format: native | hf | unilm | unilm-v2; None: detected
    progress: bool = True
    prompt_format: str = "plain"  # plain | chat
    decode: str = "default"  # default | ruler
    save_prompts: bool = False
    overwrite: bool = False  # replace another run's results in the output folder
    allow_beyond_memory: bool = False  # load a model (and KV cache) larger than the device's memory
    bos: str = "auto"  # auto (the tokenizer's own rule) | always | never
    engine: str = "native"  # native (diffeval's model code) | hf (transformers: any causal LM it implements)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{self.batch_size} must be >= 1", "batch_size")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"{self.max_new_tokens} must be >= 1", "max_new_tokens")
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"{self.decode!r}: choose {' or '.join(DECODE_MODES)}", "decode")
        if self.prompt_format not in ("plain", "chat"):
            raise ConfigError(f"{self.prompt_format!r}: choose plain or chat", "prompt_format")
        if self.bos not in BOS_POLICIES:
            raise ConfigError(f"{self.bos!r}: choose {', '.join(BOS_POLICIES)}", "bos")
        if self.engine not in ENGINES:
            raise ConfigError(f"{self.engine!r}: choose {' or '.join(ENGINES)}", "engine")
        if self.engine == "hf" and self.weights_format not in (None, "hf"):
            raise ConfigError(f"--format {self.weights_format} reads weights into diffeval's own model code; "
                              "--engine hf reads Hugging Face directories only", "engine")

    def settings(self) -> dict[str, Any]:
        """The options that change outputs, for results.json."""
        return {"device": self.device, "dtype": str(self.dtype).replace("torch.", ""), "backend": self.backend,
                "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "allow_beyond_max_positions": self.allow_beyond_max_positions,
                "prompt_format": self.prompt_format, "decode": self.decode, "bos": self.bos,
                "engine": self.engine, **self.engine_versions()}

    def engine_versions(self) -> dict[str, str]:
        """The version of the library an engine other than native runs on ({} for native)."""
        if self.engine != "hf":
            return {}
        from diffeval.hf_engine import transformers_module

        return {"transformers": transformers_module().__version__}


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
    """Short distinct names: zoo name or directory name, numbered when repeated. A name the
    locale could not decode (its bytes kept as surrogates) is read as UTF-8, so that labels
    are text that any file, table or figure can hold."""
    base = [s[4:] if s.startswith("zoo:") else (Path(s).name or s) for s in specs]
    base = [b.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for b in base]
    out = []
    for i, b in enumerate(base):
        out.append(b if base.count(b) == 1 else f"{b}#{base[:i + 1].count(b)}")
    return out


def model_record(label: str, loaded, opts: RunOptions) -> dict[str, Any]:
    info = loaded.info
    return {"label": label, "spec": info.spec, "family": info.family, "n_params": info.n_params,
            "config": info.config, "sha256": info.sha256, "config_sha256": info.config_sha256,
            "tokenizer": info.tokenizer, "tokenizer_sha256": info.tokenizer_sha256, "dtype": info.dtype,
            "backend": info.backend, "device": opts.device, "max_positions": info.max_seq_len,
            "engine": info.engine}


def progress_bar(total: Optional[int], desc: str, enabled: bool, unit: str = "request"):
    """A progress bar with ETA on stderr (None total: a counter)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)


def model_context(label: str, loaded, opts: RunOptions, service: Any = None) -> ModelContext:
    from diffeval.probes.prompts import PromptFormat, prompt_format
    from diffeval.tokenizers import with_bos

    tok = with_bos(loaded.tokenizer, opts.bos)
    fmt = prompt_format(opts.prompt_format, tok) if tok is not None else PromptFormat()
    cfg = loaded.model.cfg
    return ModelContext(label=label, tokenizer=tok, max_positions=cfg.max_seq_len,
                        allow_beyond=opts.allow_beyond_max_positions, n_layers=cfg.n_layers,
                        n_heads=cfg.n_heads, family=cfg.family, max_new_tokens=opts.max_new_tokens,
                        prompt_format=fmt, decode=opts.decode, service=service)


def run_probe(probe: Probe, cfg, specs: list[str], out: Path, opts: RunOptions,
              task: Optional[TaskInfo] = None) -> dict[str, Any]:
    """Run `probe` with config `cfg` on every checkpoint; write the run folder `out`, claimed
    (checked writable, locked, not another run's) before any model loads.
    Returns the results dict (as written to results.json)."""
    from diffeval.dist import is_main

    specs = default_specs(list(specs))
    if opts.engine != "native" and probe.native_only:
        raise UsageError(f"{probe.name}: --engine {opts.engine} cannot run it: {probe.native_only}; "
                         "use --engine native (the families diffeval implements)")
    if not is_main():  # under torchrun, rank 0 claims and locks the folder for the whole job
        return _run_job(_Job.start(probe, cfg, specs, Path(out), opts, task))
    run_id = run_identity(probe.name, cfg.to_dict(), opts.settings(), specs)
    with claimed_out(Path(out), run_id, opts.overwrite) as claimed:
        return _run_job(_Job.start(probe, cfg, specs, claimed, opts, task))


@dataclass
class _Job:
    """One run: what every model shares, and what the models' passes have gathered."""

    probe: Probe
    cfg: Any
    specs: list[str]
    out: Path
    opts: RunOptions
    task: dict
    params: dict
    data: dict
    identity: str  # the probe's share of every resume key
    world: Any  # diffeval.dist.World
    service: Any  # the probe's per-run service (a judge client), or None
    started: float = field(default_factory=time.perf_counter)
    models: list = field(default_factory=list)
    records: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    hashed: dict = field(default_factory=dict)  # label -> "read" | "cache": how the weights' sha256 was had
    prompts: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)  # wall seconds of the run's phases, summed over models
    warming: Any = None  # matplotlib imported in the background while the first model runs

    @classmethod
    def start(cls, probe: Probe, cfg, specs: list[str], out: Path, opts: RunOptions, task: Optional[TaskInfo]) -> "_Job":
        from diffeval.dist import World

        params = cfg.to_dict()
        data = probe.data(cfg) if probe.data else {}
        task_rec = {"name": task.name if task else probe.name, "version": task.version if task else probe.version,
                    "probe_version": probe.version, "preset": task.preset if task else None,
                    "preset_sha256": task.preset_sha256 if task else None, "params": params}
        batched = (("batch_size", opts.batch_size),) if opts.batch_size > 1 else ()  # batched rows may round apart
        identity = content_key(probe.name, probe.version, data, opts.prompt_format, opts.decode, *batched,
                               {k: v for k, v in params.items() if k not in probe.grid_params})
        world = World.join(opts.device)  # torchrun: this rank's share of the samples (diffeval/dist.py)
        service = probe.service(cfg) if probe.service else None
        return cls(probe, cfg, list(specs), out, opts, task_rec, params, data, identity, world, service)

    def add_phases(self, laps: dict[str, float]) -> None:
        for name, seconds in laps.items():
            self.phases[name] = self.phases.get(name, 0.0) + seconds


def _run_job(job: _Job) -> dict[str, Any]:
    for label, spec in zip(model_labels(job.specs), job.specs):
        _run_model(job, label, spec)
    if not job.world.is_main:
        return job.world.share(None)
    _check_data_unchanged(job)
    clock = _Clock()
    results = _results(job, clock)
    _finish_timing(results["timing"], job.started, clock, "write")
    write_json(job.out / "results.json", results)
    if job.warming is not None:
        job.warming.join()
    clock.restart()
    results["artifacts"]["figures"] = [p.name for p in draw_figures(job.probe, job.out)]
    _finish_timing(results["timing"], job.started, clock, "figures")
    write_json(job.out / "results.json", results)
    return job.world.share(results)


def _run_model(job: _Job, label: str, spec: str) -> None:
    """Load one model, generate its samples, run what the resume cache lacks, and add its
    records, statistics and timing to the job (rank 0; other ranks send theirs there)."""
    from diffeval.checkpoints import load
    from diffeval.tokenizers import bos_record

    opts, clock = job.opts, _Clock()
    if opts.engine == "hf":
        from diffeval.hf_engine import load as load_hf

        loaded = load_hf(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend, length=_longest(job.params),
                         allow_beyond_memory=opts.allow_beyond_memory)
    else:
        loaded = load(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend,
                      allow_pickle=opts.allow_pickle, length=_longest(job.params),
                      allow_beyond_memory=opts.allow_beyond_memory, format=opts.weights_format)
    clock.lap("load")
    job.hashed[label] = loaded.info.sha256_from
    ctx = model_context(label, loaded, opts, job.service)
    samples, notes = _generated(job.probe.generate(job.cfg, ctx))
    plan = _Plan.make(job, label, loaded, ctx, samples)
    clock.lap("generate")
    if job.warming is None and job.world.is_main:
        from diffeval.plotting import prewarm

        job.warming = prewarm()
    counters, wall, score_seconds = _evaluate(job, plan, loaded, ctx)
    merged = job.world.gather(plan.cache, [plan.keys[i] for i in plan.todo], counters, wall, opts.device)
    if merged is None:  # not rank 0: its records went to rank 0
        return
    job.records.extend({"model": label, **{n: v for n, v in plan.cache.get(k).items() if n != ARRAYS}}
                       for k in plan.keys)
    if plan.state is not None:
        job.extra[label] = plan.state.finalise()
    if opts.save_prompts and ctx.tokenizer is not None:
        job.prompts.extend(_prompt_rows(label, samples, plan.work, ctx.tokenizer))
    c, wall = merged  # engine counters summed over ranks; the slowest rank's wall time
    clock.laps.update(prefill=c.prefill_seconds, decode=c.decode_seconds, score=score_seconds)
    job.timing[label] = _timing(c, wall, len(samples), len(samples) - plan.n_todo, opts.device, clock.laps)
    job.add_phases(clock.laps)
    bos = {"bos": bos_record(ctx.tokenizer)} if ctx.tokenizer is not None else {}
    job.models.append({**model_record(label, loaded, opts), **bos, **({"notes": notes} if notes else {})})


def _generated(got) -> tuple[list, dict]:
    from diffeval.probes.base import Generated

    samples, notes = (got.samples, got.notes) if isinstance(got, Generated) else (got, {})
    ids = [s.id for s in samples]
    assert len(set(ids)) == len(ids), "sample ids repeat"
    return samples, notes


@dataclass
class _Plan:
    """One model's samples, their requests and resume keys, and which are still to run."""

    label: str
    samples: list
    work: list  # per sample: its requests
    keys: list[str]
    cache: Any  # ResumeCache
    state: Optional["_KeptState"]
    stateful: list[bool]  # per sample: feeds the probe's running state
    todo: list[int]  # this rank's unfinished samples
    n_todo: int  # unfinished samples over all ranks

    @classmethod
    def make(cls, job: _Job, label: str, loaded, ctx: ModelContext, samples: list) -> "_Plan":
        from diffeval.engine import Stats, fingerprint

        work = [job.probe.requests(job.cfg, s, ctx) for s in samples]
        fp = {**loaded.info.fingerprint(), "device": torch.device(job.opts.device).type}
        keys = [content_key(fp, job.identity, s.id, [fingerprint(r) for r in reqs]) for s, reqs in zip(samples, work)]
        stem = job.out / ".resume" / safe_name(label)  # labels may hold dots (Llama-3.1-8B): no with_suffix
        cache = job.world.resume_cache(stem)
        state = _KeptState.open(job.probe, job.cfg, ctx, stem, keys) if job.probe.state else None
        stateful = [state is not None and any(isinstance(r, Stats) or getattr(r, "stats", False) for r in reqs)
                    for reqs in work]
        damaged = {k for k in keys if k in cache and not _arrays_intact(job.out, cache.get(k))}  # hashed once
        todo = [i for i, k in enumerate(keys) if k not in cache or (stateful[i] and not state.holds(k))
                or k in damaged]
        redone = len(damaged)
        if redone:
            log.warning("%s: %d finished sample(s) whose arrays are missing or changed are recomputed",
                        job.out / "arrays", redone)
        todo, n_todo = job.world.assign(todo, keys, samples, work, job.probe.group, stateful)
        return cls(label, samples, work, keys, cache, state, stateful, todo, n_todo)


class _KeptState:
    """A stateful probe's running state (activation statistics) with the sample keys it holds,
    saved beside the resume cache after each sample that feeds it."""

    def __init__(self, state: ProbeState, path: Path, held: set[str]) -> None:
        self.state, self.path, self.held = state, path, held

    @classmethod
    def open(cls, probe: Probe, cfg, ctx: ModelContext, stem: Path, keys: list[str]) -> "_KeptState":
        path = stem.parent / f"{stem.name}.state.npz"
        state = probe.state(cfg, ctx)
        if path.exists():
            saved = _load_state(state, path)
            if saved is not None and saved <= set(keys):
                return cls(state, path, saved)
            state = probe.state(cfg, ctx)  # damaged, or saved for other samples: start afresh
        return cls(state, path, set())

    @property
    def stats(self):
        return self.state.stats

    def holds(self, key: str) -> bool:
        return key in self.held

    def add(self, key: str) -> None:
        self.held.add(key)
        self.state.save(self.path, sorted(self.held))

    def finalise(self) -> dict:
        return self.state.finalise()


def _evaluate(job: _Job, plan: _Plan, loaded, ctx: ModelContext) -> tuple[Any, float, float]:
    """Run the plan's unfinished samples through the engine, scoring and caching each as it
    finishes -> (engine counters, wall seconds, seconds spent scoring)."""
    from diffeval.engine import Engine
    from diffeval.tokenizers import stop_ids

    tok, opts = loaded.tokenizer, job.opts
    engine_class = Engine
    if opts.engine == "hf":
        from diffeval.hf_engine import HFEngine as engine_class  # the same interface on transformers
    engine = engine_class(loaded.model, stop_ids=stop_ids(tok) if tok is not None else frozenset(),
                    decode=tok.decode if tok is not None else None, batch_size=opts.batch_size,
                    stats=plan.state.stats if plan.state is not None else None)
    bar = progress_bar(sum(len(plan.work[i]) for i in plan.todo), plan.label, opts.progress and job.world.is_main)
    scoring, started = _Clock(), time.perf_counter()
    try:
        for t, outputs in engine.run([plan.work[i] for i in plan.todo]):
            scoring.restart()
            _keep(job, plan, plan.todo[t], outputs, ctx)
            scoring.lap("score")
            bar.update(len(plan.work[plan.todo[t]]))
    finally:
        bar.close()
        plan.cache.close()
    return engine.counters, time.perf_counter() - started, scoring.laps.get("score", 0.0)


def _keep(job: _Job, plan: _Plan, i: int, outputs: list, ctx: ModelContext) -> None:
    """Score sample i, save its arrays, and add it to the resume cache (and the running state)."""
    scored = job.probe.score(job.cfg, plan.samples[i], outputs, ctx)
    if not isinstance(scored, Scored):
        scored = Scored(scored)
    written = {}
    for suffix, arrays in scored.arrays.items():
        name = f"{safe_name(plan.label)}__{plan.samples[i].id}{suffix}.npz"
        _save_npz(job.out / "arrays" / name, arrays)
        written[name] = file_sha256(job.out / "arrays" / name)
    plan.cache.put(plan.keys[i], {**scored.record, ARRAYS: written} if written else scored.record,
                   keep=not scored.retry)
    if plan.stateful[i]:
        plan.state.add(plan.keys[i])


def _check_data_unchanged(job: _Job) -> None:
    """The data hashes the results record must describe what was read: a data file that
    changed during the run (one that grows) is refused, not recorded with its early hash."""
    if not job.probe.data or not job.data:
        return
    now = job.probe.data(job.cfg)
    if now != job.data:
        changed = sorted(k for k in set(now) | set(job.data) if now.get(k) != job.data.get(k))
        sources = [str((job.data.get(k) or {}).get("source", k)) if isinstance(job.data.get(k), dict) else k
                   for k in changed]
        raise UsageError(f"{', '.join(sources)}: changed while the run read it; its hash would not describe "
                         "what was scored; rerun when the data is final")


def _results(job: _Job, clock: "_Clock") -> dict[str, Any]:
    """Aggregate the records and write samples.jsonl (and prompts.jsonl) -> the results dict."""
    cells, metrics = job.probe.aggregate(job.cfg, job.records, job.models, job.extra)
    clock.lap("aggregate")
    artifacts: dict[str, Any] = {"samples": "samples.jsonl", "figures": []}
    write_jsonl(job.out / "samples.jsonl", job.records)
    if job.prompts:
        write_jsonl(job.out / "prompts.jsonl", job.prompts)
        artifacts["prompts"] = "prompts.jsonl"
    arrays_dir = job.out / "arrays"
    if arrays_dir.exists():
        artifacts["arrays"] = sorted(f"arrays/{p.name}" for p in arrays_dir.glob("*.npz"))
    world = job.world
    return {
        "schema_version": SCHEMA_VERSION, "probe": job.probe.name, "task": job.task, "method": job.probe.method,
        "run": job.opts.settings(), "data": job.data, "models": job.models,
        "cell_keys": ["model", *job.probe.cell_keys], "metrics": metrics, "cells": cells,
        "timing": {"world_size": world.size, "wall_seconds": 0.0, "phases": job.phases, "models": job.timing,
                   "ranks": world.timing()},
        "provenance": {**provenance(job.params.get("seed"), job.opts.device), **world.provenance(),
                       "weights_sha256_from": job.hashed},
        "artifacts": artifacts,
    }


def draw_figures(probe: Probe, run_dir: Path) -> list[Path]:
    """Draw the probe's run-folder figures from the files of `run_dir` -> the files written."""
    from diffeval.plotting import save_figure
    from diffeval.plotting.style import styled
    from diffeval.report.runs import read_run

    run = read_run(run_dir)
    paths: list[Path] = []
    with styled():
        for view in probe.figures():
            fig = view.figure(run.results, run) if view.stem else None
            if fig is not None:
                paths += save_figure(fig, run_dir / view.stem)
    return paths


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


ARRAYS = "_arrays"  # in a resume record: the arrays the sample wrote -> their sha256


def _arrays_intact(out: Path, record: Optional[dict]) -> bool:
    """Whether the arrays a finished sample wrote are still there as written (a record
    without arrays is intact)."""
    files = (record or {}).get(ARRAYS) or {}
    if not isinstance(files, dict):
        return False
    for name, digest in files.items():
        path = out / "arrays" / str(name)
        if "/" in str(name) or str(name).startswith(".") or not path.is_file() or file_sha256(path) != digest:
            return False
    return True


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
    """prompts.jsonl: every request of every sample as text with its special tokens kept
    (BOS, chat turn markers), the ids' sha256 (requests.ids_sha256) and whether encoding the
    text gives the ids back (`retokenizes`: false where a prompt joins separately encoded
    pieces that merge differently, or for the byte tokenizer, whose BOS has no text)."""
    from diffeval.requests import ids_sha256

    text_of = getattr(tok, "text_of", tok.decode)
    rows = []
    for s, reqs in zip(samples, work):
        for j, r in enumerate(reqs):
            ids = list(getattr(r, "prompt", None) or getattr(r, "ids", None))
            text = text_of(ids)
            row = {"model": label, "id": s.id, "request": j, "type": type(r).__name__, "n_tokens": len(ids),
                   "ids_sha256": ids_sha256(ids), "retokenizes": list(tok.encode(text)) == ids, "text": text}
            if getattr(r, "candidates", None):
                row["candidates"] = [text_of(list(c)) for c in r.candidates]
            rows.append(row)
    return rows
