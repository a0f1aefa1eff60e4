"""Prompts at exact token lengths, and prompt formats.

Prompts are assembled from pieces (sentences with their leading space, a question suffix)
whose token costs are measured with the model's own tokenizer; `fit_fragment` cuts filler
text so that a prompt reaches an exact count. `PromptFormat` says how a probe's user text is
wrapped: `plain` ([BOS] + text, BOS as the tokenizer's rule or the run's `--bos` says) or `chat` (the
checkpoint's own chat template rendered with jinja2 around the user text as transformers'
`apply_chat_template(..., add_generation_prompt=True)` renders it, BOS text included where
the template writes one, then the answer prefix)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from diffeval.errors import ConfigError

# --- fitting text to token budgets -----------------------------------------------------------
# Prompts are assembled from pieces (sentences with their leading space, a question suffix).
# A piece is encoded after a fixed anchor sentence, so tokenizers that prepend a word marker
# at the start of every encode call (SentencePiece-style) or merge across ". " still give the
# ids the piece has inside a longer text.
ANCHOR = "Here we go."
_PIECE_CACHE_LIMIT = 200_000


class PieceEncoder:
    """Memoised encoding of short prompt pieces with a tokenizer (`encode(str) -> list[int]`)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self._plain: dict[str, tuple[int, ...]] = {}
        self._inner: dict[str, tuple[int, ...]] = {}
        self._anchor = tuple(tokenizer.encode(ANCHOR))

    def _remember(self, memo: dict, text: str, ids: tuple[int, ...]) -> tuple[int, ...]:
        if len(memo) >= _PIECE_CACHE_LIMIT:
            memo.clear()
        memo[text] = ids
        return ids

    def plain(self, text: str) -> tuple[int, ...]:
        """encode(text) as the start of a prompt."""
        ids = self._plain.get(text)
        return ids if ids is not None else self._remember(self._plain, text, tuple(self.tok.encode(text)))

    def inner(self, text: str) -> tuple[int, ...]:
        """The ids `text` gets when it follows a sentence: encode(ANCHOR + text) minus the
        anchor's ids (plain encode when the anchor's own ids change)."""
        ids = self._inner.get(text)
        if ids is None:
            both = tuple(self.tok.encode(ANCHOR + text))
            n = len(self._anchor)
            ids = both[n:] if both[:n] == self._anchor else self.plain(text)
            self._remember(self._inner, text, ids)
        return ids

    def piece(self, text: str, first: bool) -> tuple[int, ...]:
        return self.plain(text) if first else self.inner(text)

    def cost(self, text: str, first: bool = False) -> int:
        return len(self.piece(text, first))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def char_span(text: str, ids: Sequence[int], a: int, b: int, encode) -> tuple[int, int]:
    """Token span [s, e) of `ids` (= encode(text)) covering characters [a, b) of `text`: s is
    the first token not wholly before a; e is one past the last token reaching into [a, b)."""
    start = common_prefix(encode(text[:a]), ids)
    upto = encode(text[:b])
    end = common_prefix(upto, ids)
    return start, end + (1 if end < len(upto) else 0)


_SKIP_WORDS = 6  # leading words fit_fragment may drop to reach an exact count


def fit_fragment(src: str, r: int, enc: PieceEncoder, first: bool = False, tail: str = "") -> tuple[str, int]:
    """The longest cut of `src`, closed with a period, such that the piece " " + cut + tail
    (no space when `first`) costs exactly r tokens -> (cut, cost). `tail` is the text that
    follows the cut, so that merges across it are counted. Whole words are tried first, then
    characters of the next word, then every shorter cut, then cuts without the period, then
    the same with up to _SKIP_WORDS leading words dropped (a cut right after a sentence end
    cannot grow by one character). Otherwise the costliest cut under r; ("", 0) when none fits."""
    if r <= 0:
        return "", 0
    best = _fit_prefix(src, r, enc, first, tail)
    starts = [i + 1 for i, ch in enumerate(src) if ch == " "][:_SKIP_WORDS]
    for j in starts if best[1] != r else ():
        cut, c = _fit_prefix(src[j:], r, enc, first, tail)
        if c == r:
            return cut, c
    return best


def _fit_prefix(src: str, r: int, enc: PieceEncoder, first: bool, tail: str) -> tuple[str, int]:
    lead = "" if first else " "

    def cut(k: int) -> str:
        t = src[:k].rstrip()
        return t if t.endswith((".", "!", "?")) else t + "."

    def cost(k: int) -> int:
        return enc.cost(lead + cut(k) + tail, first)

    best_k, best_c = -1, 0
    ends = [0] + [i for i, ch in enumerate(src) if ch == " "] + [len(src)]
    over = len(src) + 1
    for k in ends:
        c = cost(k)
        if c > r:
            over = k
            break
        best_k, best_c = k, c
    if best_k < 0 or best_c == r:
        return ("", 0) if best_k < 0 else (cut(best_k), best_c)
    for k in range(best_k + 1, over):  # into the next word
        c = cost(k)
        if c > r:
            break
        if c >= best_c:
            best_k, best_c = k, c
        if c == r:
            return cut(k), c
    # Tokenizers whose counts jump: any exact cut, else any exact cut without the period.
    for k in range(over - 1, -1, -1):
        if cost(k) == r:
            return cut(k), r
    for k in range(min(over, len(src)), 0, -1):
        bare = src[:k].rstrip()
        if bare and enc.cost(lead + bare + tail, first) == r:
            return bare, r
    return cut(best_k), best_c


# --- prompt formats -------------------------------------------------------------------------
PROMPT_FORMATS = ("plain", "chat")
_CONTENT = "\u2063diffeval-user-content\u2063"  # a marker no real text contains
_FIXED_DATE = (2025, 1, 1)  # what a template's strftime_now() sees: renders stay reproducible


@dataclass(frozen=True)
class PromptFormat:
    """How user text becomes a prompt.

    plain: [BOS] + user text + "\\nAnswer: " + answer prefix
    chat:  head + user text + tail + answer prefix, where head and tail are the checkpoint's
           chat template rendered around one user message with the generation prompt (the
           assistant header) added, `bos_token` rendered as its text: the template alone
           decides whether BOS starts the prompt (under `--bos auto`). The head is tokenized
           on its own (special tokens in it parsed) and put before the text's ids, so lengths
           and spans stay exact under either format."""

    name: str = "plain"
    head: str = ""
    tail: str = ""

    def prefix_ids(self, tok) -> list[int]:
        """Token ids before the user text. plain: BOS when the tokenizer's rule (or the run's
        policy) puts one. chat: the head's ids, a BOS added (policy always) or a leading one
        removed (policy never)."""
        if self.name == "plain":
            return [] if tok.bos_id is None else [int(tok.bos_id)]
        ids = list(tok.encode(self.head)) if self.head else []
        policy, bos = getattr(tok, "bos_policy", "auto"), getattr(tok, "bos_token_id", tok.bos_id)
        starts = bool(ids) and bos is not None and ids[0] == bos
        if policy == "always" and bos is not None and not starts:
            return [int(bos), *ids]
        return ids[1:] if policy == "never" and starts else ids

    def answer_lead(self) -> str:
        """Text between the user text and the answer prefix."""
        return "\nAnswer: " if self.name == "plain" else self.tail

    def to_dict(self) -> dict:
        return {"name": self.name, "head": self.head, "tail": self.tail}


def prompt_format(name: str, tokenizer) -> PromptFormat:
    """The PromptFormat `name` for a tokenizer; `chat` needs the checkpoint's chat template."""
    if name == "plain":
        return PromptFormat()
    if name != "chat":
        raise ConfigError(f"{name!r}: choose {' or '.join(PROMPT_FORMATS)}", "prompt_format")
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        where = getattr(tokenizer, "path", None)
        source = f"{Path(where).parent}" if where else "this checkpoint"
        raise ConfigError(f"{source} has no chat template (tokenizer_config.json 'chat_template' or "
                          "chat_template.jinja); use --prompt-format plain", "prompt_format")
    head, tail = split_chat_template(template, getattr(tokenizer, "special_tokens", {}))
    return PromptFormat("chat", head, tail)


CHAT_LOOP_LIMIT = 100_000  # range() iterations one rendering may run (all loops together)
CHAT_OUTPUT_LIMIT = 1 << 20  # characters of rendered text
CHAT_SECONDS = 5.0  # wall-clock time of one rendering


class _CountedRange:
    """range() for templates, with one budget of iterations over every loop of a rendering."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def __call__(self, *args):
        from jinja2 import TemplateError

        for i in range(*args):
            self.left -= 1
            if self.left < 0:
                raise TemplateError(f"its loops run more than {CHAT_LOOP_LIMIT:,} iterations")
            yield i


def _bounded_binop(context, operator: str, left, right):
    """`*` and `**` in templates, refused when the result would be enormous ('x' * 10**10)."""
    from jinja2 import TemplateError

    if operator == "**":
        if isinstance(right, (int, float)) and abs(right) > 1024:
            raise TemplateError(f"exponent {right!r} is too large")
        return left ** right
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > CHAT_OUTPUT_LIMIT:
            raise TemplateError(f"a repetition of more than {CHAT_OUTPUT_LIMIT:,} items")
    return left * right


def _render_bounded(tmpl, context: dict) -> str:
    """The template's text, stopped past CHAT_OUTPUT_LIMIT characters or CHAT_SECONDS."""
    import signal
    import threading
    import time

    from jinja2 import TemplateError

    def late(*_):
        raise TemplateError(f"rendering takes more than {CHAT_SECONDS:g} s")

    alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if alarm:
        previous = signal.signal(signal.SIGALRM, late)
        signal.setitimer(signal.ITIMER_REAL, CHAT_SECONDS)
    try:
        parts, size, start = [], 0, time.monotonic()
        for chunk in tmpl.generate(**context):
            parts.append(chunk)
            size += len(chunk)
            if size > CHAT_OUTPUT_LIMIT:
                raise TemplateError(f"it renders more than {CHAT_OUTPUT_LIMIT:,} characters")
            if time.monotonic() - start > CHAT_SECONDS:
                late()
        return "".join(parts)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def split_chat_template(template: str, special: Optional[dict] = None) -> tuple[str, str]:
    """Render a Hugging Face chat template (jinja2, sandboxed) for one user message with the
    generation prompt, and split it around the message -> (head, tail). `special` gives the
    tokenizer's special token texts (bos_token, eos_token, ...), rendered as transformers does."""
    import datetime as _dt

    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def strftime_now(fmt):
        return _dt.date(*_FIXED_DATE).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    env.globals["range"] = _CountedRange(CHAT_LOOP_LIMIT)
    env.intercepted_binops = frozenset({"*", "**"})
    env.call_binop = _bounded_binop
    special = dict(special or {})
    try:
        text = _render_bounded(env.from_string(template), dict(
            messages=[{"role": "user", "content": _CONTENT}], add_generation_prompt=True,
            bos_token=special.get("bos_token", ""), eos_token=special.get("eos_token", ""), pad_token=special.get("pad_token", ""),
            unk_token=special.get("unk_token", ""), tools=None, documents=None))
    except TemplateError as exc:
        raise ConfigError(f"the chat template cannot be rendered: {exc}", "prompt_format") from None
    except Exception as exc:  # a template is user code: whatever it raises is its own error
        raise ConfigError(f"the chat template cannot be rendered: {type(exc).__name__}: {exc}", "prompt_format") from None
    if text.count(_CONTENT) != 1:
        raise ConfigError("the chat template does not place the user message exactly once", "prompt_format")
    head, tail = text.split(_CONTENT)
    return head, tail
