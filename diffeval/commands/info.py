"""`diffeval info`: describe a checkpoint."""

from __future__ import annotations

import json
from typing import Optional

import typer

from diffeval import terminal
from diffeval.commands import options as o


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _heads(data: dict) -> str:
    if data["family"] == "diff":
        return f"{data['n_heads']} differential (2 maps each)"
    if data["family"] == "diff2":
        return f"{data['n_heads']} differential V2 ({2 * data['n_heads']} query heads, pairs share K/V)"
    return str(data["n_heads"])


def _variant_rows(family: str, cfg: dict) -> list[tuple[str, str]]:
    """Rows for the attention variants: gate, sinks, q/k norms, sliding windows."""
    rows = []
    if family == "gated":
        width = f"{cfg['n_heads']} x {cfg['d_head']}" if cfg["gate"] == "element" else f"{cfg['n_heads']}"
        rows.append(("gate", f"{cfg['gate']}-wise: out * sigmoid(g_proj x), g_proj {cfg['d_model']} -> {width}"))
    if family == "sinks":
        rows.append(("sinks", f"one learnable logit per head ({cfg['n_heads']}) in every softmax denominator"))
    if cfg.get("qk_norm"):
        rows.append(("q/k norm", f"per-head RMSNorm ({cfg['d_head']}) on queries and keys before RoPE"))
    if cfg.get("sliding_window"):
        types = cfg.get("layer_types")
        which = ("every layer" if types is None else
                 "layer(s) " + ",".join(str(i) for i, t in enumerate(types) if t == "sliding_attention"))
        rows.append(("sliding window", f"{cfg['sliding_window']} keys in {which}"))
    return rows


def _rope_text(rope: dict, d_head: int) -> str:
    """theta, scaling (yarn: original context and the factor on cos/sin) and partial rotary."""
    from diffeval.models.config import RopeConfig

    text = f"theta={rope['theta']:g}, {rope['type']}" + (f" x{rope['factor']:g}" if rope["type"] != "default" else "")
    cfg = RopeConfig(**rope)
    if cfg.type in ("llama3", "yarn"):
        text += f" (original {cfg.original_max_position_embeddings:,} positions"
        text += f", cos/sin x{cfg.attention_scaling():.4g})" if cfg.type == "yarn" else ")"
    if cfg.fraction != 1:
        text += f"; rotary on {cfg.rotary_dim(d_head)} of {d_head} dims per head"
    return text


def info(
    ctx: typer.Context,
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint: zoo:NAME, a native or a Hugging Face directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    allow_pickle: bool = o.ALLOW_PICKLE,
    allow_memory: bool = o.ALLOW_MEMORY,
    weights_format: Optional[str] = o.FORMAT,
) -> None:
    """Describe a checkpoint: family, sizes, RoPE, tokenizer, file sha256."""
    from diffeval.checkpoints import load

    loaded = load(ckpt, allow_pickle=allow_pickle, allow_beyond_memory=allow_memory, format=weights_format)
    data = loaded.info.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{ckpt}", show_header=False)
    rope_text = _rope_text(data["rope"], data["d_head"])
    rows = [
        ("family", data["family"]),
        ("format", f"{data['format']} ({data['architecture']})"),
        ("parameters", f"{data['n_params']:,} ({_human(data['n_params'])})"),
        ("layers", data["n_layers"]),
        ("heads", _heads(data)),
        ("kv heads", data["n_kv_heads"]),
        ("head size", f"{data['d_head']}" + (f" (value {data['d_value']})" if data["d_value"] != data["d_head"] else "")),
        ("d_model / d_ff", f"{data['d_model']} / {data['d_ff']}"),
        ("vocab", data["vocab_size"]),
        ("max positions", data["max_seq_len"]),
        ("RoPE", rope_text),
        ("tied head", data["tie_embeddings"]),
        ("dtype", data["dtype"]),
        ("tokenizer", data["tokenizer"]),
        ("chat template", "yes" if getattr(loaded.tokenizer, "chat_template", None) else "no"),
        ("files", ", ".join(data["files"])),
        ("sha256", data["sha256"]),
    ]
    cfg = data["config"]
    rows[5:5] = _variant_rows(data["family"], cfg)
    if data["family"] == "diff2":
        rows.insert(5, ("λ projection", f"lambda_proj {cfg['d_model']} -> {cfg['n_heads']} "
                                          f"({'with' if cfg['lambda_bias'] else 'no'} bias), "
                                          "sigmoid per token and head"))
    for k, v in rows:
        table.add_row(k, str(v))
    terminal.of(ctx).console().print(table)
