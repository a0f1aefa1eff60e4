"""Tokenizers: a built-in byte tokenizer, and `tokenizer.json` files through `tokenizers`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

from diffeval.errors import TokenizerError
from diffeval.yamlio import read_json, read_text


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 = <bos>, 257 = <eos>, 258 = <pad>."""

    name = "byte"
    vocab_size = 259
    bos_id: Optional[int] = 256
    eos_id: Optional[int] = 257
    pad_id = 258
    max_id = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def _token_id(tok, value) -> Optional[int]:
    """A special token given as a string, an AddedToken-like dict, or missing."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        return None
    return tok.token_to_id(value)


class HFTokenizer:
    """A `tokenizer.json` (Hugging Face `tokenizers` format). encode() adds no special
    tokens; `bos_id` is set when the checkpoint asks for a BOS token at the start."""

    def __init__(self, path: Path, config: Optional[dict] = None, eos_ids: tuple[int, ...] = (),
                 chat_template: Optional[str] = None, label: Optional[str] = None) -> None:
        from tokenizers import Tokenizer as _Tok

        self.path = Path(path)
        try:
            # from the text, not the path: a path that is not UTF-8 (C locale) is still readable here
            self._tok = _Tok.from_str(self.path.read_bytes().decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception subclass on bad JSON
            lines = str(exc).splitlines() or [type(exc).__name__]
            raise TokenizerError(f"{self.path}: cannot read tokenizer: {lines[0]}") from None
        self.name = f"tokenizer.json ({label or self.path.parent.name})"
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.max_id = max(vocab.values()) if vocab else -1  # ids need not be dense
        cfg = config or {}
        bos = _token_id(self._tok, cfg.get("bos_token"))
        self.bos_id = bos if cfg.get("add_bos_token", bos is not None) else None
        eos = _token_id(self._tok, cfg.get("eos_token"))
        self.eos_id = eos if eos is not None else (eos_ids[0] if eos_ids else None)
        self.stop_ids = frozenset(i for i in (*eos_ids, eos) if i is not None)
        self.chat_template = chat_template if chat_template and chat_template.strip() else _chat_template(cfg)
        self.special_tokens = {k: _token_text(cfg.get(k)) for k in ("eos_token", "pad_token", "unk_token")
                               if _token_text(cfg.get(k))}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(cfg: dict) -> Optional[str]:
    """tokenizer_config.json's 'chat_template' (a string, or a list of named templates: the
    one named 'default'); chat_template.jinja, when present, is passed in and wins."""
    value = cfg.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value.strip() else None


def load_tokenizer(directory: Path, eos_ids: tuple[int, ...] = (), label: Optional[str] = None) -> Optional[HFTokenizer]:
    """The tokenizer whose files are in `directory`, or None when it has no tokenizer.json.
    `label` names it (default: the folder's name), e.g. the checkpoint that uses a shared one."""
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        return None
    cfg_path = Path(directory) / "tokenizer_config.json"
    cfg = read_json(cfg_path, "", TokenizerError) if cfg_path.exists() else None
    template = Path(directory) / "chat_template.jinja"
    text = read_text(template, "", TokenizerError) if template.exists() else None
    return HFTokenizer(path, cfg, eos_ids, text, label)


def stop_ids(tok) -> frozenset[int]:
    """Token ids that end generation for this tokenizer."""
    ids = set(getattr(tok, "stop_ids", ()))
    if tok.eos_id is not None:
        ids.add(tok.eos_id)
    return frozenset(ids)
