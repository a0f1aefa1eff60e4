"""DIFF V2 weights in the layout of Microsoft's reference code (unilm `Diff-Transformer-V2`),
converted at load into the internal layout of the `diff2` family (models/diff2.py).

What the reference code says. microsoft/unilm, `Diff-Transformer/Diff-Transformer-V2/
multihead_flashdiffv2.py` (commit 31646c58ba06272ce1771bf07681751f0114abd0, the one version of
that file the code index holds; the write-up "Differential Transformer V2", Hugging Face blog,
20 January 2026, points to that folder), class `MultiheadFlashDiffV2(use_diff_v2, d_model,
num_heads, num_kv_heads, head_dim)`, for H = num_heads output heads of size d = head_dim and
Hkv = num_kv_heads (None: H):
    q_proj      (2H * d, C)   2H query heads, no bias
    k_proj      (Hkv * d, C), v_proj (Hkv * d, C), no bias
    o_proj      (C, H * d)    named `o_proj` in V2 (V1's files name it `out_proj`)
    lambda_proj (H, C)        no bias
q and k go through flash-attn's `apply_rotary_emb(..., interleaved=True)` (pairs (2m, 2m+1)),
then one `flash_attn_func(q, k, v, causal=True)` (scale 1/sqrt(d); GQA: query head h reads kv
head h // (2H / Hkv)), then out_i = attn_{2i} - sigmoid(lambda_proj(x))_i * attn_{2i+1}
(`attn[:, :, 0::2]`, `attn[:, :, 1::2]`), reshaped to (B, T, H * d) and through o_proj.

What could not be found there, and is assumed here:
- the rotary tables: the module takes (cos, sin) from its caller; pair m is assumed to turn at
  rope_theta^(-2m/d), the usual table (and the one the V1 importer, unilm.py, assumes);
- everything outside attention (embedding, block norms, MLP, final norm, head): the file holds
  the attention module only; the decoder around it is assumed to be the pre-norm RMSNorm +
  SwiGLU block of the V1 reference and of Llama, with diffeval's native or Hugging Face names;
- the output projection's name: `o_proj` as the V2 file has it; `out_proj` (V1's name) is read
  too and renamed.

Conversion (exact: rows are only reordered). The internal diff2 already pairs query heads 2i
and 2i+1 on kv head h // (2H / Hkv), exactly as the reference does, so no head is moved;
inside each d-wide q / k head, interleaved rows (0, 1, 2, 3, ...) -> half-split (0, 2, 4, ...,
1, 3, 5, ...), so that rotate_half RoPE rotates the same pairs by the same angles (q . k is
unchanged by permuting both alike); `out_proj` -> `o_proj`. v_proj and lambda_proj pass as
they are.

Detection: with `o_proj` the tensor names are the internal diff2 ones, and only RoPE's pairing
differs, which no name shows: such weights need config.json "format": "unilm-v2" (or
`--format unilm-v2`). Attention tensors named `out_proj` next to a `lambda_proj` are detected
as this layout. The config file uses the reference's argument names: see CONFIG_FIELDS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from diffeval.checkpoints.files import WeightFiles
from diffeval.checkpoints.unilm import _heads, _native, check_fields, interleaved_to_half, positive
from diffeval.errors import CheckpointError, ConfigError
from diffeval.models.config import ModelConfig, RopeConfig

FORMAT = "unilm-v2"
# field -> (meaning, default as documented; None = required)
CONFIG_FIELDS: dict[str, tuple[str, Any]] = {
    "format": (f"must be \"{FORMAT}\"", None),
    "vocab_size": ("vocabulary size", None),
    "d_model": ("model width (the reference's d_model)", None),
    "num_layers": ("decoder layers", None),
    "num_heads": ("output heads H (the reference's num_heads; 2H query heads)", None),
    "ffn_dim": ("SwiGLU hidden width", None),
    "num_kv_heads": ("key/value heads (the reference's num_kv_heads); 2 * num_heads / num_kv_heads must be even",
                     "num_heads"),
    "head_dim": ("d, the width of every query, key, value and output head (the reference's head_dim)",
                 "d_model // num_heads"),
    "max_seq_len": ("position limit", 2048),
    "rope_theta": ("RoPE base (pair m turns at theta^(-2m/d))", 10000.0),
    "norm_eps": ("eps of the block RMSNorms", 1e-5),
    "tie_embeddings": ("the output head reuses the embedding", False),
    "eos_token_id": ("end-of-text token id(s) for a tokenizer.json next to the weights", "none"),
}

_ATTN = re.compile(r"^layers\.(\d+)\.attn\.(q_proj|k_proj|v_proj|o_proj|out_proj|lambda_proj)\.(weight|bias)$")


def is_config(raw: dict[str, Any]) -> bool:
    return raw.get("format") == FORMAT


def has_lambda_proj(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the attention tensors are DIFF V2's (a `lambda_proj`)."""
    return any(".lambda_proj." in n and _ATTN.match(_native(n)) for n in tensors)


def detect(tensors: dict[str, torch.Tensor]) -> bool:
    """True when the names alone show this layout: an attention `out_proj` next to a `lambda_proj`."""
    return has_lambda_proj(tensors) and any(".out_proj." in n and _ATTN.match(_native(n)) for n in tensors)


def config_from(raw: dict[str, Any], path: Path) -> ModelConfig:
    """The user's config file (reference argument names) -> ModelConfig of family diff2."""
    check_fields(raw, CONFIG_FIELDS, path)
    H = positive("num_heads", raw["num_heads"], path)
    G = positive("num_kv_heads", raw.get("num_kv_heads", H), path)
    if (2 * H) % G or (2 * H // G) % 2:
        raise CheckpointError(f"{path}: num_kv_heads ({G}) must divide 2 * num_heads ({2 * H}) into groups of even "
                              "size (query heads 2i and 2i+1 share a key/value head)")
    d_model = raw["d_model"]
    d_head = raw.get("head_dim")
    if d_head is None:
        if not isinstance(d_model, int) or d_model % H:
            raise CheckpointError(f"{path}: d_model ({d_model!r}) must be divisible by num_heads ({H}) "
                                  "when head_dim is not given")
        d_head = d_model // H
    try:
        return ModelConfig(
            family="diff2", vocab_size=raw["vocab_size"], d_model=d_model, n_layers=raw["num_layers"], n_heads=H,
            n_kv_heads=G, d_head=d_head, d_ff=raw["ffn_dim"], max_seq_len=raw.get("max_seq_len", 2048),
            rope=RopeConfig(theta=float(raw.get("rope_theta", 10000.0))), norm_eps=float(raw.get("norm_eps", 1e-5)),
            tie_embeddings=bool(raw.get("tie_embeddings", False)),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _half_split(t: torch.Tensor, d: int, expected: int, name: str, where) -> torch.Tensor:
    """A q or k projection (n * d, ...) with interleaved RoPE rows -> half-split rows in each head."""
    heads = _heads(t, d, name, where, "heads")  # (n, d, ...)
    if heads.shape[0] != expected:
        raise CheckpointError(f"{where}: tensor {name!r} has {heads.shape[0]} heads of width {d}, expected {expected}")
    return heads[:, interleaved_to_half(d)].reshape(t.shape)


def convert(weights: WeightFiles, cfg: ModelConfig, raw: dict[str, Any]) -> tuple[ModelConfig, WeightFiles]:
    """Reference-layout tensors -> (config, tensors under native names in the internal layout).
    Every tensor outside attention passes unchanged (renamed from Hugging Face names)."""
    if cfg.family != "diff2":
        raise CheckpointError(f"reference-layout ({FORMAT}) weights are DIFF V2; the config says family {cfg.family!r}")
    native = {_native(n): n for n in weights.tensors}  # native name -> name in file
    out = WeightFiles(files=weights.files)
    for name, file_name in native.items():
        t, where = weights.tensors[file_name], weights.origin[file_name]
        m = _ATTN.match(name)
        part = m.group(2) if m else None
        if part in ("q_proj", "k_proj"):
            expected = 2 * cfg.n_heads if part == "q_proj" else cfg.n_kv_heads
            t = _half_split(t, cfg.d_head, expected, file_name, where)
        elif part == "out_proj":
            name = name.replace(".out_proj.", ".o_proj.")
            if name in native:
                raise CheckpointError(f"{where}: layer {m.group(1)} has both {file_name!r} and an o_proj")
        out.tensors[name], out.origin[name] = t, where
    return cfg, out


def file_name(native_name: str) -> str:
    """The reference-layout name of a native parameter (the V2 file keeps `o_proj`)."""
    return native_name


def map_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, str]:
    """After `convert` the names are native: identity."""
    return {name: name for name in tensors}
