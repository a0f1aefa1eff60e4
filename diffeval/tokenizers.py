"""Tokenizers: a built-in byte tokenizer, and `tokenizer.json` files through `tokenizers`.

BOS follows the checkpoint's own rule (`bos_rule` says which): `add_bos_token` where
tokenizer_config.json declares it, else the token(s) tokenizer.json's post-processor puts
before a text (what `tokenizers` and transformers' `AutoTokenizer(text)` produce), else none.
`with_bos` applies a run's `--bos` policy (auto | always | never) to a tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Protocol

from diffeval.errors import ConfigError, TokenizerError
from diffeval.yamlio import read_json, read_text


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


BOS_POLICIES = ("auto", "always", "never")


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 = <bos>, 257 = <eos>, 258 = <pad>. Its rule: BOS
    before every text (as diffeval's own models are trained)."""

    name = "byte"
    vocab_size = 259
    bos_id: Optional[int] = 256
    bos_token_id: Optional[int] = 256
    bos_rule = "byte tokenizer: always"
    bos_policy = "auto"
    eos_id: Optional[int] = 257
    pad_id = 258
    max_id = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def text_of(self, ids: list[int]) -> str:
        """The text of ids with special tokens kept (the byte tokenizer's have no text)."""
        return self.decode(ids)

    def token_text(self, token_id: int) -> Optional[str]:
        return None


def _token_id(tok, value) -> Optional[int]:
    """A special token given as a string, an AddedToken-like dict, or missing."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        return None
    return tok.token_to_id(value)


class HFTokenizer:
    """A `tokenizer.json` (Hugging Face `tokenizers` format). encode() adds no special
    tokens (it parses those written in the text); `bos_id` is the token the checkpoint's own
    rule puts before a text (None: none), `bos_rule` says where that rule was read."""

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
        self.bos_token_id = _token_id(self._tok, cfg.get("bos_token"))
        self.bos_id, self.bos_rule = _bos_rule(self._tok, cfg, self.bos_token_id)
        self.bos_token_id = self.bos_token_id if self.bos_token_id is not None else self.bos_id
        self.bos_policy = "auto"
        eos = _token_id(self._tok, cfg.get("eos_token"))
        self.eos_id = eos if eos is not None else (eos_ids[0] if eos_ids else None)
        self.stop_ids = frozenset(i for i in (*eos_ids, eos) if i is not None)
        self.chat_template = chat_template if chat_template and chat_template.strip() else _chat_template(cfg)
        self.special_tokens = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                               if _token_text(cfg.get(k))}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def text_of(self, ids: list[int]) -> str:
        """The text of ids with special tokens kept: encode() of it gives the ids back
        wherever the ids are the tokenizer's own encoding of that text."""
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> Optional[str]:
        return self._tok.id_to_token(int(token_id))


def _bos_rule(tok, cfg: dict, bos: Optional[int]) -> tuple[Optional[int], str]:
    """(BOS id or None, where the rule was read): tokenizer_config.json's `add_bos_token`
    when declared, else the single token tokenizer.json's post-processor puts before a text."""
    declared = cfg.get("add_bos_token")
    if isinstance(declared, bool):
        return (bos if declared else None), f"tokenizer_config.json add_bos_token={str(declared).lower()}"
    if tok.post_processor is None:
        return None, "no post-processor, no add_bos_token: none"
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    lead = full[: len(full) - len(bare)] if full[len(full) - len(bare):] == bare else []
    if len(lead) == 1:
        return lead[0], "tokenizer.json post-processor"
    return None, ("tokenizer.json post-processor: none" if not lead
                  else f"tokenizer.json post-processor adds {len(lead)} tokens: not followed")


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


def with_bos(tok, policy: str):
    """`tok` under a run's BOS policy: auto (its own rule), always (its bos_token before every
    text), never (none). Returns a copy; refuses `always` for a tokenizer without a BOS token."""
    if policy not in BOS_POLICIES:
        raise ConfigError(f"{policy!r}: choose {', '.join(BOS_POLICIES)}", "bos")
    if tok is None or policy == "auto":
        return tok
    bos = getattr(tok, "bos_token_id", tok.bos_id)
    if policy == "always" and bos is None:
        raise ConfigError(f"always: {tok.name} has no bos_token (tokenizer_config.json); use auto or never", "bos")
    out = copy.copy(tok)
    out.bos_id = bos if policy == "always" else None
    out.bos_policy = policy
    return out


def bos_record(tok) -> dict:
    """What results.json says about a model's BOS: the policy, the rule read, the token."""
    bos = tok.bos_id
    text = tok.token_text(bos) if bos is not None and hasattr(tok, "token_text") else None
    return {"policy": getattr(tok, "bos_policy", "auto"), "rule": getattr(tok, "bos_rule", "unknown"),
            "id": bos, "token": text}


def stop_ids(tok) -> frozenset[int]:
    """Token ids that end generation for this tokenizer."""
    ids = set(getattr(tok, "stop_ids", ()))
    if tok.eos_id is not None:
        ids.add(tok.eos_id)
    return frozenset(ids)
