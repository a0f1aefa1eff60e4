"""Text as tokens (no torch): the synthetic essay stream and cutting a token stream into
sequences (outliers), documents of files or generated prose and their first tokens (nll),
and the constants of the activation statistics' layout (the DIFF paper's Table 5)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from diffeval.errors import ConfigError
from diffeval.probes.haystack import essay_sentence
from diffeval.textdata import file_blocks, jsonl_rows, text_files, text_pieces

_TASK_KEY = int.from_bytes(b"outliers", "big")
_DOCS_KEY = int.from_bytes(b"nll", "big")  # the synthetic documents' share of their seeds
_REPEAT = 0.3  # synthetic documents: chance that a sentence repeats an earlier one of the document
RANKS = (1, 2, 3, 10, 100)
STAT_KEYS = tuple(f"top{r}" for r in RANKS) + ("median",)
BASELINE_BITS = 16
MIN_BITS = 2  # 2^(k-1) - 1 levels per sign: k = 1 would leave none
# Table-5 rows: activation type -> (names in ActivationStats, label in tables and figures)
ACTIVATIONS: dict[str, str] = {
    "attention_logits": "attention logits",
    "attention_logits_map1": "attention logits, map 1",
    "attention_logits_map2": "attention logits, map 2",
    "hidden_states": "hidden states",
}


def essay_paragraphs(rng: np.random.Generator) -> Iterator[str]:
    """Endless paragraphs of 4 to 12 essay sentences (diffeval.probes.haystack's generator),
    each ending with a blank line."""
    while True:
        n = int(rng.integers(4, 13))
        yield " ".join(essay_sentence(rng) for _ in range(n)) + "\n\n"


def synthetic_rng(seed: int) -> np.random.Generator:
    """The essay stream's generator for `seed` (the task's share of the seed mixed in)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _TASK_KEY])))


def token_stream(blocks: Iterable[str], encode) -> Iterator[int]:
    """Token ids of the text blocks in order; each block is encoded on its own (blocks end at
    paragraph or line breaks), so memory is one block, never the whole text."""
    for block in blocks:
        yield from encode(block)


def sequences(ids: Iterator[int], n_tokens: Optional[int], seq_len: int, bos: Optional[int]
              ) -> Iterator[tuple[int, list[int]]]:
    """Cut a token stream into sequences of `seq_len` tokens (BOS first when the tokenizer has
    one) until `n_tokens` tokens in all (the last sequence may be shorter; None = until the
    stream ends) -> (offset of its first text token in the stream, ids). Raises ConfigError
    when the stream ends before `n_tokens`; the caller counts first to fail before any work."""
    head = [] if bos is None else [int(bos)]
    if seq_len <= len(head):
        raise ConfigError(f"{seq_len} leaves no room for text after BOS", "seq_len")
    done, offset = 0, 0
    while n_tokens is None or done < n_tokens:
        size = seq_len if n_tokens is None else min(seq_len, n_tokens - done)
        body = [t for _, t in zip(range(size - len(head)), ids)]
        if n_tokens is None and not body:
            return
        if n_tokens is not None and len(body) < size - len(head):
            raise ConfigError(f"the data ran out after {done + len(head) + len(body)} of {n_tokens} tokens", "data")
        yield offset, head + body
        offset += len(body)
        done += len(head) + len(body)
        if n_tokens is None and len(body) < seq_len - len(head):
            return


def count_tokens(ids: Iterator[int], limit: Optional[int], seq_len: int, has_bos: bool) -> int:
    """Tokens the sequences of a stream hold in all (BOS included), stopping at `limit`."""
    total = 0
    for _, seq in sequences(ids, None, seq_len, 0 if has_bos else None):
        total += len(seq)
        if limit is not None and total >= limit:
            return limit
    return total


def mean_nll(total: float, n: int) -> float:
    return total / n if n else math.nan


def synthetic_document(seed: int, index: int) -> Iterator[str]:
    """Endless text of one generated document: essay sentences in paragraphs, where a sentence
    repeats an earlier one of the same document with probability 0.3 (long-range structure a
    model can use); seeded by (seed, index)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _DOCS_KEY, index])))
    said: list[str] = []
    while True:
        para = []
        for _ in range(int(rng.integers(4, 10))):
            s = said[int(rng.integers(len(said)))] if said and rng.random() < _REPEAT else essay_sentence(rng)
            said.append(s)
            para.append(s)
        yield " ".join(para) + "\n\n"


def documents(files: Optional[list[Path]], text_field: str, seed: int) -> Iterator[tuple[str, Iterator[str]]]:
    """(name, text blocks) per document, in order: the files (a .jsonl: one document per row,
    its `text_field`), or endless synthetic documents when `files` is None."""
    if files is None:
        index = 0
        while True:
            yield f"synthetic-{index}", synthetic_document(seed, index)
            index += 1
    for path in files:
        if path.suffix == ".jsonl":
            for n, row in enumerate(jsonl_rows(path, "data"), start=1):
                if text_field not in row:
                    raise ConfigError(f"file {path} line {n}: no field {text_field!r} "
                                      f"(has {', '.join(sorted(row)) or 'nothing'})", "text_field")
                text = row[text_field]
                if not isinstance(text, str) or not text.strip():
                    what = "blank" if isinstance(text, str) else "not text"
                    raise ConfigError(f"file {path} line {n}: field {text_field!r} is {what}", "text_field")
                yield f"{path.name}:{n}", text_pieces(text)
        else:
            yield path.name, file_blocks(path, "data")


def take_tokens(blocks: Iterator[str], encode, n: int) -> list[int]:
    """The first n tokens of a document's blocks (fewer when it is shorter); stops reading early."""
    ids: list[int] = []
    for block in blocks:
        ids.extend(encode(block))
        if len(ids) >= n:
            return ids[:n]
    return ids


def text_blocks(data: str, seed: int, files: Optional[list[Path]] = None) -> Iterator[str]:
    """The evaluation text as blocks: essay paragraphs for "synthetic", else the files in order."""
    if data == "synthetic":
        yield from essay_paragraphs(synthetic_rng(seed))
        return
    for path in files if files is not None else text_files(Path(data), "data"):
        yield from file_blocks(path, "data")


def text_sequences(data: str, files: Optional[list[Path]], n_tokens: Optional[int], seq_len: int, tok, seed: int,
                   label: str) -> list[tuple[int, list[int]]]:
    """The evaluation text cut into sequences of `seq_len` (BOS first) up to `n_tokens` in all
    (None: all of it) -> (offset, ids) each; ConfigError, before any work, when the text
    holds too little under the tokenizer of `label`."""
    if data != "synthetic" and n_tokens is not None:
        stream = token_stream(text_blocks(data, seed, files), tok.encode)
        have = count_tokens(stream, n_tokens, seq_len, tok.bos_id is not None)
        if have < n_tokens:
            raise ConfigError(f"{data} holds {have} tokens in sequences of {seq_len} under the tokenizer of "
                              f"{label}, fewer than the {n_tokens} asked for; ask for fewer tokens or all", "data")
    stream = token_stream(text_blocks(data, seed, files), tok.encode)
    out = list(sequences(stream, n_tokens, seq_len, tok.bos_id))
    if n_tokens is None and (not out or len(out[0][1]) < seq_len):  # 'all' of too little text
        have = sum(len(ids) for _, ids in out)
        raise ConfigError(f"{data} holds {have} tokens under the tokenizer of {label}, less than one "
                          f"sequence of {seq_len}; give more text or a shorter --len", "data")
    return out


def document_sequences(docs: Iterator[tuple[str, Iterator[str]]], encode, length: int, want: Optional[int],
                       pack: Optional[list[int]]) -> tuple[list[tuple[str, list[int]]], int]:
    """Sequences of `length` text tokens, each starting at a document, until `want` (None: the
    documents end) -> ([(document names, ids)], documents skipped). Without `pack` a document
    shorter than `length` is skipped; with it (the separator ids) documents follow one another
    until the sequence is full, and the rest of its last document is dropped."""
    out: list[tuple[str, list[int]]] = []
    skipped, ids, names = 0, [], []
    for name, blocks in docs:
        if want is not None and len(out) >= want:
            break
        if pack is None:
            got = take_tokens(blocks, encode, length)
            if len(got) < length:
                skipped += 1
            else:
                out.append((name, got))
            continue
        got = take_tokens(blocks, encode, length - len(ids))
        if not got:  # packed, an empty document would be a separator alone
            raise ConfigError(f"document {name} is empty", "data")
        ids.extend(got + pack)
        names.append(name)
        if len(ids) >= length:
            out.append(("+".join(names), ids[:length]))
            ids, names = [], []
    return out, skipped
