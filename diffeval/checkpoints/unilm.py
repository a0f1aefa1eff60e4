"""DIFF V1 weights in the layout of Microsoft's reference code (unilm `Diff-Transformer`),
converted at load into the internal layout (the Hugging Face DiffLlama one, models/diff.py).

The reference layout, per attention layer, for H differential heads of size d and G key/value
groups (its `num_kv_heads`; n_rep = H / G differential heads per group):
    q_proj  (2H * d, C)  projection heads 2i / 2i+1 are Q1 / Q2 of differential head i
    k_proj  (2G * d, C)  heads 2g / 2g+1 are K1 / K2 of group g
    v_proj  (G * 2d, C)  value head g is one contiguous 2d slice
    out_proj (C, H * 2d), subln.weight (2d,) (newer code; older code has no weight),
    lambda_q1 / k1 / q2 / k2 (d,)
and RoPE rotates interleaved pairs (2m, 2m+1). Differential head i reads group i // n_rep,
as the reference's flash files do (its naive file repeats the 2G key heads one by one, which
pairs Q1 with the wrong key head when n_rep > 1; that file is not followed).

Conversion (exact: rows are only reordered, copied or split):
- q heads 2i -> i and 2i+1 -> i + H; k heads 2g -> g and 2g+1 -> g + G (then the internal
  rule "map-1 head j reads kv j // r, map-2 head j reads kv (j + H) // r", r = 2H / 2G = n_rep,
  gives group j // n_rep for both maps, as in the reference);
- inside each d-wide q / k head, interleaved order (0, 1, 2, 3, ...) -> half-split order
  (0, 2, 4, ..., 1, 3, 5, ...), so that rotate_half RoPE rotates the same pairs by the same
  frequencies (q . k is unchanged by permuting both alike);
- value head g (2d) -> internal value heads g (first d) and g + G (second d);
- out_proj -> o_proj; subln.weight kept as the per-head norm weight (`diff_norm_weight`).

Names outside attention are diffeval's native names (`layers.{i}.attn_norm.weight`, ...) or
Hugging Face ones (`model.layers.{i}.input_layernorm.weight`, ...); attention tensors sit under
`layers.{i}.attn.` or `model.layers.{i}.self_attn.`. The config file the user writes
(config.json with "format": "unilm") uses the reference's argument names: see CONFIG_FIELDS."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from diffeval.checkpoints import hf
from diffeval.checkpoints.files import WeightFiles
from diffeval.errors import CheckpointError, ConfigError
from diffeval.models.config import ModelConfig, RopeConfig

# field -> (meaning, default as documented; None = required)
CONFIG_FIELDS: dict[str, tuple[str, Any]] = {
    "format": ("must be \"unilm\"", None),
    "vocab_size": ("vocabulary size", None),
    "embed_dim": ("model width (d_model)", None),
    "num_layers": ("decoder layers", None),
    "num_heads": ("differential heads H (the reference's num_heads)", None),
    "ffn_dim": ("SwiGLU hidden width", None),
    "num_kv_heads": ("key/value groups G (the flash files' num_kv_heads); must divide num_heads", "num_heads"),
    "head_dim": ("d; the reference's embed_dim // num_heads // 2", "embed_dim // (2 * num_heads)"),
    "max_seq_len": ("position limit", 2048),
    "rope_theta": ("RoPE base (frequencies theta^(-2m/d) for pair m)", 10000.0),
    "norm_eps": ("eps of the block RMSNorms", 1e-5),
    "subln_eps": ("eps of the per-head norm subln", 1e-5),
    "subln_weight": ("whether subln has a weight; default: whether layer 0 has subln.weight", "detected"),
    "tie_embeddings": ("the output head reuses the embedding", False),
    "eos_token_id": ("end-of-text token id(s) for a tokenizer.json next to the weights", "none"),
}

_ATTN = re.compile(r"^layers\.(\d+)\.attn\.(q_proj|k_proj|v_proj|out_proj|subln|lambda_[qk][12])(\.weight|\.bias)?$")


def is_unilm_config(raw: dict[str, Any]) -> bool:
    return raw.get("format") == "unilm"


def _native(name: str) -> str:
    """Outer names (native or Hugging Face) -> native; attention names keep their unilm leaf."""
    if name.startswith("model."):
        return hf.native_name(name) or name
    return name


def detect(tensors: dict[str, torch.Tensor]) -> bool:
    """True when the attention tensors are in the reference layout (an `out_proj`)."""
    return any(_ATTN.match(_native(n)) and ".out_proj." in n for n in tensors)


def check_fields(raw: dict[str, Any], fields: dict[str, tuple[str, Any]], path: Path) -> None:
    """A reference-layout config file: no field outside `fields`, every required one there."""
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CheckpointError(f"{path}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    missing = [k for k, (_, default) in fields.items() if default is None and k not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")


def positive(key: str, value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: {key} ({value!r}) must be a positive integer")
    return value


def config_from(raw: dict[str, Any], path: Path) -> ModelConfig:
    """The user's config file (reference argument names) -> ModelConfig; `subln_weight`
    absent gives diff_norm_weight False here, which `convert` sets from the tensors."""
    check_fields(raw, CONFIG_FIELDS, path)
    H = positive("num_heads", raw["num_heads"], path)
    G = positive("num_kv_heads", raw.get("num_kv_heads", H), path)
    if H % G:
        raise CheckpointError(f"{path}: num_heads ({H}) must be divisible by num_kv_heads ({G})")
    d_model = raw["embed_dim"]
    d_head = raw.get("head_dim")
    if d_head is None:
        if not isinstance(d_model, int) or d_model % (2 * H):
            raise CheckpointError(f"{path}: embed_dim ({d_model!r}) must be divisible by 2 * num_heads ({2 * H}) "
                                  "when head_dim is not given")
        d_head = d_model // (2 * H)
    try:
        return ModelConfig(
            family="diff", vocab_size=raw["vocab_size"], d_model=d_model, n_layers=raw["num_layers"], n_heads=H,
            n_kv_heads=2 * G, d_head=d_head, d_ff=raw["ffn_dim"], max_seq_len=raw.get("max_seq_len", 2048),
            rope=RopeConfig(theta=float(raw.get("rope_theta", 10000.0))), norm_eps=float(raw.get("norm_eps", 1e-5)),
            diff_norm_eps=float(raw.get("subln_eps", 1e-5)), diff_norm_weight=bool(raw.get("subln_weight", False)),
            tie_embeddings=bool(raw.get("tie_embeddings", False)),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def interleaved_to_half(d: int) -> torch.Tensor:
    """Row order (d,) that turns one head's interleaved RoPE pairs (2m, 2m+1) into half-split
    pairs (m, m + d/2): new row m is old row 2m, new row m + d/2 is old row 2m + 1."""
    return torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))


def _heads(t: torch.Tensor, width: int, name: str, where, what: str) -> torch.Tensor:
    """(n * width, ...) -> (n, width, ...), or a one-line error naming the tensor."""
    rows = t.shape[0]
    if rows % width:
        raise CheckpointError(f"{where}: tensor {name!r} has {rows} rows, not a whole number of {what} of width "
                              f"{width}: wrong interleave size (head_dim / num_heads in the config?)")
    return t.reshape(rows // width, width, *t.shape[1:])


def _pairs(t: torch.Tensor, d: int, expected_pairs: int, name: str, where) -> torch.Tensor:
    """An interleaved q or k projection (2n * d, ...) -> internal order: heads 2i -> i, 2i+1 ->
    i + n, and RoPE rows interleaved -> half-split inside each head."""
    heads = _heads(t, d, name, where, "heads")  # (2n, d, ...)
    n2 = heads.shape[0]
    if n2 % 2:
        raise CheckpointError(f"{where}: tensor {name!r} has an odd number of heads ({n2} of width {d}); "
                              "the interleaved layout needs Q1/Q2 (K1/K2) pairs")
    if n2 != 2 * expected_pairs:
        raise CheckpointError(f"{where}: tensor {name!r} has {n2} heads of width {d}, expected "
                              f"{2 * expected_pairs} (2 x {expected_pairs})")
    heads = heads[:, interleaved_to_half(d)]  # half-split inside each head
    return torch.cat((heads[0::2], heads[1::2])).reshape(t.shape)  # (2n, d, ...) -> maps 1 then maps 2


def _values(t: torch.Tensor, d: int, groups: int, name: str, where) -> torch.Tensor:
    """(G * 2d, ...) -> (2G * d, ...): value head g's halves become internal heads g and g + G."""
    heads = _heads(t, 2 * d, name, where, "value heads")  # (G, 2d, ...)
    if heads.shape[0] != groups:
        raise CheckpointError(f"{where}: tensor {name!r} has {heads.shape[0]} value heads of width {2 * d}, "
                              f"expected {groups}")
    return torch.cat((heads[:, :d], heads[:, d:])).reshape(t.shape)


def _subln_weight(cfg: ModelConfig, raw: dict[str, Any], native: dict[str, str]) -> bool:
    """Whether the per-head norm has a weight: the config's `subln_weight` when given (and for
    native configs their diff_norm_weight), else whether layer 0 has one."""
    if is_unilm_config(raw) and "subln_weight" not in raw:
        return "layers.0.attn.subln.weight" in native
    return cfg.diff_norm_weight


def convert(weights: WeightFiles, cfg: ModelConfig, raw: dict[str, Any]) -> tuple[ModelConfig, WeightFiles]:
    """Reference-layout tensors -> (config, tensors under native names in the internal layout).
    Every tensor outside attention passes unchanged (renamed from Hugging Face names)."""
    if cfg.family != "diff":
        raise CheckpointError(f"reference-layout (unilm) weights are DIFF V1; the config says family {cfg.family!r}")
    native = {_native(n): n for n in weights.tensors}  # native name -> name in file
    with_weight = _subln_weight(cfg, raw, native)
    cfg = dataclasses.replace(cfg, diff_norm_weight=with_weight)
    H, d, G = cfg.n_heads, cfg.d_head, cfg.n_kv_heads // 2
    out = WeightFiles(files=weights.files)
    for name, file_name in native.items():
        t, where = weights.tensors[file_name], weights.origin[file_name]
        m = _ATTN.match(name)
        if m is None:
            out.tensors[name], out.origin[name] = t, where
            continue
        part = m.group(2)
        if part in ("q_proj", "k_proj"):
            t = _pairs(t, d, H if part == "q_proj" else G, file_name, where)
        elif part == "v_proj":
            t = _values(t, d, G, file_name, where)
        elif part == "out_proj":
            name = name.replace(".out_proj.", ".o_proj.")
        elif part == "subln":
            if not with_weight:
                raise CheckpointError(f"{where}: tensor {file_name!r} present, but the config says subln has no "
                                      "weight (subln_weight: false, or layer 0 has none)")
            if tuple(t.shape) != (2 * d,):
                raise CheckpointError(f"{where}: tensor {file_name!r} has shape {tuple(t.shape)}, expected "
                                      f"({2 * d},) = 2 x head_dim: wrong interleave size")
        out.tensors[name], out.origin[name] = t, where
    if with_weight:
        for i in range(cfg.n_layers):
            if f"layers.{i}.attn.subln.weight" not in out.tensors:
                where = weights.files[0].parent if weights.files else "checkpoint"
                raise CheckpointError(f"{where}: missing tensor {file_name_of(f'layers.{i}.attn.subln.weight', native)!r} "
                                      "(subln has a weight: the config says so, or layer 0 has one)")
    return cfg, out


def file_name_of(native_name: str, native: dict[str, str]) -> str:
    """How a missing tensor would be named in this file: the naming style of its neighbours."""
    hf_style = any(n.startswith("model.") for n in native.values())
    return hf.file_name(native_name) if hf_style else native_name


def file_name(native_name: str) -> str:
    """The reference-layout name of a native parameter (for messages about missing tensors)."""
    return native_name.replace(".attn.o_proj.", ".attn.out_proj.")


def map_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, str]:
    """After `convert` the names are native: identity."""
    return {name: name for name in tensors}
