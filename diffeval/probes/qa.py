"""Long-context QA samples of the hallucination probe: synthetic contexts of facts in the
needle style with an answerable, a confusable (a look-alike key in the context) and an
unanswerable (absent key) question each, or a user's JSONL of contexts, questions and
answers (a row without a question asks for a summary). `cfg` is the probe's config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from diffeval.errors import ConfigError, shown
from diffeval.probes import retrieval as R
from diffeval.probes.assembly import ATTEMPTS, Assembler, distinct_items, first_clean, question_suffix
from diffeval.probes.haystack import load_haystack
from diffeval.probes.words import KEY_ADJECTIVES, KEY_NOUNS
from diffeval.textdata import jsonl_rows

KINDS = ("answerable", "confusable", "unanswerable")
_TASK_KEY = int.from_bytes(b"halluc", "big")
FACT = R.NeedleKind("halluc", R.CITY_NEEDLE, R.CITY_QUESTION, R.CITY_ANSWER, "pair", "number")
QUESTION = "{question} If the text does not say, answer \"{abstain}\"."
SUMMARY_TASK = "Summarize the text above in a few sentences."


@dataclass(frozen=True)
class QASample:
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
    lookalike: tuple[tuple[str, ...], ...] = ()  # per prompt: the value of the asked key's look-alike


def _keys(rng: np.random.Generator, n_facts: int) -> tuple[list[str], str]:
    """Context keys (asked, confusable, its look-alike, distractors) and the absent key: every
    noun distinct except the confusable pair's, the absent key's noun unused."""
    nouns = [KEY_NOUNS[i] for i in rng.choice(len(KEY_NOUNS), size=n_facts, replace=False)]
    adjs = [KEY_ADJECTIVES[i] for i in rng.choice(len(KEY_ADJECTIVES), size=n_facts + 1, replace=False)]
    keys = [f"{adjs[0]}-{nouns[0]}", f"{adjs[1]}-{nouns[1]}", f"{adjs[2]}-{nouns[1]}"]
    keys += [f"{adjs[i + 1]}-{nouns[i]}" for i in range(2, n_facts - 1)]
    return keys, f"{adjs[n_facts]}-{nouns[n_facts - 1]}"


def _draw(cfg, asm: Assembler, hay, fmt, length: int, rng, ss_hay, ss_place):
    keys, absent = _keys(rng, cfg.n_facts)
    values = [str(v) for v in rng.choice(9_000_000, size=len(keys), replace=False) + 1_000_000]
    facts = [FACT.item(k, v) for k, v in zip(keys, values)]
    asked = [facts[0], facts[1], FACT.item(absent, "0")]
    # chat: the reply is the model's own (no forced answer prefix), so that abstaining is natural
    suffixes = [question_suffix(QUESTION.format(question=n.question, abstain=cfg.abstain),
                                "" if fmt.name == "chat" else n.answer, fmt) for n in asked]
    depth = float(rng.uniform(0, 100))

    def clean(context: str, items, tails) -> bool:
        return distinct_items(context, items, tails) and absent.lower() not in context.lower()

    built = asm.contexts(hay, facts, suffixes, length, [depth], ss_hay, ss_place, check=clean, what="needle")
    return None if built is None else (keys, values, asked, suffixes, built[0])


def synthetic_samples(cfg, tok, ctx) -> list[QASample]:
    """Contexts of exactly `cfg.lengths` tokens (the first question's prompt), `cfg.samples`
    per length, each asked an answerable, a confusable and an unanswerable question."""
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
            out.append(QASample(f"L{length}-s{index}", length, index, prompts, KINDS, tuple(n.key for n in asked),
                               ((values[0],), (values[1],), ()), others, b.context, tuple(zip(keys, values)),
                               ((), (values[2],), ())))
    return out


def user_samples(cfg, tok, ctx) -> list[QASample]:
    """One sample per row of the .jsonl `cfg.data`: context, question (absent: summarise),
    answers, answerable."""
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
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ConfigError(f"file {path} line {n}: 'answers' must be a list of strings (none blank)", "data")
        if question is not None and (not isinstance(question, str) or not question.strip()):
            raise ConfigError(f"file {path} line {n}: 'question' must be text, not {shown(question)}", "data")
        if not isinstance(row.get("answerable", False), bool):
            raise ConfigError(f"file {path} line {n}: 'answerable' must be true or false, not "
                              f"{shown(row['answerable'])}", "data")
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
        out.append(QASample(f"line{n}", None, n, (ids,), (kind,), (question,),
                           (tuple(answers) if kind == "answerable" else (),), ((),), context))
    if not out:
        raise ConfigError(f"file {path} holds no examples", "data")
    return out
