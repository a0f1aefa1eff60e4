"""Haystack sentence sources for retrieval probes.

A haystack is an endless stream of sentences that the probes cut to an exact token budget:

- ``noise``: five plain filler sentences repeated in order;
- ``essay``: varied prose from a seeded template generator (no digits, no needle phrasing);
- a path: a ``.txt`` file, or a folder searched recursively for ``.txt`` files, split into
  sentences and cycled from a seeded starting sentence.

Only :func:`load_haystack` reads files; streams are pure functions of their generator.
Cutting text to exact token budgets lives in :mod:`diffeval.probes.prompts`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from diffeval.errors import UsageError, did_you_mean
from diffeval.textdata import read_text, text_files

BUILTIN = ("noise", "essay")

NOISE_SENTENCES: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

# A sentence from a user's file longer than this is cut at word boundaries, so that a text
# without punctuation still offers needle positions every few hundred characters.
MAX_SENTENCE_CHARS = 400

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


# --- essay generator ------------------------------------------------------------------------
# Word lists are chosen to be free of digits, of the needle phrasing ("magic", "special") and
# of the key / value vocabularies in diffeval.probes.needle (a test checks all three).

_PEOPLE = (
    "gardener", "librarian", "baker", "painter", "carpenter", "potter", "weaver", "shepherd",
    "beekeeper", "clockmaker", "fisherman", "teacher", "student", "musician", "traveler",
    "farmer", "miller", "sailor", "mapmaker", "bookbinder", "glassblower", "tailor", "cook",
    "poet", "historian", "botanist", "stonemason", "ferryman", "innkeeper", "photographer",
)
_PERSON_ADJ = (
    "old", "young", "quiet", "patient", "cheerful", "careful", "curious", "tired", "thoughtful",
    "friendly", "stubborn", "gentle", "busy", "wise", "shy",
)
_THINGS = (
    "wooden fence", "stone bridge", "garden path", "broken lamp", "basket of pears",
    "bundle of letters", "old map of the valley", "copper pan", "woolen blanket",
    "row of bean plants", "painted door", "narrow staircase", "collection of seashells",
    "heavy oak table", "box of buttons", "window frame", "set of brushes", "leather satchel",
    "clay pot", "wheelbarrow", "bicycle", "small rowing boat", "bookshelf", "woven rug",
    "harvest cart", "weather vane", "flower bed", "iron gate",
)
# (third person singular, base form, past tense)
_VERBS = (
    ("repairs", "repair", "repaired"), ("paints", "paint", "painted"),
    ("cleans", "clean", "cleaned"), ("measures", "measure", "measured"),
    ("carries", "carry", "carried"), ("admires", "admire", "admired"),
    ("sketches", "sketch", "sketched"), ("polishes", "polish", "polished"),
    ("examines", "examine", "examined"), ("moves", "move", "moved"),
    ("mends", "mend", "mended"), ("describes", "describe", "described"),
    ("guards", "guard", "guarded"), ("arranges", "arrange", "arranged"),
    ("inspects", "inspect", "inspected"), ("borrows", "borrow", "borrowed"),
    ("decorates", "decorate", "decorated"), ("photographs", "photograph", "photographed"),
)
_PLACES = (
    "near the harbor", "beside the old mill", "in the quiet library", "along the river bank",
    "under the tall oaks", "at the edge of the meadow", "behind the bakery",
    "on the hill above the village", "inside the workshop", "by the fountain in the square",
    "across the wooden bridge", "next to the orchard", "in the courtyard",
    "at the foot of the mountain", "beneath the clock tower", "on the shore of the lake",
)
_TIMES = (
    "every morning", "before sunrise", "late in the autumn", "after the rain",
    "on quiet evenings", "during the long winter", "at dusk", "in early spring",
    "on market days", "around midday", "through the summer", "once in a while",
    "on foggy mornings", "at the end of the week",
)
_SCENES = (
    "the valley", "the market square", "the orchard", "the lake", "the old road", "the harbor",
    "the forest trail", "the reading room", "the hillside", "the meadow", "the garden",
    "the riverside", "the town hall", "the railway station", "the pier", "the marsh",
    "the vineyard", "the moor", "the village", "the chapel",
)
_QUALITIES = (
    "calm", "bright", "narrow", "peaceful", "dusty", "crowded", "quiet", "windy", "misty",
    "fragrant", "silent", "busy", "cold", "warm", "golden", "muddy", "lively", "sleepy",
    "spacious", "shaded",
)
_ADVERBS = (
    "carefully", "slowly", "patiently", "quietly", "happily", "gladly", "gently", "eagerly",
    "rarely", "often",
)


# The essay vocabularies, for other generators that need neutral words (e.g. ICL tasks).
ESSAY_WORDS: dict[str, tuple] = {"people": _PEOPLE, "person_adjectives": _PERSON_ADJ, "things": _THINGS,
                                 "verbs": _VERBS, "places": _PLACES, "times": _TIMES}


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _person(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return f"the {_pick(rng, _PERSON_ADJ)} {_pick(rng, _PEOPLE)}"
    return f"the {_pick(rng, _PEOPLE)}"


def _thing(rng: np.random.Generator) -> str:
    thing = _pick(rng, _THINGS)
    return f"the {thing}" if rng.random() < 0.6 else _article(thing)


def _two_people(rng: np.random.Generator) -> tuple[str, str]:
    first = _person(rng)
    second = _person(rng)
    while second == first:
        second = _person(rng)
    return first, second


def _two_of(rng: np.random.Generator, words: tuple[str, ...]) -> tuple[str, str]:
    i, j = rng.choice(len(words), size=2, replace=False)
    return words[int(i)], words[int(j)]


def _essay_templates():
    """Sentence makers: each takes the generator and returns one sentence (maybe lower-case)."""
    p, t, v = _person, _thing, _VERBS
    return (
        lambda r: f"{p(r)} {_pick(r, v)[0]} {t(r)} {_pick(r, _PLACES)}.",
        lambda r: f"{_pick(r, _TIMES)}, {p(r)} {_pick(r, v)[0]} {t(r)}.",
        lambda r: f"{_pick(r, _SCENES)} is {_pick(r, _QUALITIES)} {_pick(r, _TIMES)}.",
        lambda r: "{} was {} and {} {}.".format(_pick(r, _SCENES), *_two_of(r, _QUALITIES), _pick(r, _TIMES)),
        lambda r: f"many people say that {_pick(r, _SCENES)} feels {_pick(r, _QUALITIES)} {_pick(r, _TIMES)}.",
        lambda r: f"{p(r)} {_pick(r, _ADVERBS)} {_pick(r, v)[0]} {t(r)}.",
        lambda r: f"it is said that {p(r)} once {_pick(r, v)[2]} {t(r)} {_pick(r, _PLACES)}.",
        lambda r: "{} and {} {} {} together.".format(*_two_people(r), _pick(r, v)[1], t(r)),
        lambda r: f"nobody remembers why {p(r)} {_pick(r, v)[2]} {t(r)} {_pick(r, _TIMES)}.",
        lambda r: f"{p(r)} likes to walk {_pick(r, _PLACES)} {_pick(r, _TIMES)}.",
        lambda r: f"when the weather turns {_pick(r, _QUALITIES)}, {p(r)} {_pick(r, v)[0]} {t(r)}.",
        lambda r: f"visitors often remark that {_pick(r, _SCENES)} looks {_pick(r, _QUALITIES)} {_pick(r, _TIMES)}.",
        lambda r: f"{p(r)} keeps {t(r)} {_pick(r, _PLACES)}.",
        lambda r: "{} prefers the {} to the {}.".format(p(r), *_two_of(r, _THINGS)),
        lambda r: f"some afternoons {p(r)} sits {_pick(r, _PLACES)} and watches the clouds.",
        lambda r: "according to {}, {} was once {} and {}.".format(p(r), _pick(r, _SCENES), *_two_of(r, _QUALITIES)),
        lambda r: f"{_pick(r, _SCENES)} has always been {_pick(r, _QUALITIES)}, even {_pick(r, _TIMES)}.",
        lambda r: "{} asked {} to {} {}.".format(*_two_people(r), _pick(r, v)[1], t(r)),
        lambda r: f"few places are as {_pick(r, _QUALITIES)} as {_pick(r, _SCENES)} {_pick(r, _TIMES)}.",
        lambda r: f"{p(r)} wrote a long letter about {_pick(r, _SCENES)}.",
        lambda r: f"there is {_article(_pick(r, _QUALITIES))} path {_pick(r, _PLACES)}.",
        lambda r: f"in the evening, {p(r)} tells stories about {_pick(r, _SCENES)}.",
        lambda r: f"{p(r)} never forgets to {_pick(r, v)[1]} {t(r)} {_pick(r, _TIMES)}.",
        lambda r: f"long ago, {_pick(r, _SCENES)} was known for its {_pick(r, _QUALITIES)} mornings.",
        lambda r: f"{p(r)} borrowed {t(r)} from {p(r)} and returned it {_pick(r, _TIMES)}.",
    )


_TEMPLATES = _essay_templates()


def essay_sentence(rng: np.random.Generator) -> str:
    """One grammatical sentence about a neutral topic, drawn from `rng`."""
    sentence = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))](rng)
    return sentence[0].upper() + sentence[1:]


# --- sources --------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: whitespace collapsed, split after . ! ? (closing quotes kept),
    over-long pieces cut at word boundaries to at most MAX_SENTENCE_CHARS characters."""
    flat = " ".join(text.split())
    out: list[str] = []
    for piece in _SENTENCE_END.split(flat) if flat else ():
        piece = piece.strip()
        while len(piece) > MAX_SENTENCE_CHARS:
            cut = piece.rfind(" ", 1, MAX_SENTENCE_CHARS + 1)
            cut = cut if cut > 0 else MAX_SENTENCE_CHARS
            out.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            out.append(piece)
    return out


@dataclass(frozen=True)
class Haystack:
    """A sentence source. `sentences` is the fixed pool (empty for ``essay``)."""

    kind: str  # noise | essay | path
    source: str  # the spec as given: "noise", "essay" or the path
    sentences: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("noise", "essay", "path"):
            raise UsageError(f"haystack kind {self.kind!r} is not one of noise, essay, path")
        if self.kind != "essay" and not self.sentences:
            raise UsageError(f"haystack {self.source!r} has no sentences")
        if any(not s.strip() for s in self.sentences):
            raise UsageError(f"haystack {self.source!r} contains an empty sentence")

    def stream(self, rng: np.random.Generator) -> Iterator[str]:
        """Endless sentences. noise: the pool in order from its first sentence; path: the pool
        cycled from a sentence drawn from `rng`; essay: fresh sentences drawn from `rng`."""
        if self.kind == "essay":
            while True:
                yield essay_sentence(rng)
        start = 0 if self.kind == "noise" else int(rng.integers(len(self.sentences)))
        n = len(self.sentences)
        i = start
        while True:
            yield self.sentences[i % n]
            i += 1

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the pool, or of the generator's identity for ``essay``."""
        body = "\n".join(self.sentences) if self.sentences else f"essay-generator-v1:{len(_TEMPLATES)}"
        return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict:
        """JSON-able description for results provenance."""
        return {"kind": self.kind, "source": self.source, "n_sentences": len(self.sentences),
                "sha256_16": self.fingerprint()}


def load_haystack(spec: str) -> Haystack:
    """Resolve a haystack spec: "noise", "essay", or a path to a text file / folder of .txt
    files (read here, once). A file path shadowing a built-in name can be given as ./noise."""
    if spec == "noise":
        return Haystack("noise", spec, NOISE_SENTENCES)
    if spec == "essay":
        return Haystack("essay", spec)
    path = Path(spec).expanduser()
    if not path.exists():
        hint = did_you_mean(spec, BUILTIN) if len(spec) < 12 else "valid: noise, essay"
        raise UsageError(f"haystack {spec!r}: no such file or folder ({hint}, or a path to .txt text)")
    files = text_files(path, "haystack")
    sentences: list[str] = []
    for f in files:
        sentences.extend(split_sentences(read_text(f, "haystack")))
    if not sentences:
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise UsageError(f"haystack {path}: no text found in {names}")
    return Haystack("path", spec, tuple(sentences))


