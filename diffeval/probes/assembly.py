"""Exact-length prompt assembly: items (sentences that carry a key and a value) placed at
depths of a seeded haystack, the closing fragment cut so that a prompt has exactly the
requested number of tokens under the model's own tokenizer, and the token span of every
placed item.

    asm = Assembler(tok, fmt.prefix_ids(tok))
    built = asm.contexts(hay, items, suffixes, length, depths, ss_hay, ss_place)
    spans, n_context = asm.spans(built[0], items)

Layout: every item but the anchored first one goes to a seeded sentence boundary of one
seeded haystack, the same for every depth; the anchored item moves to each requested depth,
so the contexts of one call share long token prefixes. `ordered=True` keeps the placed items
in their given order (a chain), `anchored=False` places the first item like the others and
builds one context. `check(context, items, suffixes)` says what a context may not contain
(default `distinct_items`: each item sentence, key phrase and value once, no value in a
question); a context that fails it makes `contexts` return None, and the caller draws other
items (`first_clean`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import numpy as np

from diffeval.errors import UsageError
from diffeval.probes.haystack import Haystack
from diffeval.probes.prompts import PieceEncoder, PromptFormat, char_span, common_prefix, fit_fragment

PROMPT_SUFFIX = "\n\nQuestion: {question}\nAnswer: {answer}"
ATTEMPTS = 20  # item redraws when a value or key phrase also occurs elsewhere
_SLACK = 4  # tokens left for the closing fragment when whole sentences are packed
_FIT_TRIES = 4  # re-fits of the fragment against the encoding of the whole prompt
_CALIBRATE = 4  # layout rebuilds for tokenizers whose pieces do not add up
_MAX_MISS = 3  # largest accepted |real - requested| length when exact is impossible
_HAY, _FILL = -2, -1  # tags of haystack sentences and of the closing fragment
T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    """A sentence to place: `value` starts at character `value_at` of `sentence`; `question`
    and `answer` (the answer prefix) ask for it."""

    key: str
    value: str
    sentence: str
    value_at: int
    question: str = ""
    answer: str = ""

    @property
    def stem(self) -> str:
        return self.sentence[: self.value_at]


def make_item(sentence: str, key: str, value: str, question: str = "", answer: str = "") -> Item:
    """An Item from templates holding {key} and {value} (question and answer: {key})."""
    head = sentence.split("{value}")[0].format(key=key)
    return Item(key, value, sentence.format(key=key, value=value), len(head), question.format(key=key),
                answer.format(key=key))


def distinct_items(context: str, items: Sequence[Item], suffixes: Sequence[str]) -> bool:
    """Each item sentence and key phrase occurs once in the context, and each value
    (case-insensitively) only inside its item, never in a question."""
    low = context.lower()
    tails = [s.lower() for s in suffixes]
    for n in items:
        v = n.value.lower()
        if context.count(n.sentence) != 1 or context.count(n.stem) != 1 or low.count(v) != 1:
            return False
        if any(v in t for t in tails):
            return False
    return True


def first_clean(draw: Callable[[], Optional[T]], attempts: int = ATTEMPTS) -> Optional[T]:
    """The first of `attempts` draws that is not None (None when every draw failed)."""
    for _ in range(attempts):
        got = draw()
        if got is not None:
            return got
    return None


def question_suffix(question: str, answer: str, fmt: Optional[PromptFormat] = None) -> str:
    """What follows the context: the question, then the answer prefix after the format's lead
    (plain: PROMPT_SUFFIX; chat: the end of the user turn and the assistant header)."""
    if fmt is None or fmt.name == "plain":
        return PROMPT_SUFFIX.format(question=question, answer=answer)
    return f"\n\nQuestion: {question}{fmt.answer_lead()}{answer}"


@dataclass(frozen=True)
class _Layout:
    """Everything but the anchored item, in context order, shared by all depths."""

    rest: tuple[tuple[str, int], ...]  # (text, tag): tag = item index, _HAY, or _FILL (last)
    fill_src: str  # text the closing fragment is cut from
    slot_tokens: tuple[int, ...]  # (len(rest) + 1,) nominal token offset of each boundary


@dataclass(frozen=True)
class Context:
    """One assembled context and the first prompt over it."""

    parts: tuple[tuple[str, int], ...]  # (text, tag) in context order, empty fragment dropped
    context: str
    text: str  # context + first question suffix
    ids: tuple[int, ...]  # (T,) prefix + encode(text)
    units: tuple[str, ...]  # the parts with their leading space; the last one + the suffix
    nominal: int  # prefix + sum of unit costs: equals len(ids) when the units add up
    offsets: Optional[tuple[int, ...]]  # (len(parts) + 1,) token start of each unit, and
    # the prompt's end; None when the units' ids do not concatenate to `ids`


class Assembler:
    """Builds exact-length contexts under one tokenizer; `prefix` is the ids every prompt
    starts with (BOS, a chat template's head)."""

    def __init__(self, tok, prefix: Sequence[int], enc: Optional[PieceEncoder] = None) -> None:
        self.tok, self.prefix = tok, list(prefix)
        self.enc = enc if enc is not None else PieceEncoder(tok)

    def prompt(self, built: Context, suffix: str) -> tuple[int, ...]:
        """prefix + encode(context + suffix): another question over the same context."""
        return tuple(self.prefix + list(self.tok.encode(built.context + suffix)))

    def contexts(self, hay: Haystack, items: Sequence[Item], suffixes: Sequence[str], length: int,
                 depths: Sequence[float], ss_hay: np.random.SeedSequence, ss_place: np.random.SeedSequence,
                 ordered: bool = False, anchored: bool = True,
                 check: Callable[[str, Sequence[Item], Sequence[str]], bool] = distinct_items,
                 what: str = "item") -> Optional[list[Context]]:
        """One context per depth (one when not `anchored`) whose first prompt (context +
        suffixes[0]) has exactly `length` tokens; None when `check` refuses one. `what` names
        the items in messages."""
        enc = self.enc
        fixed = len(self.prefix) + enc.cost(suffixes[0]) + sum(enc.cost(" " + n.sentence) for n in items)
        if fixed > length:
            raise UsageError(f"length {length} is too short: {len(items)} {what}(s) and the question "
                             f"already take {fixed} tokens under this tokenizer")
        depths = list(depths) if anchored else [0.0]
        # Piece costs are exact for most tokenizers (bias 0, one pass). Otherwise measure the
        # real - nominal count on a whole prompt and rebuild the layout with that correction.
        bias = 0
        for _ in range(_CALIBRATE):
            layout = self._lay_out(hay, items, length - fixed - bias, ss_hay, ss_place, ordered, anchored)
            built = self._assemble(items, suffixes[0], layout, depths[0], length, bias, anchored)
            if built.offsets is not None or len(built.ids) - built.nominal == bias:
                break
            bias = len(built.ids) - built.nominal
        out = []
        for depth in depths:
            if depth != depths[0]:
                built = self._assemble(items, suffixes[0], layout, depth, length, bias, anchored)
            if not check(built.context, items, suffixes):
                return None
            if abs(len(built.ids) - length) > _MAX_MISS:
                raise UsageError(f"cannot build a {length}-token prompt with this tokenizer "
                                 f"(closest: {len(built.ids)} tokens)")
            out.append(built)
        return out

    def _lay_out(self, hay: Haystack, items: Sequence[Item], budget: int, ss_hay, ss_place,
                 ordered: bool, anchored: bool) -> _Layout:
        enc = self.enc
        stream = hay.stream(np.random.Generator(np.random.PCG64(ss_hay)))
        sentences: list[str] = []
        used = 0
        for s in stream:
            c = enc.cost(" " + s)
            if c == 0:
                raise UsageError(f"haystack {hay.source!r}: the tokenizer encodes {s[:40]!r} to no tokens")
            if used + c > budget - _SLACK:
                break
            sentences.append(s)
            used += c
        fill_src = " ".join([s, next(stream), next(stream)])
        # The placed items go to random sentence boundaries, the same for every depth.
        place = np.random.Generator(np.random.PCG64(ss_place))
        first = 1 if anchored else 0
        n_other, n_slots = len(items) - first, len(sentences) + 1
        slots = place.choice(n_slots, size=n_other, replace=n_other > n_slots)
        by_slot: dict[int, list[int]] = {}
        for k, slot in enumerate((np.sort(slots) if ordered else slots).tolist(), start=first):
            by_slot.setdefault(slot, []).append(k)
        rest: list[tuple[str, int]] = []
        for b in range(n_slots):
            rest.extend((items[k].sentence, k) for k in by_slot.get(b, ()))
            if b < len(sentences):
                rest.append((sentences[b], _HAY))
        fill, _ = fit_fragment(fill_src, budget - used, enc)
        rest.append((fill, _FILL))
        costs = [enc.cost(" " + t) if t else 0 for t, _ in rest]
        return _Layout(tuple(rest), fill_src, tuple(int(c) for c in np.cumsum([0, *costs])))

    def _build(self, parts: list[tuple[str, int]], suffix: str) -> Context:
        pieces = [("" if i == 0 else " ") + t for i, (t, _) in enumerate(parts)]
        context = "".join(pieces)
        text = context + suffix
        ids = tuple(self.prefix + list(self.tok.encode(text)))
        # The last piece is encoded with the question: many tokenizers merge "green.\n\n".
        units = (*pieces[:-1], pieces[-1] + suffix)
        flat = list(self.prefix)
        offsets = [len(self.prefix)]
        for i, u in enumerate(units):
            flat.extend(self.enc.piece(u, i == 0))
            offsets.append(len(flat))
        same = len(flat) == len(ids) and common_prefix(flat, ids) == len(ids)
        return Context(tuple(parts), context, text, ids, units, len(flat), tuple(offsets) if same else None)

    def _assemble(self, items: Sequence[Item], suffix: str, layout: _Layout, depth: float, length: int,
                  bias: int, anchored: bool) -> Context:
        """Insert the anchored item at the boundary nearest `depth` and cut the closing fragment
        so that the first prompt has `length` tokens, checked on the encoding of the whole
        string. `bias` is the measured (real - nominal) token count of this layout."""
        enc = self.enc
        seq = list(layout.rest)
        if anchored:
            offs = np.asarray(layout.slot_tokens, dtype=np.float64)  # (len(rest) + 1,)
            slot = int(np.argmin(np.abs(offs - depth / 100.0 * offs[-1])))  # ties: earlier
            seq = [*layout.rest[:slot], (items[0].sentence, 0), *layout.rest[slot:]]
        f = next(i for i, (_, tag) in enumerate(seq) if tag == _FILL)
        head = len(self.prefix) + sum(enc.cost(("" if i == 0 else " ") + t, i == 0) for i, (t, _) in enumerate(seq[:f]))
        tail = "".join(" " + t for t, _ in seq[f + 1:]) + suffix
        r = length - head - bias
        best: Optional[Context] = None
        for _ in range(_FIT_TRIES):
            fill, _ = fit_fragment(layout.fill_src, r, enc, first=f == 0, tail=tail)
            parts = [(fill if tag == _FILL else t, tag) for t, tag in seq]
            built = self._build([(t, tag) for t, tag in parts if t], suffix)
            if best is None or abs(length - len(built.ids)) < abs(length - len(best.ids)):
                best = built
            if len(built.ids) == length:
                break
            r += length - len(built.ids)
        assert best is not None
        return best

    def spans(self, built: Context, items: Sequence[Item]) -> tuple[dict[int, tuple[int, int, int, int]], int]:
        """-> ({item index: (start, end, value start, value end)}, context token count after
        the prefix); positions index the prompt, prefix included."""
        return (self._unit_spans if built.offsets is not None else self._prefix_spans)(built, items)

    def _unit_spans(self, built: Context, items: Sequence[Item]):
        enc, n_prefix = self.enc, len(self.prefix)
        out: dict[int, tuple[int, int, int, int]] = {}
        last, n_ctx = len(built.parts) - 1, 0
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
                n_ctx = o + e - n_prefix
            if tag >= 0:
                at = lead + items[tag].value_at
                vs, ve = char_span(unit, uids, at, at + len(items[tag].value), encode)
                out[tag] = (o + s, o + e, o + vs, o + ve)
        return out, n_ctx

    def _prefix_spans(self, built: Context, items: Sequence[Item]):
        # The units do not add up for this tokenizer: locate by encoding prefixes of the prompt
        # (O(n) per span, so slower, but exact).
        n_prefix, encode = len(self.prefix), self.tok.encode
        body = built.ids[n_prefix:]
        out: dict[int, tuple[int, int, int, int]] = {}
        pos = 0
        for i, (t, tag) in enumerate(built.parts):
            a = pos + (0 if i == 0 else 1)
            pos = a + len(t)
            if tag >= 0:
                s, e = char_span(built.text, body, a, pos, encode)
                v = a + items[tag].value_at
                vs, ve = char_span(built.text, body, v, v + len(items[tag].value), encode)
                out[tag] = tuple(x + n_prefix for x in (s, e, vs, ve))
        return out, char_span(built.text, body, 0, len(built.context), encode)[1]
