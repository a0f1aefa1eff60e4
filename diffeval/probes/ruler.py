"""`ruler`: RULER's synthetic suite (Hsieh et al. 2024) — eight NIAH settings, variable
tracking, common- and frequent-words extraction — at exact prompt lengths, scored with
RULER's string_match_all, and the effective context length under three definitions.
Generators: `probes/ruler_tasks.py`. Cells: (model, task, length)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diffeval.errors import ConfigError, did_you_mean
from diffeval.probes import retrieval as R
from diffeval.probes import ruler_tasks as T
from diffeval.probes.base import Figure, Probe, Table, TableData, by_model, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.haystack import load_haystack
from diffeval.probes.scoring import answer_text, string_match_all, string_match_part
from diffeval.requests import Generate, ids_sha256
from diffeval.specs import length_label
from diffeval.stats import mean_per_cell, wilson

VERSION = 1
_TASK_KEY = int.from_bytes(b"ruler", "big")
THRESHOLD = 85.6  # RULER's: Llama-2-7B's average at 4K
RELATIVE = 0.85  # relative definition: share of the model's own shortest-length average
METRIC_FNS = {**dict.fromkeys(("niah", "vt", "cwe", "fwe"), string_match_all), "qa": string_match_part}


def parse_tasks(value) -> tuple[str, ...]:
    """Task names: a comma-separated string or a list; "synthetic" stands for all of them."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"{value!r} must be a list of task names", "tasks")
    names = [str(n).strip() for n in names if str(n).strip()]
    return tuple(t for n in names for t in (T.SYNTHETIC if n == "synthetic" else (n,)))


@dataclass(frozen=True)
class RulerConfig(ProbeConfig):
    PROBE = "ruler"
    lengths: tuple[int, ...] = R.lengths_option(ModelDefault(grid=True, reserve=R.ANSWER_RESERVE))
    tasks: tuple[str, ...] = option(T.SYNTHETIC, parse=parse_tasks, shown="synthetic",
                                    help="RULER tasks, comma-separated; synthetic = " + ", ".join(T.SYNTHETIC)
                                    + "; qa_1, qa_2 with --qa-data.")
    samples: int = option(10, help="Samples per (task, length) cell.")
    haystack: str = option("essay", help="Haystack of the essay tasks: essay (generated prose standing in for "
                                         "Paul Graham's essays) or a text file / folder.")
    qa_data: str = option("", help="RULER's QA data for qa_1 (and, after a comma, qa_2): JSONL, one question a line, "
                                   '{"query", "outputs": [answers], "context": [its documents]}.')
    threshold: float = option(THRESHOLD, help="Effective-length threshold, 0-100 (RULER: 85.6, Llama-2-7B at 4K).")
    seed: int = R.seed_option()

    def __post_init__(self) -> None:
        grid = R.NeedleGrid(self.lengths, (0.0,), samples=self.samples, haystack=self.haystack, seed=self.seed)
        object.__setattr__(self, "lengths", grid.lengths)
        if not self.tasks:
            raise ConfigError("is empty: give at least one task", "tasks")
        for name in self.tasks:
            if name not in T.TASKS:
                raise ConfigError(f"{name!r} is unknown: {did_you_mean(name, T.TASKS)}", "tasks")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"{list(self.tasks)} repeat a task", "tasks")
        files = T.qa_paths(self.qa_data)
        for name in (n for n in self.tasks if n in T.QA_TASKS and T.QA_TASKS.index(n) >= len(files)):
            raise ConfigError(f"{name} needs its JSONL file in qa_data ({self.qa_data!r})", "qa_data")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 100.0:
            raise ConfigError(f"{t!r} must be a number between 0 and 100", "threshold")
        object.__setattr__(self, "threshold", float(t))

    def extra(self) -> dict:
        return {"suite": "synthetic and QA" if any(n in T.QA_TASKS for n in self.tasks) else "synthetic (no QA data)"}


@dataclass(frozen=True)
class Sample:
    id: str
    task: str
    length: int
    index: int
    prompt: tuple[int, ...]
    answers: tuple[str, ...]
    budget: int
    info: dict

    def to_record(self) -> dict:
        return {"id": self.id, "task": self.task, "length": self.length, "index": self.index,
                "n_tokens": [len(self.prompt)], "expected": list(self.answers), "max_new_tokens": self.budget,
                "prompt_sha256": [ids_sha256(self.prompt)], **self.info}


def _generate(cfg: RulerConfig, ctx) -> list[Sample]:
    tok, fmt = ctx.need_tokenizer("ruler"), ctx.prompt_format
    hay, files = load_haystack(cfg.haystack), T.qa_paths(cfg.qa_data)
    qa = {name: T.load_qa(files[T.QA_TASKS.index(name)]) for name in cfg.tasks if name in T.QA_TASKS}
    out = []
    for length in sorted(cfg.lengths):
        for name in cfg.tasks:
            task = T.TASKS[name]
            budget = ctx.max_new_tokens or task.budget
            ctx.check_length(length + budget, f"{name} prompt with its generation budget")
            task_key = int.from_bytes(name.encode(), "big") % 2 ** 63
            for index in range(cfg.samples):
                ss = np.random.SeedSequence([cfg.seed, _TASK_KEY, task_key, length, index])
                p = T.generate_prompt(task, tok, fmt, hay, length, ss, qa.get(name), index)
                out.append(Sample(f"{name}-L{length}-s{index}", name, length, index, p.ids, p.answers, budget, p.info))
    return out


def _requests(cfg: RulerConfig, s: Sample, ctx) -> list:
    return [Generate(s.prompt, s.budget, None if ctx.decode == "ruler" else "\n")]


def _score(cfg: RulerConfig, s: Sample, outputs: list, ctx) -> dict:
    answer = answer_text(ctx.tokenizer, outputs[0], ctx.decode)
    score = METRIC_FNS[T.TASKS[s.task].kind](s.answers, answer)
    return {**s.to_record(), "prediction": [answer], "score": score, "all_correct": score == 1.0}


def _prefix_length(lengths: list[int], passes) -> int:
    """The longest length L such that it and every shorter length pass (0: the shortest fails)."""
    best = 0
    for L in lengths:
        if not passes(L):
            break
        best = L
    return best


def effective_lengths(avg: dict[int, float], per_task: dict[int, list[float]], threshold: float) -> dict[str, int]:
    """Effective length (scores in 0-100) -> {"ruler", "relative", "strict"}: the longest
    length up to which the task average stays >= threshold (RULER), >= 85% of the shortest
    length's average (relative), and every task stays >= threshold (strict)."""
    lengths = sorted(avg)
    base = avg[lengths[0]]
    return {"ruler": _prefix_length(lengths, lambda L: avg[L] >= threshold),
            "relative": _prefix_length(lengths, lambda L: base > 0 and avg[L] >= RELATIVE * base),
            "strict": _prefix_length(lengths, lambda L: min(per_task[L]) >= threshold)}


def weighted_averages(avg: dict[int, float]) -> dict[str, float]:
    """RULER's wAvg: weights rising (inc) or falling (dec) linearly with the length's rank."""
    lengths = sorted(avg)
    n = len(lengths)
    inc = [k + 1 for k in range(n)]
    return {w: math.fsum(x * avg[L] for x, L in zip(ws, lengths)) / sum(ws)
            for w, ws in (("increasing", inc), ("decreasing", inc[::-1]))}


def _summarise(cfg: RulerConfig, model: dict, rows: list[dict]):
    label = model["label"]
    cells = [{"model": label, **c, "mean": round(c["mean"], 6), "ci95": [round(x, 6) for x in c["ci95"]]}
             for c in mean_per_cell(rows, ("task", "length"))]
    n = len(rows)
    per_task: dict[int, list[float]] = {}
    for c in cells:
        per_task.setdefault(c["length"], []).append(100.0 * c["mean"])
    avg = {L: math.fsum(v) / len(v) for L, v in per_task.items()}
    total = math.fsum(r["score"] for r in rows)
    out = {"score": metric(total / n, n, True, wilson(total, n))}
    for L in sorted(avg):
        k = sum(c["n"] for c in cells if c["length"] == L)
        out[f"score@length={L}"] = metric(avg[L] / 100, k, True, wilson(avg[L] / 100 * k, k))
    for name in cfg.tasks:
        mine = [c for c in cells if c["task"] == name]
        if mine:
            k = sum(c["n"] for c in mine)
            mean = math.fsum(c["mean"] for c in mine) / len(mine)
            out[f"score@task={name}"] = metric(mean, k, True, wilson(mean * k, k))
    eff = effective_lengths(avg, per_task, cfg.threshold)
    out["effective_length"] = metric(eff["ruler"], n, True, threshold=cfg.threshold)
    out["effective_length@definition=relative"] = metric(eff["relative"], n, True, share=RELATIVE)
    out["effective_length@definition=strict"] = metric(eff["strict"], n, True, threshold=cfg.threshold)
    for w, v in weighted_averages(avg).items():
        out[f"score_wavg@weights={w}"] = metric(v / 100, n, True)
    return cells, out


def _table(results: dict) -> TableData:
    p = results["task"]["params"]
    lengths = sorted({c["length"] for c in results["cells"]})
    labels = [m["label"] for m in results["models"]]
    cells = {(c["model"], c["task"], c["length"]): c for c in results["cells"]}
    header = ["task", *[f"{m}\n{length_label(L)}" for m in labels for L in lengths]]
    rows = [[t, *[f"{100 * cells[(m, t, L)]['mean']:.1f}" if (m, t, L) in cells else "-"
                  for m in labels for L in lengths]] for t in p["tasks"]]
    rows.append(["avg", *[f"{100 * results['metrics'][m][f'score@length={L}']['value']:.1f}"
                          for m in labels for L in lengths]])
    notes = []
    for m in labels:
        met = results["metrics"][m]
        eff = [f"{d} {length_label(v) if v else 'none'}" for d, v in
               (("RULER", met["effective_length"]["value"]),
                ("relative", met["effective_length@definition=relative"]["value"]),
                ("strict", met["effective_length@definition=strict"]["value"]))]
        notes.append(f"{m}: effective length {', '.join(eff)} (threshold {p['threshold']:g}); wAvg inc "
                     f"{100 * met['score_wavg@weights=increasing']['value']:.1f}, dec "
                     f"{100 * met['score_wavg@weights=decreasing']['value']:.1f}")
    title = f"RULER score (0-100) by task and length ({p['samples']} samples per cell, haystack {p['haystack']})"
    return TableData(title, header, rows, styles={len(rows) - 1: "bold"}, notes=notes)


def _heatmap(results: dict, run):
    from matplotlib.figure import Figure as MplFigure

    from diffeval.plotting.needle import CMAP

    p, labels = results["task"]["params"], [m["label"] for m in results["models"]]
    tasks, lengths = [*p["tasks"], "avg"], sorted({c["length"] for c in results["cells"]})
    size = (max(4.0, 1.6 + 0.8 * len(lengths) * len(labels)), 0.9 + 0.32 * len(tasks))
    fig = MplFigure(figsize=size, layout="constrained")
    for k, (m, ax) in enumerate(zip(labels, np.atleast_1d(fig.subplots(1, len(labels), squeeze=False)[0]))):
        grid = np.full((len(tasks), len(lengths)), np.nan)  # (tasks + 1, L)
        for c in results["cells"]:
            if c["model"] == m:
                grid[p["tasks"].index(c["task"]), lengths.index(c["length"])] = 100 * c["mean"]
        grid[-1] = [100 * results["metrics"][m][f"score@length={L}"]["value"] for L in lengths]
        ax.imshow(grid, cmap=CMAP, vmin=0, vmax=100, aspect="auto")
        ax.axhline(len(tasks) - 1.5, color="white", lw=2)  # the average row below the tasks
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [length_label(L) for L in lengths])
        ax.set_yticks(range(len(tasks)), tasks if k == 0 else [""] * len(tasks))
        ax.set_title(m, fontsize=9)
    fig.suptitle("RULER score by task and length", fontsize=10)
    return fig


PROBE = Probe(
    name="ruler", version=VERSION, Config=RulerConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=lambda cfg, records, models, extra: by_model(records, models, lambda m, rows: _summarise(cfg, m, rows)),
    cell_keys=("task", "length"), grid_params=("lengths", "samples", "tasks"),
    data=lambda cfg: {**R.haystack_data(cfg.haystack), **T.qa_files(cfg.qa_data)},
    views=(Figure("ruler_heatmap", _heatmap, stem="ruler_heatmap"), Table("ruler_tasks", _table)),
    quick={"tasks": ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe"], "lengths": [512], "samples": 1},
    description="RULER's synthetic suite (NIAH, VT, CWE, FWE) and effective length",
    summary="RULER (Hsieh et al. 2024): eight needle-in-a-haystack settings, variable tracking, common- and\n"
            "frequent-words extraction (and QA on your JSONL) at exact prompt lengths; string_match_all per (task, length), the\n"
            "average over tasks, and the effective length (RULER's threshold, relative, strict).",
    examples=("diffeval ruler --len 512 --samples 2", "diffeval ruler --ckpt path/to/model --len 4k:128k"),
    method="greedy answer; score = RULER string_match_all (share of expected values in the answer, case-"
           "insensitive; qa: string_match_part, any of them); cells: mean, n, Wilson 95% interval; "
           "per-length average: unweighted over tasks; effective length: longest length up to which the "
           "average (RULER), 85% of the shortest length's average (relative) or every task (strict) stays "
           "at or above the threshold")
