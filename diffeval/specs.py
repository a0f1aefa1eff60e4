"""Parsers for the values every probe takes: token counts and lengths, depths, bit widths,
index lists. Each raises ConfigError naming its field; the CLI shows the flag instead."""

from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError, shown

# Bounds on sizes a user can ask for: beyond them a run would hang or exhaust memory long
# before it produced anything, so they are refused with the limit in the message.
MAX_TOKENS = 1 << 24  # one prompt or sequence: 16M tokens
MAX_TOTAL_TOKENS = 1 << 36  # tokens streamed in total (--tokens)
MAX_ITEMS = 1000  # lengths in a list or range, depths in a range
MAX_COUNT = 1_000_000  # samples, documents, queries, permutations, ...
MAX_SEED = 2**63 - 1

_COUNT = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
_SCALE = {"": 1, "k": 1024, "m": 1024 * 1024}


def as_text(value: Any) -> str:
    """A YAML value (string, number or list) as the text the parsers take."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def token_count(text: str, field: str = "lengths", high: int = MAX_TOKENS) -> int:
    """"4096", "4k", "64K", "1.5k", "1m" -> tokens (k = 1024), at most `high`."""
    t = str(text).strip()
    if t.startswith("-"):
        raise ConfigError(f"{shown(text)} must be a positive token count", field)
    m = _COUNT.match(t)
    if not m:
        raise ConfigError(f"{shown(text)} is not a token count like 4096, 4k or 64K", field)
    value = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if value != int(value):
        raise ConfigError(f"{shown(text)} is not a whole number of tokens ({value:g})", field)
    if value <= 0:
        raise ConfigError(f"{shown(text)} must be a positive token count", field)
    if value > high:
        raise ConfigError(f"{shown(text)} is more than the limit of {high:,} tokens", field)
    return int(value)


def _length_range(part: str, field: str) -> list[int]:
    bits = part.split(":")
    if len(bits) not in (2, 3):
        raise ConfigError(f"range {shown(part)} must be start:stop (doubling) or start:stop:step", field)
    start, stop = token_count(bits[0], field), token_count(bits[1], field)
    if stop < start:
        raise ConfigError(f"range {shown(part)}: stop ({stop}) is below start ({start})", field)
    if len(bits) == 3:
        step = token_count(bits[2], field)
        if (stop - start) // step + 1 > MAX_ITEMS:
            raise ConfigError(f"range {shown(part)} gives {(stop - start) // step + 1:,} lengths; "
                              f"at most {MAX_ITEMS} (start:stop:step, the third number is a step)", field)
        return list(range(start, stop + 1, step))
    out = [start]
    while out[-1] * 2 <= stop:
        out.append(out[-1] * 2)
    if out[-1] != stop:
        raise ConfigError(f"range {shown(part)}: {stop} is not {start} times a power of two; "
                          "use start:stop:step for even steps", field)
    return out


def _list_text(spec: Any, field: str, what: str, example: str) -> str:
    """A comma list as text, refused when empty or longer than MAX_ITEMS items."""
    spec = as_text(spec) if spec is not None else ""
    if not spec.strip():
        raise ConfigError(f"{shown(spec)}: give {example}", field)
    if spec.count(",") >= MAX_ITEMS:
        raise ConfigError(f"{shown(spec)} lists {spec.count(',') + 1:,} {what}; at most {MAX_ITEMS}", field)
    return spec


def parse_lengths(spec: Any, field: str = "lengths", allow_empty: bool = False) -> list[int]:
    """"4k,8K,16384" -> [4096, 8192, 16384]; k = 1024, m = 1024^2. Ranges: "4k:64k" doubles
    (4k, 8k, ..., 64k); "1000:4000:1000" steps evenly. Order is kept; repeats are refused.
    `allow_empty`: "" or an empty list -> [] (the option is left to another)."""
    if allow_empty and spec in ("", (), []):
        return []
    spec = _list_text(spec, field, "lengths", "token counts like 4k,8k,16k")
    out: list[int] = []
    for part in spec.split(","):
        if not part.strip():
            raise ConfigError(f"{shown(spec)} has an empty item", field)
        for n in (_length_range(part, field) if ":" in part else [token_count(part, field)]):
            if n in out:
                raise ConfigError(f"{shown(spec)} gives {n} twice", field)
            out.append(n)
    return out


def parse_length(spec: Any, field: str = "length") -> int:
    """Exactly one length."""
    values = parse_lengths(spec, field)
    if len(values) != 1:
        raise ConfigError(f"{shown(as_text(spec))}: give one length, not {len(values)}", field)
    return values[0]


def _one_depth(text: str, field: str) -> float:
    t = text.strip().removesuffix("%")
    try:
        value = float(t)
    except ValueError:
        raise ConfigError(f"{shown(text)} is not a percentage between 0 and 100", field) from None
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{shown(text)} must lie between 0 and 100 (percent of the context)", field)
    return value


def parse_depths(spec: Any, field: str = "depths") -> list[float]:
    """"0,25,50" -> [0.0, 25.0, 50.0]; "0:100:11" -> 11 evenly spaced depths 0, 10, ..., 100
    (start:stop:count, both ends included). Each depth is a percentage in [0, 100]."""
    spec = _list_text(spec, field, "depths", "percentages like 0,25,50,75,100 or 0:100:5")
    out: list[float] = []
    for part in spec.split(","):
        if ":" in part:
            bits = part.split(":")
            if len(bits) != 3:
                raise ConfigError(f"range {shown(part)} must be start:stop:count, e.g. 0:100:11", field)
            start, stop = _one_depth(bits[0], field), _one_depth(bits[1], field)
            try:
                count = int(bits[2])
            except ValueError:
                raise ConfigError(f"range {shown(part)}: count {bits[2]!r} is not an integer", field) from None
            if not 1 <= count <= MAX_ITEMS:
                raise ConfigError(f"range {shown(part)}: count ({shown(count)}) must lie in [1, {MAX_ITEMS}] "
                                  "(start:stop:count gives count evenly spaced depths, e.g. 0:100:5 = "
                                  "0, 25, 50, 75, 100)", field)
            values = [start] if count == 1 else np.linspace(start, stop, count).tolist()
        else:
            values = [_one_depth(part, field)]
        for v in values:
            v = round(float(v), 6)
            if v in out:
                raise ConfigError(f"{shown(spec)} gives {v:g} twice", field)
            out.append(v)
    return out


def parse_tokens(spec: Any, field: str = "n_tokens") -> Optional[int]:
    """"65536", "64k", "1m" -> a token count (k = 1024); "all" -> None (every token of the data)."""
    text = as_text(spec).strip().lower() if spec is not None else ""
    if text == "all":
        return None
    return token_count(text, field, MAX_TOTAL_TOKENS)


def parse_bits(spec: Any, low: int = 2, high: int = 16, field: str = "bits") -> tuple[int, ...]:
    """"16,8,6,4" -> (16, 8, 6, 4); "none" -> (). Integers in [low, high]; no repeats."""
    text = as_text(spec).strip().lower() if spec is not None else ""
    if text in ("none", ""):
        if text == "none" or (isinstance(spec, (list, tuple)) and not spec):
            return ()
        raise ConfigError(f"{shown(spec)}: give bit widths like 16,8,6,4 (or none)", field)
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+", part):
            raise ConfigError(f"{shown(spec)}: {shown(part)} is not a whole number of bits", field)
        k = int(part)
        if not low <= k <= high:
            raise ConfigError(f"{shown(spec)}: {k} bits is outside [{low}, {high}]", field)
        if k in out:
            raise ConfigError(f"{shown(spec)} gives {k} twice", field)
        out.append(k)
    return tuple(out)


def parse_index_list(spec: Any, size: int, field: str) -> list[int]:
    """'all' or a comma list of indices (negatives count from the end) -> sorted indices."""
    text = as_text(spec)
    if text.strip().lower() == "all":
        return list(range(size))
    out = set()
    for part in text.split(","):
        part = part.strip()
        try:
            i = int(part)
        except ValueError:
            raise ConfigError(f"{shown(text)}: {shown(part)} is not an integer (or use 'all')", field) from None
        if not -size <= i < size:
            raise ConfigError(f"{shown(text)}: index {i} out of range for {size} {field}", field)
        out.add(i % size)
    return sorted(out)


def parse_grid(params: dict) -> dict:
    """A copy of plain parameter values with `lengths` and `depths` (text like "4k,8k" and
    "0:100:5", or lists) parsed into tuples, for every probe config that takes them."""
    values = dict(params)
    if "lengths" in values:
        values["lengths"] = tuple(parse_lengths(values["lengths"]))
    if "depths" in values:
        values["depths"] = tuple(parse_depths(values["depths"]))
    return values


def length_label(n: int) -> str:
    """4096 -> "4K", 1536 -> "1.5K", 1000 -> "1000"."""
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return f"{n / 1024:.1f}K" if n >= 1024 else str(n)


# fields whose default bound is not MAX_COUNT: token counts are bounded as their parsers bound them
_HIGH = {"seed": MAX_SEED, "n_tokens": MAX_TOTAL_TOKENS, "length": MAX_TOKENS, "lengths": MAX_TOKENS,
         "seq_len": MAX_TOKENS, "sink": MAX_TOKENS}


def check_int(field: str, value: Any, low: int, high: Optional[int] = None) -> None:
    """An integer in [low, high]; `high` defaults to the field's bound in _HIGH, else MAX_COUNT."""
    high = high if high is not None else _HIGH.get(field, MAX_COUNT)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"{shown(value)} must be an integer in [{low}, {high:,}]", field)


def check_keys(params: dict, allowed, probe: str) -> None:
    """Unknown parameter names are refused with the valid ones."""
    from diffeval.errors import did_you_mean

    unknown = sorted(map(str, set(params) - set(allowed)))
    if unknown:
        names = ", ".join(map(shown, unknown[:4])) + (", ..." if len(unknown) > 4 else "")
        raise ConfigError(f"unknown {probe} parameter(s) {names}: {did_you_mean(unknown[0], allowed)}", field=None)


def parse_counts(spec: Any, field: str = "shots") -> tuple[int, ...]:
    """"1,10,100" (or a list) -> (1, 10, 100), each a count like 4k; "" -> ()."""
    if spec in ("", (), []):
        return ()
    return tuple(token_count(s, field) for s in as_text(spec).split(","))


def parse_names(spec: Any) -> tuple[str, ...]:
    """"random, grouped" or a list -> ("random", "grouped")."""
    return tuple(a.strip() for a in spec.split(",")) if isinstance(spec, str) else tuple(spec)


def unescape(text: Any) -> Any:
    """A typed "\\n" (backslash, n) as a newline: templates and separators given on a command line."""
    return text.replace("\\n", "\n") if isinstance(text, str) else text
