"""Needle samples: the retrieval grid that `needle`, `attn-map` and `outliers` share.

A sample group is one (length, sample index): N needles with distinct keys and values are
hidden in one haystack; R of them are asked, one question per prompt. The first asked needle
moves to each requested depth while the haystack sentences and the other needles stay put,
so prompts of one group share long token prefixes (across depths up to the first needle's
slot, across the R questions up to the question).

Prompt = [BOS] + context + "\\n\\nQuestion: " + question + "\\nAnswer: " + answer prefix.
The prompt of the first question has exactly `length` tokens under the model's tokenizer.
Seeds derive from (seed, task, length, sample index) through numpy's SeedSequence, spawned
into three streams: needles (keys, values), haystack sentences, distractor positions."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from diffeval.requests import Generate, ids_sha256
from diffeval.errors import ConfigError, UsageError, did_you_mean
from diffeval.probes.assembly import Assembler, Item, first_clean, make_item, question_suffix
from diffeval.probes.haystack import Haystack, load_haystack
from diffeval.probes.config import ModelDefault, option
from diffeval.probes.prompts import PromptFormat
from diffeval.probes.words import CITIES, KEY_ADJECTIVES, KEY_NOUNS, VALUE_WORDS
from diffeval.probes.base import TableData, metric
from diffeval.specs import check_int, length_label, parse_depths, parse_lengths
from diffeval.stats import average_by, mean_per_cell, wilson

TASK_KEY = int.from_bytes(b"needle", "big")  # the grid's share of every seed
ANSWER_RESERVE = 64  # positions a default length leaves for the answer (prompt + answer fit the limit)
RULER_NEW_TOKENS = 128  # --decode ruler: RULER's and lm-eval's generation budget
CITY_NEEDLE = "The magic number for {key} is {value}."
CITY_QUESTION = "What is the magic number for {key}?"
CITY_ANSWER = "The magic number for {key} is"
RULER_NEEDLE = "One of the special magic {types} for {key} is: {value}."
RULER_QUESTION = "What is the special magic {type} for {key} mentioned in the provided text?"
RULER_ANSWER = "The special magic {type} for {key} mentioned in the provided text is"


LENGTHS_HELP = ("Prompt lengths in tokens: 4096, 4k, 64K (k = 1024), lists 4k,8k, ranges 4k:64k (doubling) or "
                "1k:4k:1k (start:stop:step). Default: 4k, or the longest that fits every model's position limit "
                "(said on stderr).")


# --- the grid's options, declared once for every probe that draws needle samples ------------
def lengths_option(default: ModelDefault = ModelDefault(), help: str = LENGTHS_HELP):
    return option(flag="--len", parse=parse_lengths, help=help, model_default=default)


def depths_option(default: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0, 100.0), **kw):
    return option(default, parse=parse_depths, help="Needle depths in % of the context: a list 0,25,50, or "
                  "start:stop:count — the third number is a COUNT, not a step: 0:100:5 = 0, 25, 50, 75, 100.", **kw)


def haystack_option(default: str = "noise"):
    return option(default, help="noise, essay, or a text file / folder.")


def kind_option():
    return option("city", help="city, kv-word, kv-number or uuid.")


def seed_option():
    return option(0, help="Seed of the sample generator.")


@dataclass(frozen=True)
class NeedleKind:
    """One needle format: templates with {key} / {value}, and how keys and values are drawn."""

    name: str
    needle: str
    question: str
    answer: str
    keys: str  # "city" | "pair" (adjective-noun)
    values: str  # "number" (7 digits) | "word" | "uuid"

    def item(self, key: str, value: str) -> Item:
        return make_item(self.needle, key, value, self.question, self.answer)

    @property
    def capacity(self) -> int:
        """How many needles with distinct keys and values can be drawn."""
        keys = len(CITIES) if self.keys == "city" else len(KEY_ADJECTIVES) * len(KEY_NOUNS)
        return min(keys, len(VALUE_WORDS)) if self.values == "word" else keys


def _ruler(name: str, type_: str, values: str) -> NeedleKind:
    # RULER's forms: the needle says "one of the ... numbers", the question asks for one
    # "number". Only the type is filled here; {key} and {value} stay for each needle.
    needle = RULER_NEEDLE.replace("{types}", type_ + "s")
    question, answer = (t.replace("{type}", type_) for t in (RULER_QUESTION, RULER_ANSWER))
    return NeedleKind(name, needle, question, answer, "pair", values)


NEEDLE_KINDS: dict[str, NeedleKind] = {
    "city": NeedleKind("city", CITY_NEEDLE, CITY_QUESTION, CITY_ANSWER, "city", "number"),
    "kv-number": _ruler("kv-number", "number", "number"),
    "kv-word": _ruler("kv-word", "word", "word"),
    "uuid": _ruler("uuid", "uuid", "uuid"),
}


def draw_needles(kind: NeedleKind, n: int, rng: np.random.Generator) -> list[Item]:
    """n needles with distinct keys and values."""
    if kind.keys == "city":
        keys = [CITIES[i] for i in rng.choice(len(CITIES), size=n, replace=False)]
    else:
        width = len(KEY_NOUNS)
        pairs = rng.choice(len(KEY_ADJECTIVES) * width, size=n, replace=False)
        keys = [f"{KEY_ADJECTIVES[i // width]}-{KEY_NOUNS[i % width]}" for i in pairs]
    if kind.values == "number":
        values = [str(v) for v in rng.choice(9_000_000, size=n, replace=False) + 1_000_000]
    elif kind.values == "word":
        values = [VALUE_WORDS[i] for i in rng.choice(len(VALUE_WORDS), size=n, replace=False)]
    else:
        values = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    return [kind.item(k, v) for k, v in zip(keys, values)]


@dataclass(frozen=True)
class NeedleGrid:
    """Which needle samples exist: lengths x depths x samples, N needles of a kind, R asked."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    n_needles: int = 1
    n_queries: int = 1
    samples: int = 10
    haystack: str = "noise"
    needle_kind: str = "city"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        try:
            object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        except (TypeError, ValueError):
            raise ConfigError(f"{self.depths!r} must be percentages between 0 and 100", "depths") from None
        if not self.lengths:
            raise ConfigError("is empty: give at least one context length", "lengths")
        for n in self.lengths:
            check_int("lengths", n, 1)
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        if len(set(self.lengths)) != len(self.lengths):
            raise ConfigError(f"{list(self.lengths)} repeat a value", "lengths")
        if not self.depths:
            raise ConfigError("is empty: give at least one depth percentage", "depths")
        bad = [d for d in self.depths if not 0.0 <= d <= 100.0]
        if bad:
            raise ConfigError(f"{bad[0]:g} must lie between 0 and 100", "depths")
        if len(set(self.depths)) != len(self.depths):
            raise ConfigError(f"{list(self.depths)} repeat a value", "depths")
        if self.needle_kind not in NEEDLE_KINDS:
            raise ConfigError(f"{self.needle_kind!r} is unknown: {did_you_mean(self.needle_kind, NEEDLE_KINDS)}", "needle_kind")
        check_int("n_needles", self.n_needles, 1)
        cap = NEEDLE_KINDS[self.needle_kind].capacity
        if self.n_needles > cap:
            raise ConfigError(f"{self.n_needles} exceeds the {cap} distinct {self.needle_kind} needles available", "n_needles")
        check_int("n_queries", self.n_queries, 1)
        if self.n_queries > self.n_needles:
            raise ConfigError(f"{self.n_queries} must not exceed the number of needles ({self.n_needles})", "n_queries")
        check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0)
        if not isinstance(self.haystack, str) or not self.haystack.strip():
            raise ConfigError(f"{self.haystack!r} must be 'noise', 'essay' or a path", "haystack")


@dataclass(frozen=True)
class NeedleSample:
    """One sample of the (length, depth) cell: sample `index`, one prompt per asked needle.

    Token positions (needle spans, answer spans) index the prompts, BOS included; they are
    the same in every prompt of the sample because the context is a shared prefix.
    `needles` lists the asked needles first (in query order), then the distractors.
    `max_new_tokens` is the generation budget of the run the sample belongs to."""

    id: str
    length: int  # requested token count of the first prompt
    depth: float  # requested depth (percent) of the first asked needle
    index: int
    prompts: tuple[tuple[int, ...], ...]  # (R,) prompts, each (n_tokens[r],) token ids
    n_tokens: tuple[int, ...]  # (R,)
    needles: tuple[dict, ...]  # (N,) {"key", "value", "depth_pct", "token_start", "token_end"}
    queries: tuple[str, ...]  # (R,) keys asked
    expected: tuple[str, ...]  # (R,) values
    answer_spans: tuple[tuple[int, int], ...]  # (R,) [start, end) of each asked value
    n_context: int = 0  # tokens before the question (BOS included): the shared context
    answer_prefix: str = ""  # text that closes the first prompt ("The magic number for X is")
    max_new_tokens: int = 0

    def __post_init__(self) -> None:
        r = len(self.queries)
        sizes = {"prompts": len(self.prompts), "n_tokens": len(self.n_tokens),
                 "expected": len(self.expected), "answer_spans": len(self.answer_spans)}
        if r < 1 or any(v != r for v in sizes.values()):
            raise ValueError(f"sample {self.id}: {r} queries but {sizes}")
        if [len(p) for p in self.prompts] != list(self.n_tokens):
            raise ValueError(f"sample {self.id}: n_tokens {list(self.n_tokens)} disagree with the prompts")

    @property
    def group(self) -> str:
        """The samples over one haystack (its depths share the prompt prefix up to the needle)."""
        return f"{self.length}/{self.index}"

    def to_record(self) -> dict:
        """JSON-able summary without the token lists (prompts are identified by sha256)."""
        return {"id": self.id, "length": self.length, "depth": self.depth, "index": self.index,
                "n_tokens": list(self.n_tokens), "needles": [dict(n) for n in self.needles],
                "queries": list(self.queries), "expected": list(self.expected),
                "answer_spans": [list(s) for s in self.answer_spans], "n_context": self.n_context,
                "prompt_sha256": [ids_sha256(p) for p in self.prompts]}

    def requests(self, decode: str, hook=None) -> list[Generate]:
        """One greedy generation per asked needle; `ruler` decoding has no newline stop."""
        stop = None if decode == "ruler" else "\n"
        return [Generate(tuple(p), self.max_new_tokens, stop, hook) for p in self.prompts]


def _group(grid: NeedleGrid, asm: Assembler, hay: Haystack, length: int, index: int,
           fmt: Optional[PromptFormat]) -> list[NeedleSample]:
    kind = NEEDLE_KINDS[grid.needle_kind]
    ss_needles, ss_hay, ss_place = np.random.SeedSequence([grid.seed, TASK_KEY, length, index]).spawn(3)
    rng = np.random.Generator(np.random.PCG64(ss_needles))
    depths = sorted(grid.depths)

    def draw():
        needles = draw_needles(kind, grid.n_needles, rng)
        suffixes = [question_suffix(n.question, n.answer, fmt) for n in needles[: grid.n_queries]]
        built = asm.contexts(hay, needles, suffixes, length, depths, ss_hay, ss_place, what="needle")
        return None if built is None else (needles, suffixes, built)

    got = first_clean(draw)
    if got is None:
        raise UsageError(f"haystack {hay.source!r}: after 20 draws, a needle value or key "
                         f"phrase still also occurs in the text (length {length}, sample {index})")
    needles, suffixes, built = got
    return [_make_sample(asm, b, needles, suffixes, length, d, index) for b, d in zip(built, depths)]


def _make_sample(asm: Assembler, built, needles: list[Item], suffixes: list[str], length: int, depth: float,
                 index: int) -> NeedleSample:
    spans, n_ctx = asm.spans(built, needles)
    n_prefix = len(asm.prefix)
    prompts = [built.ids] + [asm.prompt(built, s) for s in suffixes[1:]]
    records = []
    for k, n in enumerate(needles):
        s, e, _, _ = spans[k]
        depth_pct = 100.0 * (s - n_prefix) / max(1, n_ctx - (e - s))
        records.append({"key": n.key, "value": n.value, "depth_pct": round(depth_pct, 3),
                        "token_start": int(s), "token_end": int(e)})
    r = len(suffixes)
    return NeedleSample(
        id=f"L{length}-d{depth:g}-s{index}", length=length, depth=depth, index=index,
        prompts=tuple(prompts), n_tokens=tuple(len(p) for p in prompts), needles=tuple(records),
        queries=tuple(n.key for n in needles[:r]), expected=tuple(n.value for n in needles[:r]),
        answer_spans=tuple((int(spans[k][2]), int(spans[k][3])) for k in range(r)),
        n_context=n_prefix + int(n_ctx), answer_prefix=needles[0].answer)


def generate_group(grid: NeedleGrid, tokenizer, length: int, index: int, haystack: Optional[Haystack] = None,
                   fmt: Optional[PromptFormat] = None) -> list[NeedleSample]:
    """The samples of one (length, sample index), one per depth in ascending order, so any
    single sample can be regenerated without the rest."""
    hay = haystack if haystack is not None else load_haystack(grid.haystack)
    asm = Assembler(tokenizer, (fmt or PromptFormat()).prefix_ids(tokenizer))
    return _group(grid, asm, hay, int(length), int(index), fmt)


def generate(grid: NeedleGrid, tokenizer, max_positions: Optional[int] = None, allow_beyond: bool = False,
             fmt: Optional[PromptFormat] = None) -> list[NeedleSample]:
    """All samples, ordered by (length, sample index, depth). A prompt longer than
    `max_positions` is refused (UsageError) unless `allow_beyond`."""
    hay = load_haystack(grid.haystack)
    limit = None if allow_beyond else max_positions
    if limit is not None:
        over = [n for n in sorted(grid.lengths) if n > limit]
        if over:
            raise UsageError(f"length {over[0]} ({length_label(over[0])}) exceeds the model's position "
                             f"limit of {limit} tokens; use shorter lengths or --allow-beyond-max-positions")
    asm = Assembler(tokenizer, (fmt or PromptFormat()).prefix_ids(tokenizer))
    out: list[NeedleSample] = []
    for length in sorted(grid.lengths):
        for index in range(grid.samples):
            group = _group(grid, asm, hay, length, index, fmt)
            longest = max(max(s.n_tokens) for s in group)
            if limit is not None and longest > limit:
                raise UsageError(f"length {length}: a prompt has {longest} tokens (a longer question than "
                                 f"the first), over the model's position limit of {limit}")
            out.extend(group)
    return out


def answer_budget(samples: Sequence[NeedleSample], tok) -> int:
    """Enough new tokens for the longest expected answer (" value.") plus a newline."""
    longest = max((len(tok.encode(f" {v}.")) for s in samples for v in s.expected), default=8)
    return longest + 2


def run_samples(grid: NeedleGrid, ctx, probe: str) -> list[NeedleSample]:
    """The grid's samples for the model of `ctx`, each with the run's generation budget:
    --max-new-tokens, RULER's 128 with --decode ruler, else enough for the longest answer."""
    from dataclasses import replace

    tok = ctx.need_tokenizer(probe)
    samples = generate(grid, tok, ctx.max_positions, ctx.allow_beyond, ctx.prompt_format)
    budget = ctx.max_new_tokens or (RULER_NEW_TOKENS if ctx.decode == "ruler" else answer_budget(samples, tok))
    longest = max((len(p) for s in samples for p in s.prompts), default=0)
    ctx.check_length(longest + budget, f"prompt ({longest} tokens) with its generation budget ({budget})")
    return [replace(s, max_new_tokens=budget) for s in samples]


def haystack_data(haystack: str) -> dict:
    """The haystack's identity and content hash, for results and resume keys."""
    return {"haystack": load_haystack(haystack).to_dict()}


# --- a (length x depth) grid of scored samples: cells, metrics and the depth table -----------
# Records need "model", "length", "depth", "score" (in [0, 1]), "all_correct" and "n_tokens".


def aggregate_cells(records: list[dict], labels: list[str]) -> list[dict]:
    """One row per (model, length, depth), models in run order: mean score, n, Wilson 95% CI,
    all-correct rate and mean real token count."""
    keys = ("model", "length", "depth")
    rows_of: dict[tuple, list[dict]] = {}
    for r in records:
        rows_of.setdefault(tuple(r[k] for k in keys), []).append(r)
    cells = []
    for cell in sorted(mean_per_cell(records, keys), key=lambda c: labels.index(c["model"])):
        rows = rows_of[tuple(cell[k] for k in keys)]
        cells.append({
            **cell, "mean": round(cell["mean"], 6), "ci95": [round(x, 6) for x in cell["ci95"]],
            "all_correct": round(sum(r["all_correct"] for r in rows) / len(rows), 6),
            "n_tokens_mean": round(sum(max(r["n_tokens"]) for r in rows) / len(rows), 1),
        })
    return cells


def model_metrics(cells: list[dict], records: list[dict], label: str) -> dict:
    """Accuracy and all-correct rate (Wilson intervals), and the average row per length and
    per depth (unweighted mean of cell means)."""
    mine = [r for r in records if r["model"] == label]
    n = len(mine)
    total = math.fsum(r["score"] for r in mine)
    allc = sum(r["all_correct"] for r in mine)
    out = {"accuracy": metric(total / n, n, True, wilson(min(total, n), n)),
           "all_correct": metric(allc / n, n, True, wilson(allc, n))}
    own = [c for c in cells if c["model"] == label]
    for key in ("length", "depth"):
        for row in average_by(own, by=(key,)):
            out[f"accuracy@{key}={row[key]:g}"] = metric(row["mean"], row["n"], True,
                                                         wilson(row["mean"] * row["n"], row["n"]))
    return out


def grid_aggregate(cfg, records: list[dict], models: list[dict], extra: dict):
    """A probe's `aggregate` for a (length, depth) grid: aggregate_cells and model_metrics."""
    labels = [m["label"] for m in models]
    cells = aggregate_cells(records, labels)
    return cells, {label: model_metrics(cells, records, label) for label in labels}


def depth_table(results: dict, title: str) -> TableData:
    """Accuracy by depth (rows) for every model and length (columns), the average row, and
    each model's overall accuracy with its Wilson 95% interval."""
    lengths = sorted({c["length"] for c in results["cells"]})
    depths = sorted({c["depth"] for c in results["cells"]})
    cells = {(c["model"], c["length"], c["depth"]): c for c in results["cells"]}
    labels = [m["label"] for m in results["models"]]
    header = ["depth %", *[f"{label}\n{length_label(L)}" for label in labels for L in lengths]]
    rows = [[f"{d:g}", *[f"{cells[(m, L, d)]['mean']:.2f}" if (m, L, d) in cells else "-"
                         for m in labels for L in lengths]] for d in depths]
    rows.append(["avg", *[f"{results['metrics'][m][f'accuracy@length={L}']['value']:.2f}"
                          for m in labels for L in lengths]])
    notes = []
    for m in results["models"]:
        met = results["metrics"][m["label"]]
        acc, allc = met["accuracy"], met["all_correct"]
        notes.append(f"{m['label']} ({m['family']}): accuracy {acc['value']:.3f} [{acc['ci95'][0]:.3f}, "
                     f"{acc['ci95'][1]:.3f}], all correct {allc['value']:.3f}, n={acc['n']}")
    return TableData(title, header, rows, styles={len(rows) - 1: "bold"}, notes=notes)
