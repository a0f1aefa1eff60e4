"""Hugging Face checkpoints as `save_pretrained` writes them: LlamaForCausalLM,
MistralForCausalLM (sliding window included), Qwen2ForCausalLM, Qwen3ForCausalLM (per-head q/k
norms), Qwen3_5ForCausalLM (gated attention; configs whose layers are all full attention) and
DiffLlamaForCausalLM. All foreign names and layouts are translated here and nowhere else.

Qwen3.5 stores its gate inside q_proj: per head, d query rows then d gate rows; `convert`
splits them into q_proj and the gated family's g_proj. Its RMSNorms are zero-centred (scale
1 + w); `convert` stores 1 + w, so the norms are the plain ones of every other family. Its
multimodal RoPE sections coincide for text (every section has the same position), where it is
plain RoPE; its partial rotary (`partial_rotary_factor`, 0.25 when absent) rotates the first
int(head_dim * factor) dims of each head. RoPE scaling: linear, llama3 and yarn (with its
attention factor on cos and sin), from `rope_parameters` or the older `rope_scaling`.
`auto_map` (remote code) is never executed: only the known architectures are read, by this
code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from diffeval.errors import CheckpointError, ConfigError, shown
from diffeval.models.config import ROPE_TYPES, ModelConfig, RopeConfig

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3_5ForCausalLM": "qwen3_5_text",
    "DiffLlamaForCausalLM": "diffllama",
}
QK_NORM = ("qwen3", "qwen3_5_text")  # architectures with per-head q/k RMSNorm
MODEL_TYPES = {v: k for k, v in ARCHITECTURES.items()}

# One row per tensor name pattern: (Hugging Face name, native name). {i} is a layer index, {attn}
# and {mlp} a parameter path kept as it is (`q_proj.weight`, `lambda_q1`, `subln.weight`,
# `gate_proj.bias`). Both directions are read from this one table.
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "embed.weight"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.mlp_norm.weight"),
    ("model.layers.{i}.self_attn.{attn}", "layers.{i}.attn.{attn}"),
    ("model.layers.{i}.mlp.{mlp}", "layers.{i}.mlp.{mlp}"),
)
_SLOTS = {"i": r"\d+", "attn": r"\w+(?:\.\w+)?", "mlp": r"\w+\.\w+"}


def _pattern(template: str) -> re.Pattern:
    """The regex of a NAME_MAP template: literal text, each {slot} a named group."""
    parts = re.split(r"\{(\w+)\}", template)  # text, slot, text, ...
    return re.compile("".join(f"(?P<{p}>{_SLOTS[p]})" if k % 2 else re.escape(p) for k, p in enumerate(parts)))


_TO_NATIVE = [(_pattern(hf_name), native) for hf_name, native in NAME_MAP]
_TO_HF = [(_pattern(native), hf_name) for hf_name, native in NAME_MAP]


def _translate(name: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.fullmatch(name)
        if m:
            return template.format(**m.groupdict())
    return None


_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def architecture(raw: dict[str, Any], path: Path) -> str:
    archs = raw.get("architectures") or []
    if archs:
        arch = archs[0]
    elif raw.get("model_type") in MODEL_TYPES:
        arch = MODEL_TYPES[raw["model_type"]]
    else:
        arch = raw.get("model_type", "<none>")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)} "
            "(--engine hf runs the text probes on any architecture transformers implements)"
        )
    return arch


def _number(value: Any, name: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{path}: {name} ({shown(value)}) must be a number")
    return float(value)


def _rope(raw: dict[str, Any], path: Path, partial_default: float = 1.0) -> RopeConfig:
    """RopeConfig from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`
    (older), with transformers' defaults: yarn's original context from a top-level
    `original_max_position_embeddings` (Phi-3 style), else its rope dict, else
    max_position_embeddings; a beta_fast / beta_slow of 0 or null reads as 32 / 1."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params:
        scaling = dict(params)
        theta = scaling.get("rope_theta", raw.get("rope_theta", 10000.0))
    else:
        scaling = dict(raw.get("rope_scaling") or {})
        theta = raw.get("rope_theta", 10000.0)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise CheckpointError(
            f"{path}: unsupported RoPE scaling type {kind!r}; supported: {', '.join(ROPE_TYPES)}"
        )
    partial = scaling.get("partial_rotary_factor", raw.get("partial_rotary_factor", partial_default))
    fields: dict[str, Any] = {"theta": _number(theta, "rope_theta", path), "type": kind,
                              "fraction": 1.0 if partial is None else _number(partial, "partial_rotary_factor", path)}
    if kind != "default":
        if scaling.get("factor") is None:
            raise CheckpointError(f"{path}: RoPE scaling {kind!r} needs a 'factor'")
        fields["factor"] = _number(scaling["factor"], "rope_scaling.factor", path)
    if kind == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in scaling:
                raise CheckpointError(f"{path}: llama3 RoPE scaling needs {key!r}")
            fields[key] = scaling[key]
    if kind == "yarn":
        fields.update(_yarn_fields(raw, scaling, path))
    try:
        return RopeConfig(**fields)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _yarn_fields(raw: dict[str, Any], scaling: dict[str, Any], path: Path) -> dict[str, Any]:
    old = raw.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings") \
        or raw.get("max_position_embeddings", 2048)
    fields: dict[str, Any] = {"original_max_position_embeddings": old,
                              "beta_fast": _number(scaling.get("beta_fast") or 32, "rope_scaling.beta_fast", path),
                              "beta_slow": _number(scaling.get("beta_slow") or 1, "rope_scaling.beta_slow", path)}
    for key in ("mscale", "mscale_all_dim", "attention_factor"):
        if scaling.get(key) is not None:
            fields[key] = _number(scaling[key], f"rope_scaling.{key}", path)
    truncate = scaling.get("truncate", True)
    if not isinstance(truncate, bool):
        raise CheckpointError(f"{path}: rope_scaling.truncate ({shown(truncate)}) must be true or false")
    fields["truncate"] = truncate
    return fields


def _require(raw: dict[str, Any], key: str, path: Path) -> Any:
    if key not in raw:
        raise CheckpointError(f"{path}: missing field {key!r}")
    return raw[key]


_INT_FIELDS = ("num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim", "vocab_size",
               "num_hidden_layers", "intermediate_size", "max_position_embeddings", "sliding_window")


def _check_types(raw: dict[str, Any], path: Path) -> None:
    """Every integer field an integer and rms_norm_eps a number, all wrong ones named at once."""
    bad = [f"{k} ({shown(raw[k], 24)})" for k in _INT_FIELDS
           if raw.get(k) is not None and (isinstance(raw[k], bool) or not isinstance(raw[k], int) or raw[k] < 1)]
    eps = raw.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        bad.append(f"rms_norm_eps ({shown(eps, 24)})")
    if bad:
        raise CheckpointError(f"{path}: {', '.join(bad)}: must be positive integers (rms_norm_eps a number)")


def config_from(raw: dict[str, Any], path: Path) -> ModelConfig:
    arch = architecture(raw, path)
    _check_types(raw, path)
    kind = ARCHITECTURES[arch]
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{path}: hidden_act {act!r} is not supported (SwiGLU needs 'silu')")
    window = raw.get("sliding_window")
    max_pos = raw.get("max_position_embeddings", 2048)
    if kind in ("qwen2", "qwen3") and raw.get("use_sliding_window"):
        raise CheckpointError(f"{path}: use_sliding_window=true is not supported")
    sliding = window if kind == "mistral" and window is not None and window < max_pos else None
    if kind == "qwen3_5_text":
        _full_attention_only(raw, path)
    n_attn = _require(raw, "num_attention_heads", path)
    n_kv = raw.get("num_key_value_heads") or n_attn
    d_model = _require(raw, "hidden_size", path)
    d_head = raw.get("head_dim") or d_model // n_attn
    if kind == "diffllama":
        if n_attn % 2:
            raise CheckpointError(f"{path}: DiffLlama num_attention_heads ({n_attn}) must be even")
        family, n_heads = "diff", n_attn // 2
    elif kind == "qwen3_5_text":
        family, n_heads = "gated", n_attn
    else:
        family, n_heads = ("sha" if n_attn == 1 and n_kv == 1 else "transformer"), n_attn
    attn_bias = bool(raw.get("attention_bias", False))
    values = dict(
        family=family,
        vocab_size=_require(raw, "vocab_size", path),
        d_model=d_model,
        n_layers=_require(raw, "num_hidden_layers", path),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_ff=_require(raw, "intermediate_size", path),
        max_seq_len=max_pos,
        rope=_rope(raw, path, 0.25 if kind == "qwen3_5_text" else 1.0),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=True if kind == "qwen2" else attn_bias,
        o_bias=False if kind == "qwen2" else attn_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=kind in QK_NORM,
        sliding_window=sliding,
    )
    if family == "gated":
        values["gate"] = "element"
    try:
        return ModelConfig(**values)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _full_attention_only(raw: dict[str, Any], path: Path) -> None:
    """Qwen3.5 text configs load when every layer is full (gated) attention: its linear-attention
    (Gated DeltaNet) layers are not implemented. transformers' default pattern when layer_types
    is absent: every `full_attention_interval`-th layer full, the others linear."""
    types = raw.get("layer_types")
    if types is None:
        interval = raw.get("full_attention_interval", 4)
        n = raw.get("num_hidden_layers", 0)
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)]
    linear = [i for i, t in enumerate(types) if t != "full_attention"]
    if linear:
        raise CheckpointError(f"{path}: layer_types has {len(linear)} linear-attention (Gated DeltaNet) layer(s) "
                              f"(first: {linear[0]}); diffeval implements Qwen3.5's full-attention layers only")


_NORMS = re.compile(r"(input_layernorm|post_attention_layernorm|q_norm|k_norm)\.weight$|^model\.norm\.weight$")
_Q_PROJ = re.compile(r"^model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$")


def convert(weights, cfg: ModelConfig, raw: dict[str, Any]):
    """Layouts that are not the internal one, made internal at load (exact: rows split, norms
    shifted). Qwen3.5: each q_proj head's [query; gate] rows -> q_proj and g_proj, RMSNorm
    weights w -> 1 + w (in float32). Other architectures pass unchanged."""
    if ARCHITECTURES[architecture(raw, Path("config.json"))] != "qwen3_5_text":
        return cfg, weights
    from diffeval.checkpoints.files import WeightFiles

    out = WeightFiles(files=weights.files)
    H, d = cfg.n_heads, cfg.d_head
    for name, t in weights.tensors.items():
        where = weights.origin[name]
        m = _Q_PROJ.match(name)
        if m is not None:
            if t.shape[0] != 2 * H * d:
                raise CheckpointError(f"{where}: tensor {name!r} has {t.shape[0]} rows, expected {2 * H * d} "
                                      f"(query and gate rows of {H} heads x {d})")
            both = t.reshape(H, 2, d, *t.shape[1:])
            out.tensors[name], out.origin[name] = both[:, 0].reshape(H * d, *t.shape[1:]), where
            gate = name.replace(".q_proj.", ".g_proj.")
            out.tensors[gate], out.origin[gate] = both[:, 1].reshape(H * d, *t.shape[1:]), where
            continue
        if _NORMS.search(name):
            t = 1.0 + t.float()
        out.tensors[name], out.origin[name] = t, where
    return cfg, out


def native_name(name: str) -> str | None:
    """The native name of a Hugging Face tensor name; None for a name outside NAME_MAP."""
    return _translate(name, _TO_NATIVE)


def file_name(native: str) -> str:
    """The name a native parameter has in a Hugging Face checkpoint."""
    return _translate(native, _TO_HF) or native


def map_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, str]:
    """native name -> name in file. Unknown names map to themselves (then reported)."""
    out: dict[str, str] = {}
    for name in tensors:
        if _IGNORED.search(name):
            continue
        native = native_name(name)
        if native == "lm_head.weight" and cfg.tie_embeddings:
            continue  # some tied checkpoints store the head anyway; the embedding is used
        out[native or name] = name
    return out
