"""Synthetic training corpus for the zoo: text documents that teach the probes' formats.

Document kinds (each a pure function of a numpy Generator and a token budget):

- ``needle``: a noise or essay haystack with 1-8 needles in the needle probe's exact formats
  (templates from diffeval.probes.needle), then one or more "Question / Answer" turns, each
  in the probe's suffix format followed by the value. A share of the questions ask for a key
  that is not in the context; their answer is the fixed form ``... is unknown.``
- ``icl``: in-context classification: labelled examples ("Input: ...\\nLabel: ..."), then
  queries; label names are drawn per episode, so only the examples tell the mapping.
- ``repeat``: long plain text with long-range repetition (a passage recurs verbatim later),
  so that next-token loss falls with context and copying (induction) is rewarded.

A document carries the character spans of its answers (values, labels, repeated passages);
the trainer weights the loss on those tokens. Packing cuts documents into fixed-length rows.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes.haystack import NOISE_SENTENCES, essay_sentence, load_haystack
from diffeval.probes.assembly import PROMPT_SUFFIX
from diffeval.probes.retrieval import NEEDLE_KINDS, NeedleKind
from diffeval.probes.words import CITIES, KEY_ADJECTIVES, KEY_NOUNS, VALUE_WORDS

UNKNOWN = "unknown"  # the answer to a question whose key is not in the context
ICL_EXAMPLE = "Input: {text}\nLabel:"
ICL_LABELS: tuple[str, ...] = (
    "positive", "negative", "neutral", "alpha", "beta", "gamma", "delta", "north", "south",
    "east", "west", "red", "orange", "purple", "yes", "no", "maybe", "first", "second", "third",
)
ICL_ADJ: tuple[str, ...] = ("small", "large", "old", "new", "bright", "dark", "warm", "cold")
DOC_KINDS = ("needle", "icl", "repeat", "copy")
_WORD = re.compile(r"[A-Za-z]+|[0-9]{1,3}|[^\sA-Za-z0-9]")


def approx_tokens(text: str) -> int:
    """Rough token count under the zoo tokenizer (words, digit triples, punctuation)."""
    return len(_WORD.findall(text))


@dataclass(frozen=True)
class Doc:
    """One document: text, and [start, end) character spans of the tokens to up-weight."""

    kind: str
    text: str
    spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class CorpusConfig:
    """Mixture and shape of the generated documents."""

    mix: dict = field(default_factory=lambda: {"needle": 0.7, "icl": 0.1, "repeat": 0.1, "copy": 0.1})
    needle_kinds: dict = field(default_factory=lambda: {"city": 0.7, "kv-number": 0.1, "kv-word": 0.1, "uuid": 0.1})
    haystacks: dict = field(default_factory=lambda: {"noise": 0.5, "essay": 0.5})
    max_needles: int = 8
    max_questions: int = 4
    p_unknown: float = 0.1  # share of questions whose key is absent

    def __post_init__(self) -> None:
        for name, table, valid in (("mix", self.mix, DOC_KINDS), ("needle_kinds", self.needle_kinds, NEEDLE_KINDS),
                                   ("haystacks", self.haystacks, ("noise", "essay"))):
            if not isinstance(table, dict) or not table:
                raise ConfigError(f"corpus {name} ({table!r}) must be a non-empty mapping name -> weight")
            bad = [k for k in table if k not in valid]
            if bad:
                raise ConfigError(f"corpus {name}: unknown entry {bad[0]!r}; valid: {', '.join(valid)}")
            if any(not isinstance(w, (int, float)) or w < 0 for w in table.values()) or sum(table.values()) <= 0:
                raise ConfigError(f"corpus {name} weights ({table!r}) must be >= 0 with a positive sum")
        if not isinstance(self.max_needles, int) or not 1 <= self.max_needles <= 32:
            raise ConfigError(f"max_needles ({self.max_needles!r}) must be an integer in [1, 32]")
        if not isinstance(self.max_questions, int) or self.max_questions < 1:
            raise ConfigError(f"max_questions ({self.max_questions!r}) must be an integer >= 1")
        if not 0.0 <= self.p_unknown < 1.0:
            raise ConfigError(f"p_unknown ({self.p_unknown!r}) must lie in [0, 1)")


def _choose(rng: np.random.Generator, table: dict) -> str:
    names = list(table)
    w = np.asarray([float(table[n]) for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


# --- needle documents -------------------------------------------------------------------------


def _keys(kind: NeedleKind, n: int, rng: np.random.Generator) -> list[str]:
    if kind.keys == "city":
        return [CITIES[i] for i in rng.choice(len(CITIES), size=n, replace=False)]
    width = len(KEY_NOUNS)
    pairs = rng.choice(len(KEY_ADJECTIVES) * width, size=n, replace=False)
    return [f"{KEY_ADJECTIVES[i // width]}-{KEY_NOUNS[i % width]}" for i in pairs]


def _values(kind: NeedleKind, n: int, rng: np.random.Generator) -> list[str]:
    if kind.values == "number":
        return [str(v) for v in rng.choice(9_000_000, size=n, replace=False) + 1_000_000]
    if kind.values == "word":
        return [VALUE_WORDS[i] for i in rng.choice(len(VALUE_WORDS), size=n, replace=False)]
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def _haystack(rng: np.random.Generator, name: str, budget: int) -> list[str]:
    """Haystack sentences worth about `budget` tokens; noise starts at a random sentence."""
    if name == "noise":
        start = int(rng.integers(len(NOISE_SENTENCES)))
        stream: Iterator[str] = (NOISE_SENTENCES[(start + i) % len(NOISE_SENTENCES)] for i in range(10**9))
    else:
        stream = load_haystack("essay").stream(rng)
    out, used = [], 0
    for s in stream:
        c = approx_tokens(s)
        if used + c > budget:
            break
        out.append(s)
        used += c
    if out and rng.random() < 0.5:  # the probe cuts its last haystack sentence mid-way
        words = out[-1].split(" ")
        out[-1] = " ".join(words[: int(rng.integers(1, len(words) + 1))])
    return out


def needle_doc(rng: np.random.Generator, budget: int, cfg: CorpusConfig) -> Doc:
    """Haystack + needles + question/answer turns, about `budget` tokens."""
    kind = NEEDLE_KINDS[_choose(rng, cfg.needle_kinds)]
    n = int(rng.integers(1, cfg.max_needles + 1))
    keys = _keys(kind, n + 1, rng)  # the last key is never placed: unanswerable questions use it
    values = _values(kind, n, rng)
    needles = [kind.needle.format(key=k, value=v) for k, v in zip(keys, values)]
    n_q = int(rng.integers(1, min(n, cfg.max_questions) + 1))
    fixed = sum(approx_tokens(s) for s in needles) + 22 * n_q
    hay = _haystack(rng, _choose(rng, cfg.haystacks), max(0, budget - fixed))
    parts = list(hay)
    for s in needles:  # each needle at a uniformly random sentence boundary
        parts.insert(int(rng.integers(len(parts) + 1)), s)
    text = " ".join(parts)
    spans = []
    asked = [int(i) for i in rng.choice(n, size=n_q, replace=False)]
    for i in asked:
        key, value = keys[i], values[i]
        if rng.random() < cfg.p_unknown:
            key, value = keys[n], UNKNOWN
        text += PROMPT_SUFFIX.format(question=kind.question.format(key=key), answer=kind.answer.format(key=key))
        text += " "
        spans.append((len(text), len(text) + len(value)))
        text += value + "."
    return Doc("needle", text, tuple(spans))


# --- in-context learning ------------------------------------------------------------------------

_ICL_CLASSES: tuple[tuple[str, ...], ...] = (tuple(KEY_NOUNS), tuple(VALUE_WORDS), tuple(CITIES), tuple(KEY_ADJECTIVES))


def icl_doc(rng: np.random.Generator, budget: int, cfg: CorpusConfig) -> Doc:
    """Labelled examples then more; each item's label is its class's label in this episode."""
    n_cls = int(rng.integers(2, len(_ICL_CLASSES) + 1))
    classes = [int(c) for c in rng.choice(len(_ICL_CLASSES), size=n_cls, replace=False)]
    labels = [ICL_LABELS[i] for i in rng.choice(len(ICL_LABELS), size=n_cls, replace=False)]
    text, spans = "", []
    while approx_tokens(text) < budget - 8:
        c = int(rng.integers(n_cls))
        pool = _ICL_CLASSES[classes[c]]
        item = f"the {ICL_ADJ[int(rng.integers(len(ICL_ADJ)))]} {pool[int(rng.integers(len(pool)))]}"
        text += ("\n\n" if text else "") + ICL_EXAMPLE.format(text=item) + " "
        spans.append((len(text), len(text) + len(labels[c])))
        text += labels[c]
    return Doc("icl", text, tuple(spans))


# --- long text with repetition ------------------------------------------------------------------


def repeat_doc(rng: np.random.Generator, budget: int, cfg: CorpusConfig) -> Doc:
    """Essay prose or a random word list, where a passage recurs verbatim further on."""
    if rng.random() < 0.5:
        pool = VALUE_WORDS + KEY_NOUNS + KEY_ADJECTIVES
        n = max(4, min(60, budget // 3))
        unit = " ".join(pool[i] for i in rng.integers(len(pool), size=n)) + "."
    else:
        unit = " ".join(essay_sentence(rng) for _ in range(int(rng.integers(1, 6))))
    cost = approx_tokens(unit)
    text, spans = unit, []
    while True:
        gap = " ".join(essay_sentence(rng) for _ in range(int(rng.integers(0, 8))))
        if approx_tokens(text) + approx_tokens(gap) + cost > budget:
            break
        text += (" " + gap if gap else "") + " "
        spans.append((len(text), len(text) + len(unit)))
        text += unit
    if not spans:  # too short to repeat: plain prose
        while approx_tokens(text) < budget:
            text += " " + essay_sentence(rng)
    return Doc("repeat", text, tuple(spans))


_COPY_POOL: tuple[str, ...] = tuple(VALUE_WORDS + KEY_NOUNS + KEY_ADJECTIVES + CITIES)


def copy_doc(rng: np.random.Generator, budget: int, cfg: CorpusConfig) -> Doc:
    """A random word sequence, then the same sequence again (and again while it fits): the
    plainest form of copying from context, which teaches the induction step quickly."""
    numbers = rng.random() < 0.3  # digits too: the needle values are copied as 3-digit chunks
    per = 3 if numbers else 1  # about tokens per item
    n = int(rng.integers(2, max(3, min(80, budget // (2 * per) - 1))))
    if numbers:
        words = [str(int(v)) for v in rng.integers(100, 10_000_000, size=n)]
    else:
        words = [_COPY_POOL[i] for i in rng.integers(len(_COPY_POOL), size=n)]
    unit = " ".join(words) + "."
    text, spans = unit, []
    while approx_tokens(text) + approx_tokens(unit) + 1 <= budget:
        text += "\n"
        spans.append((len(text), len(text) + len(unit)))
        text += unit
    return Doc("copy", text, tuple(spans))


MAKERS = {"needle": needle_doc, "icl": icl_doc, "repeat": repeat_doc, "copy": copy_doc}


def make_doc(rng: np.random.Generator, budget: int, cfg: CorpusConfig, mix: Optional[dict] = None) -> Doc:
    """One document of a kind drawn from `mix` (default cfg.mix), about `budget` tokens long."""
    return MAKERS[_choose(rng, mix or cfg.mix)](rng, max(16, int(budget)), cfg)


def corpus_words(seed: int = 0, n_docs: int = 600) -> list[str]:
    """Every word the generators can emit (plus a seeded sample of their prose): the
    tokenizer's vocabulary. Deterministic."""
    words = set(re.findall(r"[A-Za-z]+", " ".join(NOISE_SENTENCES)))
    for group in (CITIES, KEY_ADJECTIVES, KEY_NOUNS, VALUE_WORDS, ICL_LABELS, ICL_ADJ):
        for w in group:
            words.update(re.findall(r"[A-Za-z]+", w))
    for kind in NEEDLE_KINDS.values():
        words.update(re.findall(r"[A-Za-z]+", kind.needle + kind.question + kind.answer))
    words.update(re.findall(r"[A-Za-z]+", PROMPT_SUFFIX + ICL_EXAMPLE + UNKNOWN))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 7])))
    for _ in range(n_docs * 20):
        words.update(re.findall(r"[A-Za-z]+", essay_sentence(rng)))
    return sorted(words)


# --- packing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packer:
    """Turns documents into (B, T+1) token rows: [BOS] doc [EOS] [BOS] doc [EOS] ... cut at T+1."""

    tokenizer: object  # a tokenizers.Tokenizer (needs offsets)
    bos_id: int
    eos_id: int
    cfg: CorpusConfig
    answer_weight: float = 1.0

    def row(self, rng: np.random.Generator, n_tokens: int, min_doc: int, max_doc: int,
            mix: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n_tokens,) ids, weights and answer tags; weight[i] and tag[i] belong to predicting
        ids[i]; tag is 0 outside answers, else 1 + the index of the document kind in DOC_KINDS."""
        ids: list[int] = []
        wts: list[float] = []
        tags: list[int] = []
        while len(ids) < n_tokens:
            left = n_tokens - len(ids)
            lo, hi = np.log(min_doc), np.log(max(min_doc, max_doc))
            budget = min(int(np.exp(rng.uniform(lo, hi))), max(16, left - 2))
            doc = make_doc(rng, budget, self.cfg, mix)
            enc = self.tokenizer.encode(doc.text, add_special_tokens=False)
            w = np.ones(len(enc.ids), dtype=np.float32)
            tag = np.zeros(len(enc.ids), dtype=np.int64)
            if doc.spans:
                starts = np.asarray([o[0] for o in enc.offsets])
                ends = np.asarray([o[1] for o in enc.offsets])
                for a, b in doc.spans:
                    hit = (starts < b) & (ends > a)
                    w[hit] = self.answer_weight
                    tag[hit] = 1 + DOC_KINDS.index(doc.kind)
            ids += [self.bos_id, *enc.ids, self.eos_id]
            wts += [1.0, *w.tolist(), 1.0]
            tags += [0, *tag.tolist(), 0]
        return (np.asarray(ids[:n_tokens], dtype=np.int64), np.asarray(wts[:n_tokens], dtype=np.float32),
                np.asarray(tags[:n_tokens], dtype=np.int64))

    def batch(self, seed_seq: np.random.SeedSequence, batch_size: int, seq_len: int,
              min_doc: int, max_doc: int, mix: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, T+1) ids, (B, T) target weights and (B, T) answer tags, a pure function of `seed_seq`."""
        rows = [self.row(np.random.Generator(np.random.PCG64(s)), seq_len + 1, min_doc, max_doc, mix)
                for s in seed_seq.spawn(batch_size)]
        ids = np.stack([r[0] for r in rows])  # (B, T+1)
        wts = np.stack([r[1][1:] for r in rows])  # (B, T): weight of predicting ids[:, 1:]
        tags = np.stack([r[2][1:] for r in rows])  # (B, T)
        return ids, wts, tags
