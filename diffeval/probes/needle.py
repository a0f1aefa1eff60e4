"""Needle-in-a-haystack retrieval: configuration, exact-length sample generation, scoring.

A sample group is one (length, sample index): N needles with distinct keys and values are
hidden in one haystack; R of them are asked, one question per prompt. The first asked needle
moves to each requested depth while the haystack sentences and the other needles stay put,
so prompts of one group share long token prefixes (across depths up to the first needle's
slot, across the R questions up to the question).

Prompt = [BOS] + context + "\\n\\nQuestion: " + question + "\\nAnswer: " + answer prefix.
The prompt of the first question has exactly `length` tokens under the model's tokenizer.
Seeds derive from (seed, task, length, sample index) through numpy's SeedSequence, spawned
into three streams: needles (keys, values), haystack sentences, distractor positions.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from diffeval.errors import ConfigError, UsageError, did_you_mean
from diffeval.probes.haystack import Haystack, load_haystack
from diffeval.probes.prompts import PieceEncoder, PromptFormat, char_span, common_prefix, fit_fragment
from diffeval.probes.specs import check_int, length_label, parse_grid

TASK = "needle"
VERSION = 2  # bump when samples for the same config change (2: RULER kinds ask in the singular)
_TASK_KEY = int.from_bytes(TASK.encode("ascii"), "big")  # the task's share of every seed

# --- prompt formats -----------------------------------------------------------------------
CITY_NEEDLE = "The magic number for {key} is {value}."
CITY_QUESTION = "What is the magic number for {key}?"
CITY_ANSWER = "The magic number for {key} is"
RULER_NEEDLE = "One of the special magic {types} for {key} is: {value}."
RULER_QUESTION = "What is the special magic {type} for {key} mentioned in the provided text?"
RULER_ANSWER = "The special magic {type} for {key} mentioned in the provided text is"
PROMPT_SUFFIX = "\n\nQuestion: {question}\nAnswer: {answer}"

CITIES: tuple[str, ...] = (
    "Tokyo", "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Budapest",
    "Warsaw", "Lisbon", "Dublin", "Oslo", "Stockholm", "Helsinki", "Copenhagen", "Amsterdam",
    "Brussels", "Zurich", "Geneva", "Munich", "Hamburg", "Milan", "Naples", "Florence",
    "Venice", "Barcelona", "Seville", "Valencia", "Porto", "Athens", "Istanbul", "Ankara",
    "Cairo", "Alexandria", "Nairobi", "Lagos", "Accra", "Dakar", "Casablanca", "Marrakesh",
    "Tunis", "Algiers", "Addis Ababa", "Kampala", "Kigali", "Luanda", "Johannesburg",
    "Cape Town", "Durban", "Mumbai", "Delhi", "Kolkata", "Chennai", "Bangalore", "Hyderabad",
    "Karachi", "Lahore", "Dhaka", "Kathmandu", "Colombo", "Bangkok", "Hanoi", "Manila",
    "Jakarta", "Singapore", "Kuala Lumpur", "Seoul", "Busan", "Osaka", "Kyoto", "Beijing",
    "Shanghai", "Shenzhen", "Chengdu", "Taipei", "Hong Kong", "Ulaanbaatar", "Tashkent",
    "Tehran", "Baghdad", "Riyadh", "Dubai", "Doha", "Muscat", "Amman", "Beirut", "Sydney",
    "Melbourne", "Brisbane", "Perth", "Auckland", "Wellington", "Toronto", "Montreal",
    "Vancouver", "Ottawa", "Chicago", "Boston", "Seattle", "Denver", "Houston", "Miami",
    "Atlanta", "Phoenix", "Philadelphia", "San Francisco", "Los Angeles", "New Orleans",
    "Mexico City", "Guadalajara", "Havana", "Bogota", "Lima", "Quito", "Santiago",
    "Buenos Aires", "Montevideo", "Caracas", "Sao Paulo", "Rio de Janeiro", "Reykjavik",
    "Edinburgh", "Glasgow", "Manchester", "Krakow", "Riga", "Vilnius", "Tallinn", "Kyiv",
    "Bucharest", "Sofia", "Belgrade", "Zagreb",
)
KEY_ADJECTIVES: tuple[str, ...] = (
    "brave", "eager", "fancy", "jolly", "merry", "nimble", "proud", "rapid", "shiny", "silly",
    "swift", "tidy", "vast", "witty", "zesty", "bold", "clever", "daring", "fierce", "grand",
    "humble", "icy", "jumpy", "loyal", "mighty", "noble", "plucky", "rusty", "sturdy", "tiny",
    "vivid", "wild", "zany", "frosty", "sunny", "lucky", "snowy", "smooth", "bumpy", "fluffy",
)
KEY_NOUNS: tuple[str, ...] = (
    "falcon", "otter", "badger", "heron", "lynx", "marmot", "panda", "walrus", "beaver",
    "cobra", "dingo", "ferret", "gecko", "hyena", "ibis", "jackal", "koala", "lemur", "magpie",
    "newt", "ocelot", "puffin", "quail", "raven", "salmon", "tapir", "urchin", "vulture",
    "wombat", "zebra", "bison", "camel", "donkey", "egret", "finch", "gopher", "hornet",
    "iguana", "moose", "toucan",
)
VALUE_WORDS: tuple[str, ...] = (
    "anthem", "bramble", "cobalt", "dynamo", "fresco", "gadget", "igloo", "jigsaw", "kernel",
    "lagoon", "mosaic", "nectar", "oracle", "pebble", "quartz", "riddle", "saffron", "tundra",
    "velvet", "walnut", "xylophone", "zephyr", "almanac", "bonfire", "crimson", "drizzle",
    "eclipse", "fjord", "glacier", "hammock", "indigo", "juniper", "kayak", "meteor", "nomad",
    "obsidian", "paprika", "quiver", "rhubarb", "sequoia", "trombone", "ukulele", "vortex",
    "whistle", "zenith", "acorn", "biscuit", "dagger", "emerald", "falafel", "galaxy",
    "helmet", "ivory", "jasmine", "lilac", "marble", "nutmeg", "orchid", "parsley", "ribbon",
    "sapphire", "tulip", "utopia", "violin", "waffle", "yogurt", "zinnia", "avocado",
    "blossom", "carousel", "dandelion", "espresso", "flamingo", "gondola", "hazelnut",
    "jubilee", "kaleidoscope", "licorice", "magnolia", "nebula", "origami", "pinecone",
    "quasar", "rainbow", "snowflake", "tornado", "umbrella", "volcano", "wizard", "yearbook",
    "cinnamon", "harmonica", "lemonade", "mandolin", "peppermint", "tambourine", "vanilla",
    "watermelon", "broccoli", "cucumber", "pretzel",
)


@dataclass(frozen=True)
class NeedleKind:
    """One needle format: templates with {key} / {value}, and how keys and values are drawn."""

    name: str
    needle: str
    question: str
    answer: str
    keys: str  # "city" | "pair" (adjective-noun)
    values: str  # "number" (7 digits) | "word" | "uuid"


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


def _capacity(kind: NeedleKind) -> int:
    keys = len(CITIES) if kind.keys == "city" else len(KEY_ADJECTIVES) * len(KEY_NOUNS)
    return min(keys, len(VALUE_WORDS)) if kind.values == "word" else keys


# --- config and samples ---------------------------------------------------------------------


@dataclass(frozen=True)
class NeedleConfig:
    """A needle task: which cells (lengths x depths), how many needles, asked and samples."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    n_needles: int = 1
    n_queries: int = 1
    samples: int = 10
    haystack: str = "noise"  # noise | essay | path to a .txt file or folder
    needle_kind: str = "city"  # city | kv-word | kv-number | uuid
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        for n in self.lengths:
            check_int("lengths", n, 1)
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        try:
            object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        except (TypeError, ValueError):
            raise ConfigError(f"{self.depths!r} must be percentages between 0 and 100", "depths") from None
        if not self.lengths:
            raise ConfigError("is empty: give at least one context length", "lengths")
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
        cap = _capacity(NEEDLE_KINDS[self.needle_kind])
        if self.n_needles > cap:
            raise ConfigError(f"{self.n_needles} exceeds the {cap} distinct {self.needle_kind} needles available", "n_needles")
        check_int("n_queries", self.n_queries, 1)
        if self.n_queries > self.n_needles:
            raise ConfigError(f"{self.n_queries} must not exceed the number of needles ({self.n_needles})", "n_queries")
        check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0)
        if not isinstance(self.haystack, str) or not self.haystack.strip():
            raise ConfigError(f"{self.haystack!r} must be 'noise', 'essay' or a path", "haystack")

    def to_dict(self) -> dict:
        """JSON-able parameters (with task name and version) for results.json."""
        return {"task": TASK, "version": VERSION, "lengths": [int(n) for n in self.lengths],
                "depths": list(self.depths), "n_needles": int(self.n_needles),
                "n_queries": int(self.n_queries), "samples": int(self.samples),
                "haystack": self.haystack, "needle_kind": self.needle_kind, "seed": int(self.seed)}


@dataclass(frozen=True)
class NeedleSample:
    """One sample of the (length, depth) cell: sample `index`, one prompt per asked needle.

    Token positions (needle spans, answer spans) index the prompts, BOS included; they are
    the same in every prompt of the sample because the context is a shared prefix.
    `needles` lists the asked needles first (in query order), then the distractors.
    """

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

    def __post_init__(self) -> None:
        r = len(self.queries)
        sizes = {"prompts": len(self.prompts), "n_tokens": len(self.n_tokens),
                 "expected": len(self.expected), "answer_spans": len(self.answer_spans)}
        if r < 1 or any(v != r for v in sizes.values()):
            raise ValueError(f"sample {self.id}: {r} queries but {sizes}")
        if [len(p) for p in self.prompts] != list(self.n_tokens):
            raise ValueError(f"sample {self.id}: n_tokens {list(self.n_tokens)} disagree with the prompts")

    def to_record(self) -> dict:
        """JSON-able summary without the token lists (prompts are identified by sha256)."""
        return {"id": self.id, "length": self.length, "depth": self.depth, "index": self.index,
                "n_tokens": list(self.n_tokens), "needles": [dict(n) for n in self.needles],
                "queries": list(self.queries), "expected": list(self.expected),
                "answer_spans": [list(s) for s in self.answer_spans], "n_context": self.n_context,
                "prompt_sha256": [_ids_hash(p) for p in self.prompts]}


def _ids_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


# --- needles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Needle:
    key: str
    value: str
    sentence: str
    value_at: int  # char offset of the value in the sentence
    question: str
    answer: str

    @property
    def stem(self) -> str:
        return self.sentence[: self.value_at]


def make_needle(kind: NeedleKind, key: str, value: str) -> _Needle:
    head = kind.needle.split("{value}")[0].format(key=key)
    return _Needle(key, value, kind.needle.format(key=key, value=value), len(head),
                   kind.question.format(key=key), kind.answer.format(key=key))


def _draw_needles(kind: NeedleKind, n: int, rng: np.random.Generator) -> list[_Needle]:
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
    return [make_needle(kind, k, v) for k, v in zip(keys, values)]


# --- layout and assembly ---------------------------------------------------------------------
_SLACK = 4  # tokens left for the closing fragment when whole sentences are packed
_FIT_TRIES = 4  # re-fits of the fragment against the encoding of the whole prompt
_CALIBRATE = 4  # layout rebuilds for tokenizers whose pieces do not add up (see _group)
_MAX_MISS = 3  # largest accepted |real - requested| length when exact is impossible
_MAX_ATTEMPTS = 20  # needle redraws when a value or key phrase also occurs elsewhere
_HAY, _FILL = -2, -1  # tags of haystack sentences and of the closing fragment


@dataclass(frozen=True)
class _Layout:
    """Everything but the first asked needle, in context order, shared by all depths."""

    rest: tuple[tuple[str, int], ...]  # (text, tag): tag = needle index, _HAY, or _FILL (last)
    fill_src: str  # text the closing fragment is cut from
    slot_tokens: tuple[int, ...]  # (len(rest) + 1,) nominal token offset of each boundary


@dataclass(frozen=True)
class _Built:
    """One assembled context and the first prompt over it."""

    parts: tuple[tuple[str, int], ...]  # (text, tag) in context order, empty fragment dropped
    context: str
    text: str  # context + first question suffix
    ids: tuple[int, ...]  # (T,) BOS + encode(text)
    units: tuple[str, ...]  # the parts with their leading space; the last one + the suffix
    nominal: int  # BOS + sum of unit costs: equals len(ids) when the units add up
    offsets: Optional[tuple[int, ...]]  # (len(parts) + 1,) token start of each unit, and
    # the prompt's end; None when the units' ids do not concatenate to `ids`


def _lay_out(hay: Haystack, needles: list[_Needle], hay_budget: int, enc: PieceEncoder,
             ss_hay: np.random.SeedSequence, ss_place: np.random.SeedSequence) -> _Layout:
    stream = hay.stream(np.random.Generator(np.random.PCG64(ss_hay)))
    sentences: list[str] = []
    used = 0
    for s in stream:
        c = enc.cost(" " + s)
        if c == 0:
            raise UsageError(f"haystack {hay.source!r}: the tokenizer encodes {s[:40]!r} to no tokens")
        if used + c > hay_budget - _SLACK:
            break
        sentences.append(s)
        used += c
    fill_src = " ".join([s, next(stream), next(stream)])
    # The other needles go to random sentence boundaries, the same for every depth.
    place = np.random.Generator(np.random.PCG64(ss_place))
    n_other, n_slots = len(needles) - 1, len(sentences) + 1
    slots = place.choice(n_slots, size=n_other, replace=n_other > n_slots)
    by_slot: dict[int, list[int]] = {}
    for k, slot in enumerate(slots.tolist(), start=1):
        by_slot.setdefault(slot, []).append(k)
    rest: list[tuple[str, int]] = []
    for b in range(n_slots):
        rest.extend((needles[k].sentence, k) for k in by_slot.get(b, ()))
        if b < len(sentences):
            rest.append((sentences[b], _HAY))
    fill, _ = fit_fragment(fill_src, hay_budget - used, enc)
    rest.append((fill, _FILL))
    costs = [enc.cost(" " + t) if t else 0 for t, _ in rest]
    return _Layout(tuple(rest), fill_src, tuple(int(c) for c in np.cumsum([0, *costs])))


def _slot(layout: _Layout, depth: float) -> int:
    """Boundary whose nominal token offset is closest to depth% of the rest (ties: earlier)."""
    offs = np.asarray(layout.slot_tokens, dtype=np.float64)  # (len(rest) + 1,)
    return int(np.argmin(np.abs(offs - depth / 100.0 * offs[-1])))


def _build(tok, enc: PieceEncoder, bos: list[int], parts: list[tuple[str, int]], suffix: str) -> _Built:
    pieces = [("" if i == 0 else " ") + t for i, (t, _) in enumerate(parts)]
    context = "".join(pieces)
    text = context + suffix
    ids = tuple(bos + list(tok.encode(text)))
    # The last piece is encoded with the question: many tokenizers merge "green.\n\n".
    units = (*pieces[:-1], pieces[-1] + suffix)
    flat = list(bos)
    offsets = [len(bos)]
    for i, u in enumerate(units):
        flat.extend(enc.piece(u, i == 0))
        offsets.append(len(flat))
    same = len(flat) == len(ids) and common_prefix(flat, ids) == len(ids)
    return _Built(tuple(parts), context, text, ids, units, len(flat), tuple(offsets) if same else None)


def _assemble(tok, enc: PieceEncoder, bos: list[int], first: _Needle, suffix: str,
              layout: _Layout, slot: int, length: int, bias: int) -> _Built:
    """Insert the first asked needle at `slot` and cut the closing fragment so that the first
    prompt has `length` tokens, checked on the encoding of the whole string. `bias` is the
    measured (real - nominal) token count of this layout. Returns the closest prompt found."""
    seq = [*layout.rest[:slot], (first.sentence, 0), *layout.rest[slot:]]
    f = next(i for i, (_, tag) in enumerate(seq) if tag == _FILL)
    head = len(bos) + sum(enc.cost(("" if i == 0 else " ") + t, i == 0) for i, (t, _) in enumerate(seq[:f]))
    tail = "".join(" " + t for t, _ in seq[f + 1:]) + suffix
    r = length - head - bias
    best: Optional[_Built] = None
    for _ in range(_FIT_TRIES):
        fill, _ = fit_fragment(layout.fill_src, r, enc, first=f == 0, tail=tail)
        parts = [(fill if tag == _FILL else t, tag) for t, tag in seq]
        built = _build(tok, enc, bos, [(t, tag) for t, tag in parts if t], suffix)
        if best is None or abs(length - len(built.ids)) < abs(length - len(best.ids)):
            best = built
        if len(built.ids) == length:
            break
        r += length - len(built.ids)
    assert best is not None
    return best


def _clean(context: str, needles: list[_Needle], suffixes: list[str]) -> bool:
    """Each needle sentence and key phrase occurs once in the context, and each value
    (case-insensitively) only inside its needle, never in a question."""
    low = context.lower()
    tails = [s.lower() for s in suffixes]
    for n in needles:
        v = n.value.lower()
        if context.count(n.sentence) != 1 or context.count(n.stem) != 1 or low.count(v) != 1:
            return False
        if any(v in t for t in tails):
            return False
    return True


def needle_spans(tok, enc: PieceEncoder, bos: list[int], built: _Built, needles: list[_Needle]):
    """-> ({needle index: (start, end, value start, value end)}, context token count);
    positions index the prompt, BOS included."""
    out: dict[int, tuple[int, int, int, int]] = {}
    last = len(built.parts) - 1
    if built.offsets is not None:
        n_ctx = 0
        for i, (t, tag) in enumerate(built.parts):
            if tag < 0 and i < last:
                continue
            unit, lead = built.units[i], (0 if i == 0 else 1)
            encode = enc.plain if i == 0 else enc.inner
            uids = encode(unit)
            # The last unit also holds the question: find where its part ends.
            s, e = char_span(unit, uids, lead, lead + len(t), encode) if i == last else (0, len(uids))
            o = built.offsets[i]
            if i == last:
                n_ctx = o + e - len(bos)
            if tag >= 0:
                at = lead + needles[tag].value_at
                vs, ve = char_span(unit, uids, at, at + len(needles[tag].value), encode)
                out[tag] = (o + s, o + e, o + vs, o + ve)
        return out, n_ctx
    # The units do not add up for this tokenizer: locate by encoding prefixes of the prompt
    # (O(n) per span, so slower, but exact).
    body = built.ids[len(bos):]
    pos = 0
    for i, (t, tag) in enumerate(built.parts):
        a = pos + (0 if i == 0 else 1)
        pos = a + len(t)
        if tag >= 0:
            s, e = char_span(built.text, body, a, pos, tok.encode)
            v = a + needles[tag].value_at
            vs, ve = char_span(built.text, body, v, v + len(needles[tag].value), tok.encode)
            out[tag] = tuple(x + len(bos) for x in (s, e, vs, ve))
    return out, char_span(built.text, body, 0, len(built.context), tok.encode)[1]


def question_suffix(question: str, answer: str, fmt: Optional[PromptFormat] = None) -> str:
    """What follows the context: the question, then the answer prefix after the format's lead
    (plain: PROMPT_SUFFIX; chat: the end of the user turn and the assistant header)."""
    if fmt is None or fmt.name == "plain":
        return PROMPT_SUFFIX.format(question=question, answer=answer)
    return f"\n\nQuestion: {question}{fmt.answer_lead()}{answer}"


def assemble(tok, enc: PieceEncoder, bos: list[int], hay: Haystack, needles: list[_Needle], suffixes: list[str],
             length: int, depths: Sequence[float], ss_hay: np.random.SeedSequence,
             ss_place: np.random.SeedSequence) -> Optional[list[_Built]]:
    """One context per depth: the first needle at that depth%, the others at seeded sentence
    boundaries of one seeded haystack, the first suffix's prompt exactly `length` tokens.
    None when a value or key phrase of the needles also occurs elsewhere (draw others)."""
    fixed = len(bos) + enc.cost(suffixes[0]) + sum(enc.cost(" " + n.sentence) for n in needles)
    if fixed > length:
        raise UsageError(f"length {length} is too short: {len(needles)} needle(s) and the question "
                         f"already take {fixed} tokens under this tokenizer")
    # Piece costs are exact for most tokenizers (bias 0, one pass). Otherwise measure the
    # real - nominal count on a whole prompt and rebuild the layout with that correction.
    bias = 0
    for _ in range(_CALIBRATE):
        layout = _lay_out(hay, needles, length - fixed - bias, enc, ss_hay, ss_place)
        built = _assemble(tok, enc, bos, needles[0], suffixes[0], layout, _slot(layout, depths[0]), length, bias)
        if built.offsets is not None or len(built.ids) - built.nominal == bias:
            break
        bias = len(built.ids) - built.nominal
    out = []
    for depth in depths:
        if depth != depths[0]:
            built = _assemble(tok, enc, bos, needles[0], suffixes[0], layout, _slot(layout, depth), length, bias)
        if not _clean(built.context, needles, suffixes):
            return None
        if abs(len(built.ids) - length) > _MAX_MISS:
            raise UsageError(f"cannot build a {length}-token prompt with this tokenizer "
                             f"(closest: {len(built.ids)} tokens)")
        out.append(built)
    return out


def _group(cfg: NeedleConfig, tok, enc: PieceEncoder, hay: Haystack, length: int, index: int,
           fmt: Optional[PromptFormat] = None) -> list[NeedleSample]:
    kind = NEEDLE_KINDS[cfg.needle_kind]
    ss_needles, ss_hay, ss_place = np.random.SeedSequence([cfg.seed, _TASK_KEY, length, index]).spawn(3)
    needle_rng = np.random.Generator(np.random.PCG64(ss_needles))
    bos = (fmt or PromptFormat()).prefix_ids(tok)  # BOS, and a chat template's head
    depths = sorted(cfg.depths)
    for _ in range(_MAX_ATTEMPTS):
        needles = _draw_needles(kind, cfg.n_needles, needle_rng)
        suffixes = [question_suffix(n.question, n.answer, fmt) for n in needles[: cfg.n_queries]]
        built = assemble(tok, enc, bos, hay, needles, suffixes, length, depths, ss_hay, ss_place)
        if built is not None:
            return [_make_sample(tok, enc, bos, b, needles, suffixes, length, d, index) for b, d in zip(built, depths)]
    raise UsageError(f"haystack {hay.source!r}: after {_MAX_ATTEMPTS} draws, a needle value or key "
                     f"phrase still also occurs in the text (length {length}, sample {index})")


def _make_sample(tok, enc: PieceEncoder, bos: list[int], built: _Built, needles: list[_Needle],
                 suffixes: list[str], length: int, depth: float, index: int) -> NeedleSample:
    spans, n_ctx = needle_spans(tok, enc, bos, built, needles)
    prompts = [built.ids] + [tuple(bos + list(tok.encode(built.context + s))) for s in suffixes[1:]]
    records = []
    for k, n in enumerate(needles):
        s, e, _, _ = spans[k]
        depth_pct = 100.0 * (s - len(bos)) / max(1, n_ctx - (e - s))
        records.append({"key": n.key, "value": n.value, "depth_pct": round(depth_pct, 3),
                        "token_start": int(s), "token_end": int(e)})
    r = len(suffixes)
    return NeedleSample(
        id=f"L{length}-d{depth:g}-s{index}", length=length, depth=depth, index=index,
        prompts=tuple(prompts), n_tokens=tuple(len(p) for p in prompts), needles=tuple(records),
        queries=tuple(n.key for n in needles[:r]), expected=tuple(n.value for n in needles[:r]),
        answer_spans=tuple((int(spans[k][2]), int(spans[k][3])) for k in range(r)),
        n_context=len(bos) + int(n_ctx), answer_prefix=needles[0].answer)


def generate_group(cfg: NeedleConfig, tokenizer, length: int, index: int,
                   haystack: Optional[Haystack] = None, fmt: Optional[PromptFormat] = None) -> list[NeedleSample]:
    """The samples of one (length, sample index), one per depth in ascending order, so any
    single sample can be regenerated without the rest."""
    hay = haystack if haystack is not None else load_haystack(cfg.haystack)
    return _group(cfg, tokenizer, PieceEncoder(tokenizer), hay, int(length), int(index), fmt)


def generate(cfg: NeedleConfig, tokenizer, max_positions: Optional[int] = None,
             allow_beyond: bool = False, fmt: Optional[PromptFormat] = None) -> list[NeedleSample]:
    """All samples, ordered by (length, sample index, depth). A prompt longer than
    `max_positions` is refused (UsageError) unless `allow_beyond`."""
    hay = load_haystack(cfg.haystack)
    limit = None if allow_beyond else max_positions
    if limit is not None:
        over = [n for n in sorted(cfg.lengths) if n > limit]
        if over:
            raise UsageError(f"length {over[0]} ({length_label(over[0])}) exceeds the model's position "
                             f"limit of {limit} tokens; use shorter lengths or --allow-beyond-max-positions")
    enc = PieceEncoder(tokenizer)
    out: list[NeedleSample] = []
    for length in sorted(cfg.lengths):
        for index in range(cfg.samples):
            group = _group(cfg, tokenizer, enc, hay, length, index, fmt)
            longest = max(max(s.n_tokens) for s in group)
            if limit is not None and longest > limit:
                raise UsageError(f"length {length}: a prompt has {longest} tokens (a longer question than "
                                 f"the first), over the model's position limit of {limit}")
            out.extend(group)
    return out


# --- scoring --------------------------------------------------------------------------------


def _check_expected(expected: Sequence[str]) -> None:
    if isinstance(expected, str):
        raise ValueError(f"expected must be a sequence of strings, not the string {expected!r}")
    if len(expected) == 0 or any(not isinstance(e, str) or not e for e in expected):
        raise ValueError(f"expected ({list(expected)!r}) must hold at least one non-empty string")


def score_prediction(expected: Sequence[str], prediction: str) -> float:
    """RULER string_match_all: the fraction of expected values found in `prediction` as
    case-insensitive substrings -> float in [0, 1]."""
    _check_expected(expected)
    low = prediction.lower()
    return sum(e.lower() in low for e in expected) / len(expected)


def score_any(expected: Sequence[str], prediction: str) -> float:
    """RULER string_match_part: 1.0 when any expected value occurs (case-insensitive), else 0.0."""
    _check_expected(expected)
    low = prediction.lower()
    return float(any(e.lower() in low for e in expected))


def score_sample(sample: NeedleSample, predictions: Sequence[str]) -> dict:
    """Per-sample record: sample.to_record() plus the predictions (one per query), their
    scores, "score" (the mean over queries) and "all_correct"."""
    if isinstance(predictions, str) or len(predictions) != len(sample.queries):
        got = repr(predictions) if isinstance(predictions, str) else f"{len(predictions)}"
        raise ValueError(f"sample {sample.id}: {len(sample.queries)} queries need as many predictions, got {got}")
    scores = [score_prediction([e], p) for e, p in zip(sample.expected, predictions)]
    return {**sample.to_record(), "prediction": list(predictions), "query_scores": scores,
            "score": math.fsum(scores) / len(scores), "all_correct": all(x == 1.0 for x in scores)}


# --- the probe ------------------------------------------------------------------------------
RULER_NEW_TOKENS = 128  # --decode ruler: RULER's and lm-eval's generation budget


def config(params: dict) -> NeedleConfig:
    """NeedleConfig from plain values (task YAML, command options): lengths and depths may be
    text ("4k,8k", "0:100:5") or lists."""
    from dataclasses import fields

    from diffeval.probes.specs import check_keys

    check_keys(params, {f.name for f in fields(NeedleConfig)}, TASK)
    return NeedleConfig(**parse_grid(params))


def answer_budget(samples: Sequence[NeedleSample], tok) -> int:
    """Enough new tokens for the longest expected answer (" value.") plus a newline."""
    longest = max((len(tok.encode(f" {v}.")) for s in samples for v in s.expected), default=8)
    return longest + 2


@dataclass(frozen=True)
class _Item:
    """A needle sample with the generation budget of its run."""

    sample: NeedleSample
    max_new_tokens: int

    @property
    def id(self) -> str:
        return self.sample.id


def _generate(cfg: NeedleConfig, ctx) -> list[_Item]:
    tok = ctx.need_tokenizer(TASK)
    samples = generate(cfg, tok, ctx.max_positions, ctx.allow_beyond, ctx.prompt_format)
    budget = ctx.max_new_tokens or (RULER_NEW_TOKENS if ctx.decode == "ruler" else answer_budget(samples, tok))
    return [_Item(s, budget) for s in samples]


def haystack_group(item: _Item) -> str:
    """The samples over one haystack (its depths share the prompt prefix up to the needle)."""
    return f"{item.sample.length}/{item.sample.index}"


def generate_requests(item: _Item, ctx, hook=None) -> list:
    """One greedy generation per asked needle; `ruler` decoding has no newline stop."""
    from diffeval.engine import Generate

    stop = None if ctx.decode == "ruler" else "\n"
    return [Generate(tuple(p), item.max_new_tokens, stop, hook) for p in item.sample.prompts]


def prediction_text(tok, generated: Sequence[int], decode: str) -> str:
    """The scored answer: the first line (default), or the whole continuation (ruler)."""
    text = tok.decode(list(generated))
    return text.strip() if decode == "ruler" else text.split("\n")[0]


def _score(cfg: NeedleConfig, item: _Item, outputs: list, ctx) -> dict:
    return score_sample(item.sample, [prediction_text(ctx.tokenizer, out, ctx.decode) for out in outputs])


def aggregate_cells(records: list[dict], labels: list[str]) -> list[dict]:
    """One row per (model, length, depth), models in run order: mean score, n, Wilson 95% CI,
    all-correct rate and mean real token count."""
    from diffeval.probes.stats import mean_per_cell

    keys = ("model", "length", "depth")
    extra: dict[tuple, list[dict]] = {}
    for r in records:
        extra.setdefault(tuple(r[k] for k in keys), []).append(r)
    cells = []
    for cell in sorted(mean_per_cell(records, keys), key=lambda c: labels.index(c["model"])):
        rows = extra[tuple(cell[k] for k in keys)]
        cells.append({
            **cell, "mean": round(cell["mean"], 6), "ci95": [round(x, 6) for x in cell["ci95"]],
            "all_correct": round(sum(r["all_correct"] for r in rows) / len(rows), 6),
            "n_tokens_mean": round(sum(max(r["n_tokens"]) for r in rows) / len(rows), 1),
        })
    return cells


def model_metrics(cells: list[dict], records: list[dict], label: str) -> dict:
    """Per-model metrics: accuracy and all-correct rate (Wilson intervals), and the average
    row per length and per depth (unweighted mean of cell means)."""
    from diffeval.probes.base import metric
    from diffeval.probes.stats import average_by, wilson

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


def _aggregate(cfg: NeedleConfig, records: list[dict], models: list[dict], extra: dict):
    labels = [m["label"] for m in models]
    cells = aggregate_cells(records, labels)
    return cells, {label: model_metrics(cells, records, label) for label in labels}


def _figures(run_dir: Path) -> list:
    from diffeval.plotting.needle import needle_heatmap
    from diffeval.results import read_results

    results = read_results(run_dir)
    return needle_heatmap(results["cells"], [m["label"] for m in results["models"]], run_dir / "needle_heatmap",
                          title=experiment(results["task"]["params"]))


def experiment(p: dict) -> str:
    """The experiment in words, for figure and table titles."""
    return (f"needle: {p['needle_kind']} needles, N={p['n_needles']}, R={p['n_queries']}, haystack "
            f"{p['haystack']}, {p['samples']} samples per cell")


def _render(results: dict) -> None:
    """Accuracy by depth (rows) for every model and length (columns), the average row, and
    each model's overall accuracy with its Wilson 95% interval."""
    from rich.console import Console
    from rich.table import Table

    lengths = sorted({c["length"] for c in results["cells"]})
    depths = sorted({c["depth"] for c in results["cells"]})
    cells = {(c["model"], c["length"], c["depth"]): c for c in results["cells"]}
    labels = [m["label"] for m in results["models"]]
    table = Table(title=f"retrieval accuracy by depth\n({experiment(results['task']['params'])})")
    table.add_column("depth %", justify="right")
    for label in labels:
        for L in lengths:
            table.add_column(f"{label}\n{length_label(L)}", justify="right")
    for d in depths:
        table.add_row(f"{d:g}", *[f"{cells[(m, L, d)]['mean']:.2f}" if (m, L, d) in cells else "-"
                                  for m in labels for L in lengths])
    table.add_row("avg", *[f"{results['metrics'][m][f'accuracy@length={L}']['value']:.2f}"
                           for m in labels for L in lengths], style="bold")
    console = Console()
    console.print(table)
    for m in results["models"]:
        met = results["metrics"][m["label"]]
        acc, allc = met["accuracy"], met["all_correct"]
        console.print(f"{m['label']} ({m['family']}): accuracy {acc['value']:.3f} "
                      f"[{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}], all correct {allc['value']:.3f}, n={acc['n']}")


def haystack_data(cfg) -> dict:
    """The haystack's identity and content hash, for results and resume keys."""
    return {"haystack": load_haystack(cfg.haystack).to_dict()}


def _make_probe():
    from diffeval.probes.base import Probe

    return Probe(name=TASK, version=VERSION, config=config, generate=_generate,
                 requests=lambda cfg, item, ctx: generate_requests(item, ctx), score=_score,
                 aggregate=_aggregate, figures=_figures, render=_render, cell_keys=("length", "depth"),
                 grid_params=("lengths", "depths", "samples"), data=haystack_data, group=haystack_group,
                 description="needle / multi-needle retrieval over a depth x length grid",
                 method="greedy answer per asked needle; score = fraction of the expected value found as a "
                        "case-insensitive substring (first line; --decode ruler: the whole answer); sample score = "
                        "mean over its questions; cells: mean, n, Wilson 95% interval; averages: unweighted over cells")


PROBE = _make_probe()
