"""`ruler`: RULER's synthetic suite (Hsieh et al. 2024) — eight NIAH settings, variable
tracking, common- and frequent-words extraction — at exact lengths (as RULER counts them: prompt plus the task's
generation budget), scored with RULER's string_match_all, and the effective context length under three definitions.
Generators: `probes/ruler_tasks.py`. Cells: (model, task, length)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from diffeval.errors import ConfigError, UsageError, did_you_mean
from diffeval.probes import effective as E
from diffeval.probes import retrieval as R
from diffeval.probes import ruler_tasks as T
from diffeval.probes.base import Figure, Probe, Table, TableData, by_model, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.haystack import load_haystack
from diffeval.probes.scoring import answer_text, string_match_all, string_match_part
from diffeval.requests import Generate, ids_sha256
from diffeval.specs import check_int, length_label
from diffeval.stats import mean_per_cell, wilson

VERSION = 2  # 2: lengths count the generation budget (RULER's); BOS by the tokenizer's rule, chat as apply_chat_template
_TASK_KEY = int.from_bytes(b"ruler", "big")
THRESHOLD = 85.6  # RULER's: Llama-2-7B's average at 4K
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
    lengths: tuple[int, ...] = R.lengths_option(ModelDefault(grid=True))  # a length holds its budget (RULER)
    tasks: tuple[str, ...] = option(T.SYNTHETIC, parse=parse_tasks, shown="synthetic",
                                    help="RULER tasks, comma-separated; synthetic = " + ", ".join(T.SYNTHETIC)
                                    + "; qa_1, qa_2 with --qa-data.")
    samples: int = option(10, help="Samples per (task, length) cell.")
    haystack: str = option("essay", help="Haystack of the essay tasks: essay (generated prose standing in for "
                                         "Paul Graham's essays) or a text file / folder.")
    qa_data: str = option("", help="RULER's QA data for qa_1 (and, after a comma, qa_2): JSONL, one question a line, "
                                   '{"query", "outputs": [answers], "context": [its documents]}.')
    vt_hops: int = option(4, help="Variable tracking: hops per chain (RULER: 4).")
    vt_chains: int = option(1, help="Variable tracking: chains in the context, the first one asked (RULER: 1).")
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
        check_int("vt_hops", self.vt_hops, 1, 1000)
        check_int("vt_chains", self.vt_chains, 1, 100)
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
            task = replace(T.TASKS[name], hops=cfg.vt_hops, chains=cfg.vt_chains) if name == "vt" else T.TASKS[name]
            budget, n_prompt = ctx.max_new_tokens or task.budget, length - task.budget
            ctx.check_length(max(length, n_prompt + budget), f"{name} prompt with its generation budget")
            if n_prompt < 1:
                raise ConfigError(f"{length} leaves no prompt after {name}'s {task.budget}-token generation budget "
                                  "(RULER's lengths count prompt and generation)", "lengths")
            task_key = int.from_bytes(name.encode(), "big") % 2 ** 63
            for index in range(cfg.samples):
                ss = np.random.SeedSequence([cfg.seed, _TASK_KEY, task_key, length, index])
                try:
                    p = T.generate_prompt(task, tok, fmt, hay, n_prompt, ss, qa.get(name), index)
                except UsageError as err:
                    flags = " with --vt-hops/--vt-chains" if name == "vt" else ""
                    raise UsageError(f"--len {length}: {name} gets {n_prompt} prompt tokens after its "
                                     f"{task.budget}-token generation budget{flags}, and {err}") from None
                out.append(Sample(f"{name}-L{length}-s{index}", name, length, index, p.ids, p.answers, budget, p.info))
    return out


def _requests(cfg: RulerConfig, s: Sample, ctx) -> list:
    return [Generate(s.prompt, s.budget, None if ctx.decode == "ruler" else "\n")]


def _score(cfg: RulerConfig, s: Sample, outputs: list, ctx) -> dict:
    answer = answer_text(ctx.tokenizer, outputs[0], ctx.decode)
    score = METRIC_FNS[T.TASKS[s.task].kind](s.answers, answer)
    return {**s.to_record(), "prediction": [answer], "score": score, "all_correct": score == 1.0}


def _summarise(cfg: RulerConfig, model: dict, rows: list[dict]):
    label = model["label"]
    cells = [{"model": label, **c, "mean": round(c["mean"], 6), "ci95": [round(x, 6) for x in c["ci95"]]}
             for c in mean_per_cell(rows, ("task", "length"))]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["length"]), []).append(r)
    eff = E.effective({k: E.Cell(np.array([r["score"] for r in g]),
                                 np.array([r["depth"] for r in g]) if "depth" in g[0] else None)
                       for k, g in groups.items()}, cfg.threshold, seed=cfg.seed)
    n = len(rows)
    total = math.fsum(r["score"] for r in rows)
    out = {"score": metric(total / n, n, True, wilson(total, n))}
    for L, avg in zip(eff["lengths"], eff["avg"]):  # Wilson on the pooled cells (a bootstrap collapses at 0 and 1)
        k = sum(c["n"] for c in cells if c["length"] == L)
        out[f"score@length={L}"] = metric(avg / 100, k, True, wilson(avg / 100 * k, k))
    for name in cfg.tasks:
        mine = [c for c in cells if c["task"] == name]
        if mine:
            k = sum(c["n"] for c in mine)
            mean = math.fsum(c["mean"] for c in mine) / len(mine)
            out[f"score@task={name}"] = metric(mean, k, True, wilson(mean * k, k))
    for d, name in E.METRICS.items():
        extra = {"share": E.RELATIVE} if d == "relative" else {"threshold": cfg.threshold}
        out[name] = metric(eff[d], n, True, eff[d + "_ci95"], **extra)
    for w, v in E.weighted_averages(eff["avg"]).items():
        out[f"score_wavg@weights={w}"] = metric(v / 100, n, True)
    return cells, out


def _span(m: dict) -> str:
    """An effective length with its interval: "2K (95% 1K-4K)"; "none" for 0."""
    name = lambda v: length_label(int(v)) if v else "none"  # noqa: E731
    lo, hi = m.get("ci95", (m["value"], m["value"]))
    return f"{name(m['value'])} (95% {name(lo)}-{name(hi)})"


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
        eff = ", ".join(f"{'RULER' if d == 'ruler' else d} {_span(met[name])}" for d, name in E.METRICS.items())
        notes.append(f"{m}: effective length {eff} (threshold {p['threshold']:g}; 95% bootstrap intervals); wAvg inc "
                     f"{100 * met['score_wavg@weights=increasing']['value']:.1f}, dec "
                     f"{100 * met['score_wavg@weights=decreasing']['value']:.1f}")
    title = f"RULER score (0-100) by task and length ({p['samples']} samples per cell, haystack {p['haystack']})"
    return TableData(title, header, rows, styles={len(rows) - 1: "bold"}, notes=notes)


PROBE = Probe(
    name="ruler", version=VERSION, Config=RulerConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=lambda cfg, records, models, extra: by_model(records, models, lambda m, rows: _summarise(cfg, m, rows)),
    cell_keys=("task", "length"), grid_params=("lengths", "samples", "tasks"),
    data=lambda cfg: {**R.haystack_data(cfg.haystack), **T.qa_files(cfg.qa_data)},
    views=(Figure("ruler_heatmap", "ruler:heatmap_view", stem="ruler_heatmap"),
           Figure("ruler_curve", "ruler:curve_view", stem="ruler_curve"), Table("ruler_tasks", _table)),
    quick={"tasks": ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe"], "lengths": [640], "samples": 1},
    description="RULER's synthetic suite (NIAH, VT, CWE, FWE) and effective length",
    summary="RULER (Hsieh et al. 2024): eight needle-in-a-haystack settings, variable tracking, common- and\n"
            "frequent-words extraction (and QA on your JSONL) at exact lengths (prompt + budget); string_match_all per (task, length), the\n"
            "average over tasks, and the effective length (RULER's threshold, relative, strict).",
    examples=("diffeval ruler --len 512 --samples 2", "diffeval ruler --ckpt path/to/model --len 4k:128k"),
    method="length = prompt tokens + the task's generation budget (RULER's max_seq_length); greedy answer; score = RULER string_match_all (share of expected values in the answer, case-"
           "insensitive; qa: string_match_part, any of them); cells: mean, n, Wilson 95% interval; "
           "per-length average: unweighted over tasks; effective length: longest length up to which the "
           "average (RULER), 85% of the shortest length's average (relative) or every task (strict) stays "
           "at or above the threshold")
