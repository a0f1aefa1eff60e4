"""The probe interface: what a probe module declares so that `run_probe` can run it.

A probe is data plus pure functions:

    Config                              a ProbeConfig: options declared once (probes/config.py)
    generate(cfg, ctx)                  -> [Sample]    pure, seeded, exact token lengths
    requests(cfg, sample, ctx)          -> [Request]   what the engine must compute (diffeval.requests)
    score(cfg, sample, outputs, ctx)    -> Scored      one record (+ arrays to save)
    aggregate(cfg, records, models, extra) -> (cells, metrics)
    views                               Table / Figure declarations: terminal, markdown and
                                        LaTeX tables and figures, drawn from results files only

Samples need an `id` (unique within a model's run) and `to_record()`; records must hold
`n_tokens` (list) and, for generating probes, `prediction` (list, one per question) and
`score`. A probe that accumulates state across samples (activation statistics) declares
`state`: it is created per model, handed to the engine, saved with the resume cache after
each sample, and finalised into `extra[label]` for `aggregate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from diffeval.errors import ConfigError


@dataclass(frozen=True)
class ModelContext:
    """What generate / requests / score may know about the model being run."""

    label: str
    tokenizer: Any  # None when the checkpoint has no tokenizer
    max_positions: int
    allow_beyond: bool = False
    n_layers: int = 0
    n_heads: int = 0
    family: str = "transformer"
    max_new_tokens: Optional[int] = None  # user override of the generation budget
    prompt_format: Any = None  # diffeval.probes.prompts.PromptFormat
    decode: str = "default"  # default | ruler
    service: Any = None  # what the probe's `service(cfg)` made once for the run (a judge client)

    def check_length(self, n: int, what: str = "prompt", field: str = "lengths") -> None:
        """Refuse a prompt longer than the model's position limit unless allowed; `field` is
        the parameter that made it long."""
        if n > self.max_positions and not self.allow_beyond:
            raise ConfigError(f"a {what} of {n} tokens exceeds the position limit of {self.label} "
                              f"({self.max_positions} tokens); ask for less or use "
                              "--allow-beyond-max-positions", field=field)

    def need_tokenizer(self, probe: str):
        if self.tokenizer is None:
            raise ConfigError(f"{self.label} has no tokenizer.json; the {probe} probe needs one to build text prompts")
        return self.tokenizer


@dataclass(frozen=True)
class Generated:
    """What `generate` returns when it has more to say than its samples: `notes`, what it
    decided for this model (pool sizes, shots per length), go into results models[].notes."""

    samples: list
    notes: dict


@dataclass
class Scored:
    """One sample's record, and arrays to save as arrays/<model>__<sample id><suffix>.npz."""

    record: dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # suffix -> arrays
    retry: bool = False  # not finished (a service failed): kept for this run's results, not resumed


@dataclass(frozen=True)
class TableData:
    """A table as data: one renderer draws it on the terminal, in markdown and in LaTeX.
    `styles`: row index -> "bold" | "dim"; `sections`: row indices a rule goes before;
    `notes`: lines printed under the table."""

    title: str
    header: list[str]
    rows: list[list[str]]
    styles: dict[int, str] = field(default_factory=dict)
    sections: frozenset[int] = frozenset()
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Table:
    """A table a probe declares: `build(results) -> TableData` (with `across_runs`, build
    takes a list of results, one row group per run). `in_run`: printed after a run; every
    table is also a kind of `diffeval figures` recipes."""

    kind: str
    build: Callable
    in_run: bool = True
    across_runs: bool = False


@dataclass(frozen=True)
class Figure:
    """A figure a probe declares: `draw(results, run) -> matplotlib Figure | None` (None: the
    run has nothing to draw), `run` the run folder (`path`, `samples()`); `draw` may name a
    function of diffeval.plotting as "module:function" (imported when drawn, so that probes
    load without matplotlib). `stem`: its file name in a run folder (None: drawn only by
    recipes). `kind` names it in recipes."""

    kind: str
    draw: Any
    stem: Optional[str] = None

    def figure(self, results: dict, run):
        draw = self.draw
        if isinstance(draw, str):
            import importlib

            module, name = draw.split(":")
            draw = getattr(importlib.import_module(f"diffeval.plotting.{module}"), name)
        return draw(results, run)


RUN_FEATURES = ("prompt_format", "batch", "decode")  # run options a probe may or may not use


@dataclass(frozen=True)
class Probe:
    name: str
    version: int  # bump when samples or scores for the same config change
    Config: type  # a ProbeConfig dataclass: its fields declare the probe's options
    generate: Callable
    requests: Callable
    score: Callable
    aggregate: Callable
    cell_keys: tuple[str, ...]  # besides "model"
    views: tuple = ()  # Table and Figure declarations
    grid_params: tuple[str, ...] = ()  # params that only choose which samples exist (not in resume keys)
    data: Optional[Callable[[Any], dict]] = None  # content hashes of data files / folders
    state: Optional[Callable] = None  # (cfg, ctx) -> ProbeState
    group: Optional[Callable[[Any], Optional[str]]] = None  # sample -> key of the samples sharing a prompt
    # prefix (one rank under torchrun, so the prefix KV cache is reused); None: the sample alone
    service: Optional[Callable[[Any], Any]] = None  # cfg -> what scoring shares over a run (ctx.service)
    uses: tuple[str, ...] = RUN_FEATURES  # of RUN_FEATURES: the run options that apply
    native_only: str = ""  # why the probe needs diffeval's own model code (--engine hf refused); "": any engine
    description: str = ""  # one line, for listings
    summary: str = ""  # the command's help text
    examples: tuple[str, ...] = ()  # command lines for the help; the first runs as written on the zoo
    quick: dict = field(default_factory=dict)  # parameters of a run of seconds on tiny models (the tests')
    method: str = ""  # how samples are scored and aggregated, written into results.json

    def config(self, params: dict):
        return self.Config.from_params(params)

    @property
    def aliases(self) -> dict[str, str]:
        return self.Config.aliases()

    def tables(self) -> list[Table]:
        return [v for v in self.views if isinstance(v, Table)]

    def figures(self) -> list[Figure]:
        return [v for v in self.views if isinstance(v, Figure)]


class ProbeState:
    """Per-model accumulator of a stateful probe (see module doc)."""

    stats: Any = None  # handed to the engine as its activation statistics

    def save(self, path: Path, keys: list[str]) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> list[str]:
        """Restore from `path`; returns the sample keys the saved state holds."""
        raise NotImplementedError

    def finalise(self) -> dict:
        raise NotImplementedError


def metric(value: Optional[float], n: int, higher_is_better: Optional[bool], ci95=None, **extra) -> dict:
    """One metric in the results contract: value, n, direction (None: descriptive, no
    better or worse), optional 95% interval."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
    else:
        value = None if value is None or not np.isfinite(value) else round(float(value), 6)
    out: dict[str, Any] = {"value": value, "n": int(n),
                           "higher_is_better": None if higher_is_better is None else bool(higher_is_better)}
    if ci95 is not None:
        out["ci95"] = [round(float(x), 6) for x in ci95]
    out.update(extra)
    return out


def rate(k: float, n: int, higher_is_better: Optional[bool], **extra) -> dict:
    """A share k / n as a metric with its Wilson 95% interval."""
    from diffeval.stats import wilson

    return metric(k / n, n, higher_is_better, wilson(k, n), **extra)


def by_model(records: list[dict], models: list[dict], summarise: Callable) -> tuple[list[dict], dict]:
    """The cells and metrics of every model in run order: `summarise(model, its records)` ->
    (cells, metrics) for one model."""
    cells: list[dict] = []
    metrics: dict[str, dict] = {}
    for m in models:
        mine, metrics[m["label"]] = summarise(m, [r for r in records if r["model"] == m["label"]])
        cells.extend(mine)
    return cells, metrics
