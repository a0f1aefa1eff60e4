"""The zoo's word-level tokenizer, built from the corpus vocabulary (no training pass).

Pieces, tried in this order at each position:

1. ``" CITY is"`` for every city key of the needle probe: one token for the needle stem's
   key and its verb, so that finding a needle is a one-token match (an induction step)
   instead of a two-token one, which a tiny model learns far faster;
2. digits in chunks of up to three, with an optional leading space (``" 123"``, ``"456"``,
   ``"7"``): a 7-digit value is three tokens that rarely repeat inside a context;
3. a known word with an optional leading space (the corpus vocabulary);
4. any single character (ASCII; other characters become ``<unk>``).

So every ASCII text round-trips exactly; unknown words are spelled out letter by letter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from diffeval.probes.words import CITIES

SPECIALS = ("<bos>", "<eos>", "<pad>", "<unk>")
BOS, EOS, PAD, UNK = SPECIALS


def _alternation(items: Iterable[str]) -> str:
    # Longest first: the regex engine takes the first alternative that matches.
    return "|".join(re.escape(s) for s in sorted(set(items), key=lambda s: (-len(s), s)))


def split_pattern(words: Iterable[str]) -> str:
    """The pre-tokenizer regex for this word list (see the module docstring)."""
    stems = _alternation(CITIES)
    known = _alternation(words)
    return (f" (?:{stems}) is(?![A-Za-z])"
            r"| ?[0-9]{1,3}"
            f"| ?(?:{known})(?![A-Za-z])"
            r"|[\s\S]")


def vocabulary(words: Iterable[str]) -> list[str]:
    """Token strings in id order: specials, characters, digit chunks, stems, words."""
    words = sorted(set(words))
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    digits = []
    for width in (1, 2, 3):
        for n in range(10 ** width):
            d = f"{n:0{width}d}"
            digits += [d, " " + d]
    stems = [f" {c} is" for c in CITIES]
    out: list[str] = list(SPECIALS)
    for group in (chars, digits, stems, words, [" " + w for w in words]):
        for t in group:
            if t not in out:
                out.append(t)
    return out


def build_tokenizer(words: Iterable[str], directory: Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (BOS/EOS) into `directory`.
    Returns the tokenizer.json path. Deterministic for a given word list."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    words = sorted(set(words))
    vocab = {t: i for i, t in enumerate(vocabulary(words))}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split_pattern(words)), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tmp = directory / "tokenizer.json.tmp"
    tok.save(str(tmp))
    tmp.replace(path)
    cfg = {"bos_token": BOS, "eos_token": EOS, "add_bos_token": True, "unk_token": UNK, "pad_token": PAD}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path
