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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes import retrieval as R
from diffeval.probes.assembly import ATTEMPTS, Assembler, distinct_items, first_clean, question_suffix
from diffeval.probes.base import Figure, Probe, Table, TableData, metric
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.grounding import OUTCOMES, outcome, support
from diffeval.probes.haystack import load_haystack
from diffeval.probes.words import KEY_ADJECTIVES, KEY_NOUNS
from diffeval.requests import Generate
from diffeval.specs import check_int, parse_lengths
from diffeval.stats import mean_ci, wilson
from diffeval.textdata import describe_files, jsonl_rows

NAME = "halluc"
VERSION = 1
KINDS = ("answerable", "confusable", "unanswerable")
_TASK_KEY = int.from_bytes(NAME.encode("ascii"), "big")
FACT = R.NeedleKind("halluc", R.CITY_NEEDLE, R.CITY_QUESTION, R.CITY_ANSWER, "pair", "number")
QUESTION = "{question} If the text does not say, answer \"{abstain}\"."
SUMMARY_TASK = "Summarize the text above in a few sentences."


@dataclass(frozen=True)
class HallucConfig(ProbeConfig):
    PROBE = NAME
    data: str = option("synthetic", help="synthetic (generated long-context QA) or a .jsonl file (context, question, "
                       "answers, answerable).")
    lengths: tuple[int, ...] = option((1024,), flag="--len", parse=parse_lengths, help=R.LENGTHS_HELP,
                                      model_default=ModelDefault())  # synthetic: the first question's prompt, exact
    samples: int = option(10, help="Synthetic contexts per length (3 questions each).")
    n_facts: int = option(6, flag="--facts", help="Facts in a synthetic context.")
    haystack: str = R.haystack_option("essay")
    abstain: str = option("unknown", help="The answer expected when the text does not say.")
    max_new_tokens: int = option(32, help="New tokens per answer (summaries: 4x).")
    judge_url: Optional[str] = option(None, help="OpenAI-compatible API base URL of a judge (optional).")
    judge_model: Optional[str] = option(None, help="The judge's model name. Key: $DIFFEVAL_JUDGE_API_KEY.")
    judge_timeout: float = option(60.0, help="Seconds per judge request.")
    seed: int = R.seed_option()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        for n in self.lengths:
            check_int("lengths", n, 1)
        check_int("samples", self.samples, 1)
        check_int("n_facts", self.n_facts, 3)
        if self.n_facts > len(KEY_NOUNS) - 1:
            raise ConfigError(f"{self.n_facts} exceeds the {len(KEY_NOUNS) - 1} facts available", "n_facts")
        if not isinstance(self.abstain, str) or not self.abstain.strip() or re.search(r"\d", self.abstain):
            raise ConfigError(f"{self.abstain!r} must be a word or phrase without digits", "abstain")
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if (self.judge_url is None) != (self.judge_model is None):
            raise ConfigError("a judge needs both a URL and a model name", "judge_model")
        if not self.judge_timeout > 0:
            raise ConfigError(f"{self.judge_timeout} must be > 0 seconds", "judge_timeout")
        check_int("seed", self.seed, 0)


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
    nouns = [KEY_NOUNS[i] for i in rng.choice(len(KEY_NOUNS), size=n_facts, replace=False)]
    adjs = [KEY_ADJECTIVES[i] for i in rng.choice(len(KEY_ADJECTIVES), size=n_facts + 1, replace=False)]
    keys = [f"{adjs[0]}-{nouns[0]}", f"{adjs[1]}-{nouns[1]}", f"{adjs[2]}-{nouns[1]}"]
    keys += [f"{adjs[i + 1]}-{nouns[i]}" for i in range(2, n_facts - 1)]
    return keys, f"{adjs[n_facts]}-{nouns[n_facts - 1]}"


def _draw(cfg: HallucConfig, asm: Assembler, hay, fmt, length: int, rng, ss_hay, ss_place):
    keys, absent = _keys(rng, cfg.n_facts)
    values = [str(v) for v in rng.choice(9_000_000, size=len(keys), replace=False) + 1_000_000]
    facts = [FACT.item(k, v) for k, v in zip(keys, values)]
    asked = [facts[0], facts[1], FACT.item(absent, "0")]
    suffixes = [question_suffix(QUESTION.format(question=n.question, abstain=cfg.abstain), n.answer, fmt)
                for n in asked]
    depth = float(rng.uniform(0, 100))

    def clean(context: str, items, tails) -> bool:
        return distinct_items(context, items, tails) and absent.lower() not in context.lower()

    built = asm.contexts(hay, facts, suffixes, length, [depth], ss_hay, ss_place, check=clean)
    return None if built is None else (keys, values, asked, suffixes, built[0])


def _synthetic(cfg: HallucConfig, tok, ctx) -> list[_Sample]:
    hay = load_haystack(cfg.haystack)
    asm = Assembler(tok, ctx.prompt_format.prefix_ids(tok))
    out = []
    for length in cfg.lengths:
        ctx.check_length(length + 16, "context")
        for index in range(cfg.samples):
            ss_keys, ss_hay, ss_place = np.random.SeedSequence([cfg.seed, _TASK_KEY, length, index]).spawn(3)
            rng = np.random.Generator(np.random.PCG64(ss_keys))
            got = first_clean(lambda: _draw(cfg, asm, hay, ctx.prompt_format, length, rng, ss_hay, ss_place))
            if got is None:
                raise ConfigError(f"haystack {cfg.haystack!r}: no clean context after {ATTEMPTS} draws "
                                  f"(length {length}, sample {index})", "haystack")
            keys, values, asked, suffixes, b = got
            prompts = (b.ids, *(asm.prompt(b, s) for s in suffixes[1:]))
            for p in prompts:
                ctx.check_length(len(p) + cfg.max_new_tokens, "prompt")
            others = tuple(tuple(v for v in values if v != own) for own in (values[0], values[1], ""))
            out.append(_Sample(f"L{length}-s{index}", length, index, prompts, KINDS, tuple(n.key for n in asked),
                               ((values[0],), (values[1],), ()), others, b.context, tuple(zip(keys, values))))
    return out


def _user(cfg: HallucConfig, tok, ctx) -> list[_Sample]:
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
    budget = ctx.max_new_tokens or cfg.max_new_tokens
    return [Generate(p, budget * 4 if k == "summary" else budget, "\n\n" if k == "summary" else "\n")
            for p, k in zip(s.prompts, s.kinds)]


def _score(cfg: HallucConfig, s: _Sample, outputs: list, ctx) -> dict:
    tok, judge = ctx.tokenizer, ctx.service
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


def _judge(cfg: HallucConfig):
    """The run's judge client (one, with its cache), or None."""
    if cfg.judge_url is None:
        return None
    from diffeval.checkpoints.files import cache_dir
    from diffeval.probes.judge import Judge

    return Judge(cfg.judge_url, cfg.judge_model, timeout=cfg.judge_timeout, cache_dir=cache_dir() / "judge")


def _bars(results: dict, run):
    from diffeval.plotting.halluc import outcome_figure

    return outcome_figure(results, OUTCOMES) if any(c["kind"] != "summary" for c in results["cells"]) else None


def outcome_table(results: dict) -> TableData:
    """Outcome rates per question kind (rows) for each model (columns)."""
    labels = [m["label"] for m in results["models"]]
    by = {(c["model"], c["kind"]): c for c in results["cells"]}
    kinds = list(dict.fromkeys(c["kind"] for c in results["cells"]))
    p = results["task"]["params"]
    what = (f"synthetic, {','.join(map(str, p['lengths']))} tokens, {p['n_facts']} facts, {p['samples']} contexts"
            if p["data"] == "synthetic" else p["data"])
    rows, sections = [], set()
    for kind in kinds:
        sections.add(len(rows))
        for i, o in enumerate(("support",) if kind == "summary" else OUTCOMES):
            key = "support" if kind == "summary" else f"{o}_rate"
            rows.append([kind if i == 0 else "", o, *[f"{by[(m, kind)][key]:.3f}" if (m, kind) in by else "-"
                                                      for m in labels]])
    notes = [f"{m['label']} ({m['family']}): accuracy {met['accuracy']['value']:.3f}, hallucination rate "
             f"{met['hallucination_rate']['value']:.3f}, n={met['accuracy']['n']}"
             for m in results["models"] if "accuracy" in (met := results["metrics"][m["label"]])]
    return TableData(f"contextual hallucination: outcome rates per question kind ({what})",
                     ["kind", "outcome", *labels], rows, sections=frozenset(sections - {0}), notes=notes)


def _data(cfg: HallucConfig) -> dict:
    if cfg.data == "synthetic":
        return R.haystack_data(cfg.haystack)
    path = Path(cfg.data).expanduser()
    if not path.is_file():
        raise ConfigError(f"{cfg.data!r}: no such file (give synthetic or a .jsonl file)", "data")
    return {"examples": describe_files(cfg.data, [path])}


PROBE = Probe(
    name=NAME, version=VERSION, Config=HallucConfig, generate=_generate, requests=_requests, score=_score,
    aggregate=_aggregate, cell_keys=("kind",), grid_params=("lengths", "samples"), data=_data, service=_judge,
    uses=("prompt_format", "batch"),
    views=(Figure("halluc_bars", _bars, stem="halluc_outcomes"), Table("halluc_table", outcome_table)),
    description="contextual hallucination on long-context QA and summaries, judge-free by default",
    summary="Contextual hallucination (DIFF paper 3.6): answerable, confusable and unanswerable\n"
            "questions over long contexts, or your QA / summaries; judge-free labels, optional judge.",
    examples=("diffeval halluc --samples 5",
              "diffeval halluc --ckpt path/to/instruct --data qa.jsonl --prompt-format chat"),
    method="greedy answer (first line; summaries up to a blank line) labelled correct / abstained / "
           "confused (a value the context gives for another key) / hallucinated (a number, name or "
           "content word absent from the context) / wrong; accuracy counts abstention as correct on "
           "unanswerable questions; summaries: fraction of content units found in the source; optional "
           "judge: fraction judged free of hallucination, errors reported apart")
