"""`halluc`: contextual hallucination, judge-free by default (the DIFF paper's section 3.6).

Synthetic long-context QA (so every model and CI can run it): a context of exactly `length`
tokens holds facts in the needle style ("The magic number for brave-falcon is 1234567.")
and three questions are asked over it:

    answerable    the asked fact is present (its key has no look-alike in the context)
    confusable    the asked fact is present, and so is a fact that differs only in the key
                  (the same noun with another adjective: bold-falcon) -- the noise a model
                  must not attend to
    unanswerable  the asked key occurs nowhere in the context; the expected output is the
                  abstain string (default "unknown")

User data: a .jsonl with `context`, `question` (absent: summarisation), optional `answers`
(a list) and `answerable`.

Each answer gets one outcome: `correct`, `abstained`, `confused` (a value that the context
gives for another key; for user data: an answer fully supported by the context but not the
expected one), `hallucinated` (asserts a number, name or content word the context does not
contain), `wrong` otherwise (empty, or a partial answer). A summary gets a support score:
the fraction of its content units (numbers, capitalised names, content words) found in the
source, with the unsupported ones listed. An optional judge (probes/judge.py) adds the
paper's binary verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes import needle as N
from diffeval.probes.base import Probe, metric
from diffeval.probes.specs import check_int, check_keys, parse_grid

NAME = "halluc"
VERSION = 1
KINDS = ("answerable", "confusable", "unanswerable")
OUTCOMES = ("correct", "abstained", "confused", "hallucinated", "wrong")
_TASK_KEY = int.from_bytes(NAME.encode("ascii"), "big")
FACT = N.NeedleKind("halluc", N.CITY_NEEDLE, N.CITY_QUESTION, N.CITY_ANSWER, "pair", "number")
QUESTION = "{question} If the text does not say, answer \"{abstain}\"."
SUMMARY_TASK = "Summarize the text above in a few sentences."
STOPWORDS = frozenset("""a about above after again against all also although among an and any are as at be because
been before being below between both but by can could did do does doing down during each either else
even ever every few for from further had has have having he her here hers herself him himself his how
however i if in into is it its itself just least less like made make many may me might more most much
must my myself neither never no nor not now of off often on once one only or other others our ours
ourselves out over own per perhaps rather same several she should since so some such than that the their
theirs them themselves then there therefore these they this those though through thus to too toward under
until up upon us very via was we well were what when where whether which while who whom whose why will
with within without would yet you your yours yourself yourselves text says said answer summary""".split())


@dataclass(frozen=True)
class HallucConfig:
    data: str = "synthetic"  # synthetic | a .jsonl file
    lengths: tuple[int, ...] = (1024,)  # synthetic context lengths (the first question's prompt, exact)
    samples: int = 10  # synthetic contexts per length (3 questions each)
    n_facts: int = 6  # facts in a synthetic context (the asked, the confusable pair, distractors)
    haystack: str = "essay"
    abstain: str = "unknown"
    max_new_tokens: int = 32  # per answer (summaries: 4x)
    judge_url: Optional[str] = None
    judge_model: Optional[str] = None
    judge_timeout: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        for n in self.lengths:
            check_int("lengths", n, 1)
        check_int("samples", self.samples, 1)
        check_int("n_facts", self.n_facts, 3)
        if self.n_facts > len(N.KEY_NOUNS) - 1:
            raise ConfigError(f"{self.n_facts} exceeds the {len(N.KEY_NOUNS) - 1} facts available", "n_facts")
        if not isinstance(self.abstain, str) or not self.abstain.strip() or re.search(r"\d", self.abstain):
            raise ConfigError(f"{self.abstain!r} must be a word or phrase without digits", "abstain")
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if (self.judge_url is None) != (self.judge_model is None):
            raise ConfigError("a judge needs both a URL and a model name", "judge_model")
        if not self.judge_timeout > 0:
            raise ConfigError(f"{self.judge_timeout} must be > 0 seconds", "judge_timeout")
        check_int("seed", self.seed, 0)

    def to_dict(self) -> dict:
        return {"data": self.data, "lengths": list(self.lengths), "samples": self.samples, "n_facts": self.n_facts,
                "haystack": self.haystack, "abstain": self.abstain, "max_new_tokens": self.max_new_tokens,
                "judge_url": self.judge_url, "judge_model": self.judge_model, "judge_timeout": self.judge_timeout,
                "seed": self.seed}


def config(params: dict) -> HallucConfig:
    check_keys(params, {f.name for f in fields(HallucConfig)}, NAME)
    return HallucConfig(**parse_grid(params))


# --- samples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    id: str
    length: Optional[int]
    index: int
    prompts: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...]  # per prompt: answerable / confusable / unanswerable / summary
    questions: tuple[Optional[str], ...]
    answers: tuple[tuple[str, ...], ...]  # per prompt: accepted answers (empty: abstain / summary)
    others: tuple[tuple[str, ...], ...]  # per prompt: values the context gives for other keys
    context: str
    facts: tuple[tuple[str, str], ...] = ()  # synthetic: (key, value) in the context


def _keys(rng: np.random.Generator, n_facts: int) -> tuple[list[str], str]:
    """Context keys (asked, confusable, its look-alike, distractors) and the absent key: every
    noun distinct except the confusable pair's, the absent key's noun unused."""
    nouns = [N.KEY_NOUNS[i] for i in rng.choice(len(N.KEY_NOUNS), size=n_facts, replace=False)]
    adjs = [N.KEY_ADJECTIVES[i] for i in rng.choice(len(N.KEY_ADJECTIVES), size=n_facts + 1, replace=False)]
    keys = [f"{adjs[0]}-{nouns[0]}", f"{adjs[1]}-{nouns[1]}", f"{adjs[2]}-{nouns[1]}"]
    keys += [f"{adjs[i + 1]}-{nouns[i]}" for i in range(2, n_facts - 1)]
    return keys, f"{adjs[n_facts]}-{nouns[n_facts - 1]}"


def _synthetic(cfg: HallucConfig, tok, ctx) -> list[_Sample]:
    from diffeval.probes.haystack import load_haystack
    from diffeval.probes.prompts import PieceEncoder

    hay = load_haystack(cfg.haystack)
    enc = PieceEncoder(tok)
    fmt = ctx.prompt_format
    bos = fmt.prefix_ids(tok)
    out = []
    for length in cfg.lengths:
        ctx.check_length(length + 16, "context")
        for index in range(cfg.samples):
            ss_keys, ss_hay, ss_place = np.random.SeedSequence([cfg.seed, _TASK_KEY, length, index]).spawn(3)
            rng = np.random.Generator(np.random.PCG64(ss_keys))
            for _ in range(N._MAX_ATTEMPTS):
                keys, absent = _keys(rng, cfg.n_facts)
                values = [str(v) for v in rng.choice(9_000_000, size=len(keys), replace=False) + 1_000_000]
                needles = [N.make_needle(FACT, k, v) for k, v in zip(keys, values)]
                asked = [needles[0], needles[1], N.make_needle(FACT, absent, "0")]
                suffixes = [N.question_suffix(QUESTION.format(question=n.question, abstain=cfg.abstain), n.answer, fmt)
                            for n in asked]
                depth = float(rng.uniform(0, 100))
                built = N.assemble(tok, enc, bos, hay, needles, suffixes, length, [depth], ss_hay, ss_place)
                if built is not None and absent.lower() not in built[0].context.lower():
                    break
            else:
                raise ConfigError(f"haystack {cfg.haystack!r}: no clean context after {N._MAX_ATTEMPTS} draws "
                                  f"(length {length}, sample {index})", "haystack")
            b = built[0]
            prompts = (b.ids, *(tuple(bos + list(tok.encode(b.context + s))) for s in suffixes[1:]))
            for p in prompts:
                ctx.check_length(len(p) + cfg.max_new_tokens, "prompt")
            others = tuple(tuple(v for v in values if v != own) for own in (values[0], values[1], ""))
            out.append(_Sample(f"L{length}-s{index}", length, index, prompts, KINDS, tuple(n.key for n in asked),
                               ((values[0],), (values[1],), ()), others, b.context, tuple(zip(keys, values))))
    return out


def _user(cfg: HallucConfig, tok, ctx) -> list[_Sample]:
    from diffeval.probes.text import jsonl_rows

    path = Path(cfg.data).expanduser()
    if not path.is_file() or path.suffix != ".jsonl":
        raise ConfigError(f"{cfg.data!r}: give synthetic or a .jsonl file", "data")
    fmt = ctx.prompt_format
    out = []
    for n, row in enumerate(jsonl_rows(path, "data"), start=1):
        context = row.get("context")
        if not isinstance(context, str) or not context.strip():
            raise ConfigError(f"file {path} line {n}: no 'context' text", "data")
        question = row.get("question")
        answers = row.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ConfigError(f"file {path} line {n}: 'answers' must be a list of strings", "data")
        if question is None:
            kind, suffix = "summary", f"\n\n{SUMMARY_TASK}" + ("\nSummary:" if fmt.name == "plain" else fmt.tail)
        else:
            answerable = row.get("answerable", bool(answers))
            if answerable and not answers:
                raise ConfigError(f"file {path} line {n}: an answerable question needs 'answers'", "data")
            kind = "answerable" if answerable else "unanswerable"
            q = QUESTION.format(question=str(question).strip(), abstain=cfg.abstain)
            suffix = f"\n\nQuestion: {q}" + ("\nAnswer:" if fmt.name == "plain" else fmt.tail)
        ids = tuple(fmt.prefix_ids(tok) + list(tok.encode(context + suffix)))
        ctx.check_length(len(ids) + cfg.max_new_tokens, f"prompt (line {n})", "data")
        out.append(_Sample(f"line{n}", None, n, (ids,), (kind,), (question,),
                           (tuple(answers) if kind == "answerable" else (),), ((),), context))
    if not out:
        raise ConfigError(f"file {path} holds no examples", "data")
    return out


def _generate(cfg: HallucConfig, ctx) -> list[_Sample]:
    tok = ctx.need_tokenizer(NAME)
    return _synthetic(cfg, tok, ctx) if cfg.data == "synthetic" else _user(cfg, tok, ctx)


def _requests(cfg: HallucConfig, s: _Sample, ctx) -> list:
    from diffeval.engine import Generate

    budget = ctx.max_new_tokens or cfg.max_new_tokens
    return [Generate(p, budget * 4 if k == "summary" else budget, "\n\n" if k == "summary" else "\n")
            for p, k in zip(s.prompts, s.kinds)]


# --- scoring ----------------------------------------------------------------------------------
_UNIT = re.compile(r"\d[\d,.]*\d|\d|[A-Za-z][A-Za-z'-]*")


def content_units(text: str) -> list[str]:
    """Numbers, capitalised names and content words (4+ letters, not stop words) of a text."""
    out = []
    for u in _UNIT.findall(text):
        if u[0].isdigit() or u[0].isupper() or (len(u) >= 4 and u.lower() not in STOPWORDS):
            out.append(u.strip(".,"))
    return out


def _in(unit: str, text_low: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(unit.lower())}(?![\w])", text_low) is not None


def support(output: str, source: str) -> tuple[float, list[str]]:
    """(fraction of the output's content units found in the source, the unsupported units)."""
    units = content_units(output)
    low = source.lower()
    missing = [u for u in units if not _in(u, low)]
    return (1.0 - len(missing) / len(units) if units else 1.0), missing


def outcome(prediction: str, answers: tuple[str, ...], others: tuple[str, ...], abstain: str, context: str,
            question: str = "") -> str:
    """One label for an answer (see the module doc); `answers` empty = the question is
    unanswerable; words of the question itself (the asked key, say) count as supported."""
    norm = lambda t: " ".join(re.sub(r"[^\w\s]", " ", t.lower()).split())  # noqa: E731
    p = norm(prediction)
    if answers and any(_in(norm(a), p) for a in answers):
        return "correct"
    if any(_in(norm(o), p) for o in others):
        return "confused"
    if _in(norm(abstain), p):
        return "abstained"
    units = [u for u in content_units(prediction) if not _in(u, question.lower())]
    if any(u[0].isdigit() and len(u) >= 3 and any(u in a for a in answers) for u in units):
        return "wrong"  # a partial answer
    if any(not _in(u, context.lower()) for u in units):
        return "hallucinated"
    return "confused" if units and not others else "wrong"


def _judge(cfg: HallucConfig):
    if cfg.judge_url is None:
        return None
    from diffeval.checkpoints.files import cache_dir
    from diffeval.probes.judge import Judge

    return Judge(cfg.judge_url, cfg.judge_model, timeout=cfg.judge_timeout, cache_dir=cache_dir() / "judge")


def _score(cfg: HallucConfig, s: _Sample, outputs: list, ctx) -> dict:
    tok = ctx.tokenizer
    judge = _judge(cfg)
    preds, labels = [], []
    for kind, out, answers, others, question in zip(s.kinds, outputs, s.answers, s.others, s.questions):
        text = tok.decode(list(out)).strip()
        text = text if kind == "summary" else text.split("\n")[0].strip()
        preds.append(text)
        row: dict[str, Any] = {"kind": kind}
        if kind == "summary":
            score, missing = support(text, s.context)
            row.update(outcome=None, support=round(score, 6), unsupported=missing)
        else:
            row["outcome"] = outcome(text, answers, others, cfg.abstain, s.context, question or "")
        if judge is not None:
            row["judge"] = judge.verdict(s.context, question, text)
        labels.append(row)
    good = [r["outcome"] == ("abstained" if k == "unanswerable" else "correct") for r, k in zip(labels, s.kinds)
            if k != "summary"]
    return {"id": s.id, "length": s.length, "index": s.index, "n_tokens": [len(p) for p in s.prompts],
            "kinds": list(s.kinds), "questions": list(s.questions), "expected": [list(a) or [cfg.abstain] for a in s.answers],
            "facts": [list(f) for f in s.facts], "prediction": preds, "answers": labels,
            "score": sum(good) / len(good) if good else None}


# --- aggregation ------------------------------------------------------------------------------


def _aggregate(cfg: HallucConfig, records: list[dict], models: list[dict], extra: dict):
    from diffeval.probes.stats import mean_ci, wilson

    cells: list[dict] = []
    metrics: dict[str, dict] = {}
    for m in models:
        label = m["label"]
        rows = [(r["length"], a) for r in records if r["model"] == label for a in r["answers"]]
        out: dict[str, Any] = {}
        qa = [a for _, a in rows if a["kind"] != "summary"]
        if qa:
            ok = sum(a["outcome"] == ("abstained" if a["kind"] == "unanswerable" else "correct") for a in qa)
            hal = sum(a["outcome"] == "hallucinated" for a in qa)
            out["accuracy"] = metric(ok / len(qa), len(qa), True, wilson(ok, len(qa)))
            out["hallucination_rate"] = metric(hal / len(qa), len(qa), False, wilson(hal, len(qa)))
        for kind in dict.fromkeys(a["kind"] for _, a in rows):
            mine = [a for _, a in rows if a["kind"] == kind]
            n = len(mine)
            if kind == "summary":
                mean, ci = mean_ci([a["support"] for a in mine])
                out["support@kind=summary"] = metric(mean, n, True, ci)
                cells.append({"model": label, "kind": kind, "n": n, "support": round(mean, 6),
                              **({"ci95": [round(x, 6) for x in ci]} if ci else {})})
                continue
            counts = {o: sum(a["outcome"] == o for a in mine) for o in OUTCOMES}
            cells.append({"model": label, "kind": kind, "n": n, **{o: counts[o] for o in OUTCOMES},
                          **{f"{o}_rate": round(counts[o] / n, 6) for o in OUTCOMES}})
            good = "abstained" if kind == "unanswerable" else "correct"
            out[f"accuracy@kind={kind}"] = metric(counts[good] / n, n, True, wilson(counts[good], n))
            out[f"hallucination@kind={kind}"] = metric(counts["hallucinated"] / n, n, False,
                                                       wilson(counts["hallucinated"], n))
            out[f"confusion@kind={kind}"] = metric(counts["confused"] / n, n, False, wilson(counts["confused"], n))
            if kind != "unanswerable":
                out[f"false_abstention@kind={kind}"] = metric(counts["abstained"] / n, n, False,
                                                              wilson(counts["abstained"], n))
        judged = [a["judge"] for _, a in rows if "judge" in a]
        if judged:
            fine = [j for j in judged if "error" not in j]
            free = sum(j["free"] for j in fine)
            out["judge_free_rate"] = metric(free / len(fine) if fine else None, len(fine), True,
                                            wilson(free, len(fine)) if fine else None)
            out["judge_errors"] = metric(len(judged) - len(fine), len(judged), False)
        metrics[label] = out
    return cells, metrics


def _figures(run_dir: Path) -> list:
    from diffeval.plotting import save_figure
    from diffeval.plotting.halluc import outcome_figure
    from diffeval.results import read_results

    results = read_results(run_dir)
    if not any(c["kind"] != "summary" for c in results["cells"]):
        return []
    return save_figure(outcome_figure(results), Path(run_dir) / "halluc_outcomes")


def _render(results: dict) -> None:
    """Outcome rates per question kind (rows) for each model (columns)."""
    from rich.console import Console
    from rich.table import Table

    labels = [m["label"] for m in results["models"]]
    by = {(c["model"], c["kind"]): c for c in results["cells"]}
    kinds = list(dict.fromkeys(c["kind"] for c in results["cells"]))
    p = results["task"]["params"]
    what = (f"synthetic, {','.join(map(str, p['lengths']))} tokens, {p['n_facts']} facts, {p['samples']} contexts"
            if p["data"] == "synthetic" else p["data"])
    table = Table(title=f"contextual hallucination: outcome rates per question kind ({what})")
    table.add_column("kind")
    table.add_column("outcome")
    for label in labels:
        table.add_column(label, justify="right")
    for kind in kinds:
        names = ("support",) if kind == "summary" else OUTCOMES
        for i, o in enumerate(names):
            key = "support" if kind == "summary" else f"{o}_rate"
            table.add_row(kind if i == 0 else "", o, *[f"{by[(m, kind)][key]:.3f}" if (m, kind) in by else "-"
                                                       for m in labels])
        table.add_section()
    console = Console()
    console.print(table)
    for m in results["models"]:
        met = results["metrics"][m["label"]]
        if "accuracy" in met:
            console.print(f"{m['label']} ({m['family']}): accuracy {met['accuracy']['value']:.3f}, hallucination "
                          f"rate {met['hallucination_rate']['value']:.3f}, n={met['accuracy']['n']}")


def _data(cfg: HallucConfig) -> dict:
    from diffeval.probes.text import describe_files

    if cfg.data == "synthetic":
        return {"haystack": N.haystack_data(cfg)["haystack"]}
    path = Path(cfg.data).expanduser()
    if not path.is_file():
        raise ConfigError(f"{cfg.data!r}: no such file (give synthetic or a .jsonl file)", "data")
    return {"examples": describe_files(cfg.data, [path])}


PROBE = Probe(name=NAME, version=VERSION, config=config, generate=_generate, requests=_requests, score=_score,
              aggregate=_aggregate, figures=_figures, render=_render, cell_keys=("kind",),
              grid_params=("lengths", "samples"), data=_data,
              description="contextual hallucination on long-context QA and summaries, judge-free by default",
              method="greedy answer (first line; summaries up to a blank line) labelled correct / abstained / "
                     "confused (a value the context gives for another key) / hallucinated (a number, name or "
                     "content word absent from the context) / wrong; accuracy counts abstention as correct on "
                     "unanswerable questions; summaries: fraction of content units found in the source; optional "
                     "judge: fraction judged free of hallucination, errors reported apart")
