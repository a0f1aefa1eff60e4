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

Each answer gets one outcome (probes/grounding.py): `correct`, `abstained`, `lookalike` (the
value of the key that looks like the asked one), `confused` (a value that the context gives
for another key; for user data: an answer fully supported by the context but not the
expected one), `invented` (a number the context does not hold, whatever else the answer
says; or, with no value given, a name or content word absent from the context), `wrong`
otherwise (empty, or a partial answer). The headline `paper_hallucination_rate` is the DIFF
paper's sense: the share of answers that are not accurate and free of hallucination (every
outcome but the right one; 1 - accuracy); the outcomes are its breakdown. With
`--prompt-format chat` the question ends at the assistant header, no answer prefix forced,
and the first claim of the reply is scored. A summary gets a support score:
the fraction of its content units (numbers, capitalised names, content words) found in the
source, with the unsupported ones listed. An optional judge (probes/judge.py) adds the
paper's binary verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from diffeval.errors import ConfigError
from diffeval.probes import retrieval as R
from diffeval.probes.base import Figure, Probe, Scored, Table, TableData, by_model, metric, rate
from diffeval.probes.config import ModelDefault, ProbeConfig, option
from diffeval.probes.grounding import OUTCOMES, outcome, support
from diffeval.probes.qa import QASample, synthetic_samples, user_samples
from diffeval.probes.words import KEY_NOUNS
from diffeval.requests import Generate
from diffeval.specs import check_int, parse_lengths
from diffeval.stats import mean_ci
from diffeval.textdata import describe_files

NAME = "halluc"
VERSION = 3  # 3: outcomes lookalike / invented, unsupported values first, chat without a forced prefix
# (2: BOS by the tokenizer's rule, chat prompts as apply_chat_template)


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
        if self.judge_url is not None:
            from diffeval.probes.judge import check_url

            check_url(self.judge_url)
        if not self.judge_timeout > 0:
            raise ConfigError(f"{self.judge_timeout} must be > 0 seconds", "judge_timeout")
        check_int("seed", self.seed, 0)


def _generate(cfg: HallucConfig, ctx) -> list[QASample]:
    tok = ctx.need_tokenizer(NAME)
    return synthetic_samples(cfg, tok, ctx) if cfg.data == "synthetic" else user_samples(cfg, tok, ctx)


def _requests(cfg: HallucConfig, s: QASample, ctx) -> list:
    budget = ctx.max_new_tokens or cfg.max_new_tokens
    chat = ctx.prompt_format.name == "chat"  # a reply may open with a line break: stop at a blank line
    return [Generate(p, budget * 4 if k == "summary" else budget, "\n\n" if k == "summary" or chat else "\n")
            for p, k in zip(s.prompts, s.kinds)]


def _score(cfg: HallucConfig, s: QASample, outputs: list, ctx) -> dict:
    tok, judge = ctx.tokenizer, ctx.service
    preds, labels = [], []
    lookalikes = s.lookalike or ((),) * len(s.kinds)
    for kind, out, answers, others, question, look in zip(s.kinds, outputs, s.answers, s.others, s.questions,
                                                          lookalikes):
        text = tok.decode(list(out)).strip()
        text = text if kind == "summary" else text.split("\n")[0].strip()
        preds.append(text)
        row: dict[str, Any] = {"kind": kind}
        if kind == "summary":
            score, missing = support(text, s.context)
            row.update(outcome=None, support=round(score, 6), unsupported=missing)
        else:
            row["outcome"] = outcome(text, answers, others, cfg.abstain, s.context, question or "", look)
        if judge is not None:
            row["judge"] = judge.verdict(s.context, question, text)
        labels.append(row)
    good = [r["outcome"] == ("abstained" if k == "unanswerable" else "correct") for r, k in zip(labels, s.kinds)
            if k != "summary"]
    record = {"id": s.id, "length": s.length, "index": s.index, "n_tokens": [len(p) for p in s.prompts],
              "kinds": list(s.kinds), "questions": list(s.questions), "expected": [list(a) or [cfg.abstain] for a in s.answers],
              "facts": [list(f) for f in s.facts], "prediction": preds, "answers": labels,
              "score": sum(good) / len(good) if good else None}
    # a judge failure is not a finished sample: a rerun asks the judge again
    return Scored(record, retry=any("error" in r.get("judge", {}) for r in labels))


# --- aggregation ------------------------------------------------------------------------------


def _aggregate(cfg: HallucConfig, records: list[dict], models: list[dict], extra: dict):
    return by_model(records, models, lambda m, mine: _summary(m["label"], [a for r in mine for a in r["answers"]]))


def _summary(label: str, answers: list[dict]) -> tuple[list[dict], dict]:
    """One model's cells (outcome counts per question kind; summaries: support) and metrics."""
    out: dict[str, Any] = {}
    qa = [a for a in answers if a["kind"] != "summary"]
    if qa:
        good = sum(a["outcome"] == _GOOD.get(a["kind"], "correct") for a in qa)
        out["accuracy"] = rate(good, len(qa), True)
        out["paper_hallucination_rate"] = rate(len(qa) - good, len(qa), False)
        for o in OUTCOMES:
            out[f"outcome_rate@outcome={o}"] = rate(sum(a["outcome"] == o for a in qa), len(qa), None)
    cells = [_kind_cell(label, kind, [a for a in answers if a["kind"] == kind], out)
             for kind in dict.fromkeys(a["kind"] for a in answers)]
    judged = [a["judge"] for a in answers if "judge" in a]
    if judged:
        fine = [j for j in judged if "error" not in j]
        out["judge_free_rate"] = (rate(sum(j["free"] for j in fine), len(fine), True) if fine
                                  else metric(None, 0, True))
        out["judge_errors"] = metric(len(judged) - len(fine), len(judged), False)
    return cells, out


_GOOD = {"unanswerable": "abstained"}  # the right outcome per question kind (else: correct)


def _kind_cell(label: str, kind: str, mine: list[dict], out: dict) -> dict:
    n = len(mine)
    if kind == "summary":
        mean, ci = mean_ci([a["support"] for a in mine])
        out["support@kind=summary"] = metric(mean, n, True, ci)
        return {"model": label, "kind": kind, "n": n, "support": round(mean, 6),
                **({"ci95": [round(x, 6) for x in ci]} if ci else {})}
    counts = {o: sum(a["outcome"] == o for a in mine) for o in OUTCOMES}
    out[f"accuracy@kind={kind}"] = rate(counts[_GOOD.get(kind, "correct")], n, True)
    out[f"paper_hallucination@kind={kind}"] = rate(n - counts[_GOOD.get(kind, "correct")], n, False)
    out[f"invented@kind={kind}"] = rate(counts["invented"], n, False)
    out[f"confusion@kind={kind}"] = rate(counts["confused"], n, False)
    if kind == "confusable":
        out[f"lookalike@kind={kind}"] = rate(counts["lookalike"], n, False)
    if kind != "unanswerable":
        out[f"false_abstention@kind={kind}"] = rate(counts["abstained"], n, False)
    return {"model": label, "kind": kind, "n": n, **counts, **{f"{o}_rate": round(counts[o] / n, 6) for o in OUTCOMES}}


def _judge(cfg: HallucConfig):
    """The run's judge client (one, with its cache), or None."""
    if cfg.judge_url is None:
        return None
    from diffeval.checkpoints.files import cache_dir
    from diffeval.probes.judge import Judge

    return Judge(cfg.judge_url, cfg.judge_model, timeout=cfg.judge_timeout, cache_dir=cache_dir() / "judge")


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
            got = [by[(m, kind)].get(key) if (m, kind) in by else None for m in labels]
            rows.append([kind if i == 0 else "", o, *["-" if g is None else f"{g:.3f}" for g in got]])
    notes = [f"{m['label']} ({m['family']}): accuracy {met['accuracy']['value']:.3f}, paper hallucination rate "
             f"(1 - accuracy) {1 - met['accuracy']['value']:.3f}, invented {_share(met, 'invented')}, "
             f"n={met['accuracy']['n']}" for m in results["models"] if "accuracy" in (met := results["metrics"][m["label"]])]
    return TableData(f"contextual hallucination: outcome rates per question kind ({what})",
                     ["kind", "outcome", *labels], rows, sections=frozenset(sections - {0}), notes=notes)


def _share(met: dict, o: str) -> str:
    got = met.get(f"outcome_rate@outcome={o}")
    return "-" if got is None else f"{got['value']:.3f}"


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
    views=(Figure("halluc_bars", "halluc:outcome_view", stem="halluc_outcomes"), Table("halluc_table", outcome_table)),
    quick={"lengths": [500], "samples": 3, "n_facts": 4},
    description="contextual hallucination on long-context QA and summaries, judge-free by default",
    summary="Contextual hallucination (DIFF paper 3.6): answerable, confusable and unanswerable\n"
            "questions over long contexts, or your QA / summaries; judge-free labels, optional judge.",
    examples=("diffeval halluc --samples 5",
              "diffeval halluc --ckpt path/to/instruct --data qa.jsonl --prompt-format chat"),
    method="greedy answer (first line; summaries up to a blank line; chat: no forced answer prefix) "
           "labelled, first a number absent from the context -> invented whatever else it says, else by "
           "its first claim: correct / lookalike (the look-alike key's value) / confused (another key's "
           "value) / abstained, else invented (a name or content word absent from the context) or wrong; "
           "accuracy counts abstention as correct on unanswerable questions; paper_hallucination_rate = "
           "1 - accuracy, the DIFF paper's sense (not accurate or not free of hallucination), broken "
           "down by outcome_rate@outcome=...; summaries: fraction of content units found in the source; "
           "optional judge: fraction judged free of hallucination, errors reported apart")
