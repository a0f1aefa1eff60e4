"""Reading user text for probes: one file, a folder of .txt files, or a JSONL file; streamed
in blocks so memory never holds a whole corpus; and content hashes for results."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from diffeval.errors import ConfigError

BLOCK_CHARS = 1 << 16  # characters of a data file read as one block
LINE_CHARS = 4 * BLOCK_CHARS  # a longer line is read (and tokenized) in pieces cut before a space


def text_files(path: Path, field: str, suffix: str = ".txt") -> list[Path]:
    """An existing file itself, or the `suffix` files of a folder searched recursively
    (sorted); `field` names the parameter in errors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{str(path)!r}: no such file or folder", field)
    if path.is_file():
        return [path]
    try:
        files = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
    except OSError as exc:
        raise ConfigError(f"folder {path}: cannot list ({exc.strerror or exc})", field) from None
    if not files:
        raise ConfigError(f"folder {path} holds no {suffix} files", field)
    return files


def read_text(path: Path, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})", field) from None
    except OSError as exc:
        raise ConfigError(f"file {path}: cannot read ({exc.strerror or exc})", field) from None


def file_blocks(path: Path, field: str) -> Iterator[str]:
    """A file's text in blocks of about BLOCK_CHARS characters, cut after a blank line when
    one comes within the block, else after any line; the file ends with a blank line."""
    block: list[str] = []
    size = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in _lines(f):
                block.append(line)
                size += len(line)
                if (size >= BLOCK_CHARS and not line.strip()) or size >= 4 * BLOCK_CHARS:
                    yield "".join(block)
                    block, size = [], 0
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})", field) from None
    except OSError as exc:
        raise ConfigError(f"file {path}: cannot read ({exc.strerror or exc})", field) from None
    text = "".join(block)
    yield text + ("" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n")


def _lines(f) -> Iterator[str]:
    """A text file's lines, a line longer than LINE_CHARS in pieces cut before a space or tab
    (a tokenizer that splits words at spaces sees the same words): a file of one 50 MB line
    is read and tokenized a piece at a time."""
    carry = ""
    while True:
        part = f.readline(LINE_CHARS)
        if not part:
            if carry:
                yield carry
            return
        text, carry = carry + part, ""
        if not text.endswith("\n") and len(part) == LINE_CHARS:
            cut = max(text.rfind(" "), text.rfind("\t"))
            if cut > 0:
                text, carry = text[:cut], text[cut:]
        yield text


def text_pieces(text: str) -> Iterator[str]:
    """A text in pieces of about LINE_CHARS characters, cut before a space or tab."""
    start = 0
    while len(text) - start > LINE_CHARS:
        end = start + LINE_CHARS
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\t", start + 1, end))
        end = cut if cut > start else end
        yield text[start:end]
        start = end
    yield text[start:]


def jsonl_rows(path: Path, field: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a .jsonl file, one per non-empty line; errors name file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"file {path} line {n}: not valid JSON ({exc.msg})", field) from None
                if not isinstance(row, dict):
                    raise ConfigError(f"file {path} line {n}: expected a JSON object", field)
                yield row
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})", field) from None
    except OSError as exc:
        raise ConfigError(f"file {path}: cannot read ({exc.strerror or exc})", field) from None


def files_sha256(files: list[Path], field: str = "data") -> str:
    """sha256 over the names and bytes of files, in order; a file that cannot be read is a
    ConfigError naming it."""
    digest = hashlib.sha256()
    for p in files:
        digest.update(os.fsencode(p.name) + b"\0")
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise ConfigError(f"file {p}: cannot read ({exc.strerror or exc})", field) from None
    return digest.hexdigest()


def describe_files(source: str, files: list[Path]) -> dict[str, Any]:
    """What a data path was, for results: the spec, file count and content sha256."""
    return {"kind": "path", "source": source, "n_files": len(files), "sha256": files_sha256(files)}
