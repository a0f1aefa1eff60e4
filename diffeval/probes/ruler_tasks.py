"""RULER's synthetic tasks (Hsieh et al. 2024) as generators on the shared assembly: the eight
needle-in-a-haystack settings, variable tracking (vt), common-words extraction (cwe) and
frequent-words extraction (fwe), with RULER's templates, answer prefixes, frequencies and
generation budgets.

Each prompt has exactly `length` tokens under the model's tokenizer (prefix, template and
answer prefix included). NIAH and VT place their sentences in a seeded haystack with
`Assembler`; CWE and FWE grow their word list to the longest that fits and close the gap with
newlines after the list (FWE: first with more '...' noise words). Everything random comes from
the SeedSequence handed in."""

from __future__ import annotations

import math
import string
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from diffeval.errors import ConfigError, UsageError
from diffeval.probes.assembly import Assembler, Item, first_clean, make_item
from diffeval.probes.haystack import Haystack, load_haystack
from diffeval.probes.prompts import PromptFormat
from diffeval.probes.ruler_words import WORDS
from diffeval.probes.words import KEY_ADJECTIVES, KEY_NOUNS


@dataclass(frozen=True)
class Niah:
    """One NIAH setting: haystack noise | essay | needle; keys words | uuids; values numbers |
    uuids; keys in the context, values per key, keys asked."""

    haystack: str
    keys: str
    values: str
    n_keys: int = 1
    n_values: int = 1
    n_queries: int = 1


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # niah | vt | cwe | fwe
    budget: int  # RULER's tokens_to_generate
    niah: Optional[Niah] = None
    hops: int = 4  # vt: RULER's num_hops and num_chains
    chains: int = 1


def _niah(name: str, *args, **kw) -> Task:
    return Task(name, "niah", 128, Niah(*args, **kw))


TASKS: dict[str, Task] = {t.name: t for t in (
    _niah("niah_single_1", "noise", "words", "numbers"),
    _niah("niah_single_2", "essay", "words", "numbers"),
    _niah("niah_single_3", "essay", "words", "uuids"),
    _niah("niah_multikey_1", "essay", "words", "numbers", n_keys=4),
    _niah("niah_multikey_2", "needle", "words", "numbers"),
    _niah("niah_multikey_3", "needle", "uuids", "uuids"),
    _niah("niah_multivalue", "essay", "words", "numbers", n_values=4),
    _niah("niah_multiquery", "essay", "words", "numbers", n_keys=4, n_queries=4),
    Task("vt", "vt", 30), Task("cwe", "cwe", 120), Task("fwe", "fwe", 50),
    Task("qa_1", "qa", 32), Task("qa_2", "qa", 32),  # RULER: SQuAD and HotpotQA; here the files of qa_data
)}
SYNTHETIC: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.kind != "qa")
QA_TASKS: tuple[str, ...] = ("qa_1", "qa_2")

NEEDLE = "One of the special magic {types} for {key} is: {value}."
NIAH_HEAD = ("Some special magic {types} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {types} afterwards.\n")
NIAH_QUESTION = "What are all the special magic {types} for {query} mentioned in the provided text?"
NIAH_ANSWER = " The special magic {types} for {query} mentioned in the provided text are"
VT_EXAMPLE = 500  # the length of RULER's worked VT example
VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
             "assigned the value {value}, they are: ")
CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"
CWE_COMMON = 10
# (common repeats, uncommon repeats): the list, and its one worked example (few-shot, 20 / 40 words)
CWE_FREQ = {"short": ((6, 1), (3, 1), 20), "long": ((30, 3), (10, 3), 40)}  # short: length < 4096
FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. ")
FWE_QUESTION = ("Question: Do not provide any explanation. Please ignore the dots '....'. What are the three "
                "most frequently appeared words in the above coded text?")
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_ALPHA, FWE_WORD_LEN, FWE_NOISE = 2.0, 6, "..."  # zeta exponent; the top-ranked word is noise
QA_INSTRUCTION = ("Answer the question based on the given documents. Only give me the answer and do not output any "
                  "other words.")
QA_HEAD = f"{QA_INSTRUCTION}\n\nThe following are given documents.\n\n"
QA_QUESTION, QA_ANSWER, QA_DOCUMENT = "Question: {query}", " Answer:", "Document {i}:\n{document}"
_PADS = ("\n", " ", ".")  # what closes the last tokens of a word list


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    answers: tuple[str, ...]
    info: dict  # what the record keeps about the sample (query, counts, spans)


def close(question: str, answer: str, fmt: Optional[PromptFormat]) -> str:
    """The prompt's end: "\\n" + question, then the answer prefix (chat: after the assistant
    header, without its leading space)."""
    if fmt is None or fmt.name == "plain":
        return f"\n{question}{answer}"
    return f"\n{question}{fmt.tail}{answer.lstrip()}"


def _singular(text: str) -> str:
    # RULER's wording for one asked value: "A special magic number is hidden ...".
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is")


def _key(kind: str, rng: np.random.Generator) -> str:
    if kind == "uuids":
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return f"{KEY_ADJECTIVES[rng.integers(len(KEY_ADJECTIVES))]}-{KEY_NOUNS[rng.integers(len(KEY_NOUNS))]}"


def _value(kind: str, rng: np.random.Generator) -> str:
    return _key(kind, rng) if kind == "uuids" else str(int(rng.integers(10 ** 6, 10 ** 7)))


def _distinct(draw: Callable[[], str], n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = draw()
        if v not in out:
            out.append(v)
    return out


@dataclass(frozen=True)
class NeedleHaystack:
    """RULER's needle haystack: distractor needles with fresh keys (never an asked key)."""

    needle: str
    keys: str
    values: str
    exclude: frozenset
    source: str = "needle"

    def stream(self, rng: np.random.Generator):
        while True:
            key = _key(self.keys, rng)
            if key not in self.exclude:
                yield self.needle.format(key=key, value=_value(self.values, rng))


def _niah_clean(context: str, items: Sequence[Item], suffixes: Sequence[str]) -> bool:
    """Each needle sentence and value once (values never in the question); a key's phrase
    as often as that key has values."""
    low, tail = context.lower(), suffixes[0].lower()
    stems: dict[str, int] = {}
    for n in items:
        stems[n.stem] = stems.get(n.stem, 0) + 1
        v = n.value.lower()
        if context.count(n.sentence) != 1 or low.count(v) != 1 or v in tail:
            return False
    return all(context.count(s) == c for s, c in stems.items())


def niah(task: Task, tok, fmt: PromptFormat, hay: Haystack, length: int, ss: np.random.SeedSequence) -> Prompt:
    """A NIAH prompt: keys x values needles at seeded positions, the asked keys' values as answers."""
    cfg = task.niah
    ss_draw, ss_hay, ss_place = ss.spawn(3)
    rng = np.random.Generator(np.random.PCG64(ss_draw))
    types = cfg.values
    singular = cfg.n_queries * cfg.n_values == 1
    needle = NEEDLE.replace("{types}", types)

    def draw():
        keys = _distinct(lambda: _key(cfg.keys, rng), cfg.n_keys)
        values = _distinct(lambda: _value(cfg.values, rng), cfg.n_keys * cfg.n_values)
        items = [make_item(needle, keys[i // cfg.n_values], v) for i, v in enumerate(values)]
        items = [items[i] for i in rng.permutation(len(items))]
        asked = sorted(rng.choice(cfg.n_keys, size=cfg.n_queries, replace=False).tolist())
        query = keys[asked[0]] if len(asked) == 1 else ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]]
        answers = [values[i * cfg.n_values + j] for i in asked for j in range(cfg.n_values)]
        t = (lambda s: _singular(s).replace("{types}", types[:-1])) if singular else (lambda s: s.replace("{types}", types))
        asm = Assembler(tok, fmt.prefix_ids(tok) + list(tok.encode(t(NIAH_HEAD))))
        suffix = close(t(NIAH_QUESTION).format(query=query), t(NIAH_ANSWER).format(query=query), fmt)
        source = hay if cfg.haystack != "needle" else NeedleHaystack(needle, cfg.keys, cfg.values, frozenset(keys))
        if cfg.haystack == "noise":
            source = load_haystack("noise")
        built = asm.contexts(source, items, [suffix], length, [0.0], ss_hay, ss_place, anchored=False,
                             check=_niah_clean, what="needle")
        return None if built is None else (built[0], answers, query, asm, items)

    got = first_clean(draw)
    if got is None:
        raise UsageError(f"{task.name}: after 20 draws a needle value still also occurs in the haystack "
                         f"(length {length})")
    built, answers, query, asm, items = got
    spans, n_ctx = asm.spans(built, items)
    first = min(spans[k][0] for k in spans if items[k].value in answers) - len(asm.prefix)
    return Prompt(built.ids, tuple(answers), {"query": query, "depth": round(min(max(first / max(n_ctx, 1), 0.0), 1.0), 4),
                                              "needle_spans": [list(spans[k][:2]) for k in sorted(spans)]})


def _vt_chains(rng: np.random.Generator, name_len: int, hops: int, chains: int) -> tuple[list[list[str]], list[str]]:
    """`chains` chains of `hops` hops: ([[name, ...] per chain], [value per chain])."""
    letters = np.array(list(string.ascii_uppercase))
    names = _distinct(lambda: "".join(rng.choice(letters, size=name_len)), chains * (hops + 1))
    values = _distinct(lambda: str(int(rng.integers(10000, 100000))), chains)
    return [names[c * (hops + 1):(c + 1) * (hops + 1)] for c in range(chains)], values


def _vt_clean(context: str, items: Sequence[Item], suffixes: Sequence[str]) -> bool:
    """Every assignment once and in no other words: a name occurs in its own line and the next."""
    if any(context.count(n.sentence) != 1 for n in items):
        return False
    names = [n.key for n in items]
    return all(context.count(k) == (2 if f"= VAR {k}." in context else 1) for k in names)


def _vt_prompt(asm: Assembler, fmt: Optional[PromptFormat], length: int, ss: np.random.SeedSequence,
               name_len: int, hops: int, chains: int):
    """One VT context of `length` tokens -> (Context, names of the asked chain, its value)."""
    ss_draw, ss_hay, ss_place = ss.spawn(3)
    rng = np.random.Generator(np.random.PCG64(ss_draw))

    def draw():
        names, values = _vt_chains(rng, name_len, hops, chains)
        lines = [[f"VAR {c[0]} = {v}."] + [f"VAR {c[j + 1]} = VAR {c[j]}." for j in range(hops)]
                 for c, v in zip(names, values)]
        order = rng.permutation(np.repeat(np.arange(chains), hops + 1))  # interleave, order kept
        pos = [0] * chains
        items = []
        for c in order.tolist():
            items.append(Item(names[c][pos[c]], names[c][pos[c]], lines[c][pos[c]], 4))
            pos[c] += 1
        suffix = close(VT_QUESTION.format(value=values[0]), VT_ANSWER.format(n=hops + 1, value=values[0]), fmt)
        built = asm.contexts(load_haystack("noise"), items, [suffix], length, [0.0], ss_hay, ss_place,
                             ordered=True, anchored=False, check=_vt_clean, what="assignment")
        return None if built is None else (built[0], names[0], values[0])

    got = first_clean(draw)
    if got is None:
        raise UsageError(f"vt: no clean chain after 20 draws (length {length})")
    return got


def vt(task: Task, tok, fmt: PromptFormat, hay: Haystack, length: int, ss: np.random.SeedSequence) -> Prompt:
    """Variable tracking: chains VAR A = value, VAR B = VAR A, ... in order in the noise
    haystack; the answer is every variable of the first chain. RULER's worked example (a
    VT_EXAMPLE-token prompt with 3-letter names and its answer) comes first when the prompt
    is at least twice as long."""
    ss_main, *ss_shots = ss.spawn(4)
    example, shot_value = "", None
    for ss_shot in ss_shots if length >= 2 * VT_EXAMPLE else ():
        shot, shot_names, shot_value = _vt_prompt(Assembler(tok, []), None, VT_EXAMPLE, ss_shot, 3,
                                                  min(10, task.hops), task.chains)  # RULER: at most 10 hops
        example = f"{VT_HEAD}{shot.text.rstrip()} {' '.join(shot_names)}\n"
        asm = Assembler(tok, fmt.prefix_ids(tok) + list(tok.encode(example + VT_HEAD)))
        built, names, value = _vt_prompt(asm, fmt, length, ss_main, 5, task.hops, task.chains)
        if value != shot_value:  # the example's value is another one
            break
    if not example:
        built, names, value = _vt_prompt(Assembler(tok, fmt.prefix_ids(tok) + list(tok.encode(VT_HEAD))), fmt,
                                         length, ss_main, 5, task.hops, task.chains)
    return Prompt(built.ids, tuple(names), {"query": value, "chains": task.chains, "hops": task.hops,
                                            "n_fewshot": int(bool(example))})


@dataclass(frozen=True)
class _Fit:
    ids: tuple[int, ...]
    n: int
    pad: str


def _largest(fits: Callable[[int], bool], lo: int, hi: int, guess: int) -> int:
    """The largest n in [lo, hi] with fits(n), for fits monotone and fits(lo) true: gallop
    from `guess` to a bracket, then bisect (a good guess costs a few calls)."""
    g = min(max(guess, lo), hi)
    if fits(g):
        a, b, step = g, hi, 1
        while a < b:
            n = min(a + step, b)
            if not fits(n):
                b = n - 1
                break
            a, step = n, step * 2
    else:
        a, b, step = lo, g - 1, 1
        while g - step > lo:
            if fits(g - step):
                a = g - step
                break
            b, step = g - step - 1, step * 2
    while a < b:
        mid = (a + b + 1) // 2
        if fits(mid):
            a = mid
        else:
            b = mid - 1
    return a


def largest_count(build: Callable[[int, str], tuple[int, ...]], length: int, lo: int, what: str) -> int:
    """The largest n >= lo whose build(n, "") has at most `length` tokens (build's length must
    grow with n); UsageError when not even lo fits. Secant steps guess n from the cost per
    unit, so that long prompts take a few encodings, not a bisection over `length`."""
    memo: dict[int, int] = {}

    def cost(n: int) -> int:
        if n not in memo:
            memo[n] = len(build(n, ""))
        return memo[n]

    shortest, hi = cost(lo), max(lo, length)  # every unit of n costs at least one token
    if shortest > length:
        raise UsageError(f"length {length} is too short for {what}: the smallest prompt takes {shortest} tokens")
    prev, guess = lo, min(lo + 16, hi)
    for _ in range(4):  # secant steps through the last two points
        grown = cost(guess) - cost(prev)
        if guess == prev or grown <= 0 or cost(guess) == length:
            break
        prev, guess = guess, min(max(guess + (length - cost(guess)) * (guess - prev) // grown, lo), hi)
    return _largest(lambda n: cost(n) <= length, lo, hi, guess)


def fit_count(build: Callable[[int, str], tuple[int, ...]], length: int, lo: int, what: str, fill: str = "") -> _Fit:
    """largest_count, and the pad (copies of `fill` that fit, then a run of one of _PADS)
    that makes the prompt exactly `length` -> _Fit; UsageError when none does."""
    a = largest_count(build, length, lo, what)
    base, head = len(build(a, "")), ""
    if fill:  # the task's own filler first (fwe: noise words)
        per = max(1, len(build(a, fill)) - base)
        head = fill * _largest(lambda k: len(build(a, fill * k)) <= length, 0, length - base, (length - base) // per)
    gap = length - len(build(a, head))
    for unit in _PADS:
        for k in sorted(range(gap + 3), key=lambda k: abs(k - gap)):  # one token per pad unit, usually
            ids = build(a, head + unit * k)
            if len(ids) == length:
                return _Fit(ids, a, head + unit * k)
    raise UsageError(f"cannot build a {length}-token {what} prompt with this tokenizer")


def word_pool(n: int, rng: np.random.Generator, avoid: str = "") -> list[str]:
    """n distinct words: from WORDS while they last, then made-up consonant-vowel words."""
    words = [w for w in WORDS if w not in avoid]
    if n <= len(words):
        return [words[i] for i in rng.choice(len(words), size=n, replace=False)]
    cons, vows = "bdfgklmnprstvz", "aeiou"
    syll = [c + v for c in cons for v in vows]  # 70 syllables, 343,000 three-syllable words
    made = rng.choice(len(syll) ** 3, size=n - len(words) + 64, replace=False)  # 64 spare for clashes
    taken = set(words)
    extra = [w for w in (syll[i // 4900] + syll[i // 70 % 70] + syll[i % 70] for i in made.tolist()) if w not in taken]
    return ([words[i] for i in rng.permutation(len(words))] + extra)[:n]


def _cwe_list(rng: np.random.Generator, words: list[str], n_words: int, repeats: tuple[int, int]
              ) -> tuple[str, list[str]]:
    """The numbered list of the first 10 + n_words of `words`, shuffled by `rng`."""
    common, rare = words[:CWE_COMMON], words[CWE_COMMON:CWE_COMMON + n_words]
    listed = common * repeats[0] + rare * repeats[1]
    listed = [listed[i] for i in rng.permutation(len(listed))]
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common


def cwe(task: Task, tok, fmt: PromptFormat, hay: Haystack, length: int, ss: np.random.SeedSequence) -> Prompt:
    """Common-words extraction: 10 words repeated often, the rest rarely, in a numbered list,
    after one worked example when it fits; the answer is the 10 common words. Common words
    repeat fewer times (down to 2) only where RULER's counts cannot fit `length` at all."""
    main, shot, shot_words = CWE_FREQ["short" if length < 4096 else "long"]
    prefix, suffix = fmt.prefix_ids(tok), close(CWE_QUESTION, CWE_ANSWER, fmt)
    ss_words, ss_order = ss.spawn(2)
    rng = np.random.Generator(np.random.PCG64(ss_words))
    avoid = CWE_HEAD + CWE_QUESTION + CWE_ANSWER
    shot_pool = word_pool(shot_words, rng, avoid)
    words = word_pool(CWE_COMMON + length, rng, avoid)  # n rare words take the first n after the common ones

    def build(n_shots: int, repeats: tuple[int, int]) -> Callable[[int, str], tuple[int, ...]]:
        def ids(n: int, pad: str) -> tuple[int, ...]:
            order = np.random.Generator(np.random.PCG64(ss_order))
            shots = []
            for _ in range(n_shots):
                text, answer = _cwe_list(order, shot_pool, shot_words - CWE_COMMON, shot)
                numbered = " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer))
                shots.append(f"{CWE_HEAD}{text}\n{CWE_QUESTION}{CWE_ANSWER} {numbered}\n")
            text, _ = _cwe_list(order, words, n, repeats)
            return tuple(prefix + list(tok.encode("".join(shots) + CWE_HEAD + text + pad + suffix)))
        return ids

    n_shots = 1 if len(build(1, main)(CWE_COMMON, "")) <= length else 0  # the example only when it leaves room
    # Where even RULER's shortest list does not fit, the common words repeat less (at least twice).
    for r in range(main[0], 1, -1):
        if len(build(n_shots, (r, main[1]))(0, "")) <= length or r == 2:
            main = (r, main[1])
            break
    fit = fit_count(build(n_shots, main), length, 0, "cwe")
    return Prompt(fit.ids, tuple(words[:CWE_COMMON]),
                  {"n_fewshot": n_shots, "n_rare": fit.n, "repeats": list(main)})


def fwe_counts(n_words: int, vocab_size: int) -> list[int]:
    """Zipf counts int(n k^-alpha / zeta(alpha)) of ranks k = 1..vocab_size (alpha = 2), RULER's;
    where short lists round rank 5 up to rank 4's count, ranks 5 on are capped one below it, so
    that the three answers (ranks 2-4) stay the most frequent words (never so at 4K and more)."""
    zeta2 = math.pi ** 2 / 6
    counts = [int(n_words * k ** -FWE_ALPHA / zeta2) for k in range(1, vocab_size + 1)]
    return counts[:4] + [min(c, counts[3] - 1) for c in counts[4:]] if len(counts) > 4 else counts


def fwe(task: Task, tok, fmt: PromptFormat, hay: Haystack, length: int, ss: np.random.SeedSequence) -> Prompt:
    """Frequent-words extraction: coded words with Zipf counts (the top rank is '...', noise);
    the answer is the three words of ranks 2-4."""
    vocab_size = max(5, length // 50)
    letters = np.array(list(string.ascii_lowercase))
    avoid = (FWE_HEAD + FWE_QUESTION + FWE_ANSWER).lower()
    rng = np.random.Generator(np.random.PCG64(ss))

    def coded() -> str:
        while True:
            w = "".join(rng.choice(letters, size=FWE_WORD_LEN))
            if w not in avoid:
                return w

    vocab = [FWE_NOISE] + _distinct(coded, vocab_size - 1)
    order_ss = ss.spawn(1)[0]
    prefix, suffix = fmt.prefix_ids(tok), close(FWE_QUESTION, FWE_ANSWER, fmt)

    def build(n: int, pad: str) -> tuple[int, ...]:
        words = [w for w, c in zip(vocab, fwe_counts(n, len(vocab))) for _ in range(c)]
        shuffled = np.random.Generator(np.random.PCG64(order_ss)).permutation(len(words))
        text = " ".join(words[i] for i in shuffled.tolist())
        return tuple(prefix + list(tok.encode(FWE_HEAD + text + pad + suffix)))

    fit = fit_count(build, length, 10, "fwe", fill=" " + FWE_NOISE)
    counts = fwe_counts(fit.n, len(vocab))
    if len(counts) < 5 or counts[3] < 1:
        raise UsageError(f"length {length} is too short for fwe: the third answer word does not occur")
    return Prompt(fit.ids, tuple(vocab[1:4]), {"n_words": fit.n, "counts": counts[:5]})


def load_qa(path: Path, field: str = "qa_data") -> list[dict]:
    """RULER's QA items from JSONL: one question a line, {"query": str, "outputs": [answers],
    "context": [its gold documents]}; the other lines' documents are the distractors."""
    from diffeval.textdata import jsonl_rows

    items = []
    for k, item in enumerate(jsonl_rows(path, field), start=1):
        ok = isinstance(item.get("query"), str) and all(
            isinstance(item.get(f), list) and item[f] and all(isinstance(x, str) and x for x in item[f])
            for f in ("outputs", "context"))
        if not ok:
            raise ConfigError(f"{path} line {k}: needs query (text), outputs and context (lists of text)", field)
        items.append(item)
    if len(items) < 2:
        raise ConfigError(f"{path} holds {len(items)} question(s); distractors need at least 2", field)
    return items


def qa_paths(spec) -> list[Path]:
    """The files of qa_data ("qa_1.jsonl[,qa_2.jsonl]"), each checked to exist."""
    if not isinstance(spec, str):
        raise ConfigError(f"{spec!r} must be file paths, comma-separated", "qa_data")
    files = [Path(f.strip()).expanduser() for f in spec.split(",") if f.strip()]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{str(f)!r}: no such file", "qa_data")
    return files


def qa_files(spec: str) -> dict:
    """The QA files' identity and content hash, for results and resume keys."""
    from diffeval.textdata import describe_files

    files = qa_paths(spec)
    return {"qa_data": describe_files(spec, files)} if files else {}


def qa(task: Task, tok, fmt: PromptFormat, items: list[dict], length: int, ss: np.random.SeedSequence,
       index: int) -> Prompt:
    """RULER's QA: question `index` (cycled) with its gold documents among distractor
    documents of the other questions, the last distractor cut to the length."""
    item = items[index % len(items)]
    gold = list(dict.fromkeys(item["context"]))
    pool = sorted({d for it in items for d in it["context"]} - set(gold))
    if not pool:
        raise ConfigError("every document is a gold document of this question: no distractors", "qa_data")
    ss_pool, ss_order = ss.spawn(2)
    pool = [pool[i] for i in np.random.Generator(np.random.PCG64(ss_pool)).permutation(len(pool))]
    prefix = fmt.prefix_ids(tok)
    suffix = close(f"\n{QA_INSTRUCTION}\n\n" + QA_QUESTION.format(query=item["query"]), QA_ANSWER, fmt)

    def build(n: int, words: int, pad: str) -> tuple[int, ...]:
        docs = gold + [pool[i % len(pool)] for i in range(n)]
        if words:
            docs.append(" ".join(pool[n % len(pool)].split()[:words]))
        order = np.random.Generator(np.random.PCG64(ss_order)).permutation(len(docs))
        context = "\n\n".join(QA_DOCUMENT.format(i=i + 1, document=docs[j]) for i, j in enumerate(order.tolist()))
        return tuple(prefix + list(tok.encode(QA_HEAD + context + pad + suffix)))

    n = largest_count(lambda n, pad: build(n, 0, ""), length, 0, task.name)
    fit = fit_count(lambda w, pad: build(n, min(w, len(pool[n % len(pool)].split())), pad), length, 0, task.name)
    return Prompt(fit.ids, tuple(item["outputs"]),
                  {"query": item["query"], "n_documents": len(gold) + n + (fit.n > 0), "cut_words": fit.n})


GENERATORS: dict[str, Callable] = {"niah": niah, "vt": vt, "cwe": cwe, "fwe": fwe}


def generate_prompt(task: Task, tok, fmt: PromptFormat, hay: Haystack, length: int,
                    ss: np.random.SeedSequence, qa_items: Optional[list[dict]] = None, index: int = 0) -> Prompt:
    """The prompt of one (task, length, seed): exactly `length` tokens under `tok` (qa: of
    question `index` of `qa_items`)."""
    if task.kind == "qa":
        return qa(task, tok, fmt, qa_items, length, ss, index)
    return GENERATORS[task.kind](task, tok, fmt, hay, length, ss)
