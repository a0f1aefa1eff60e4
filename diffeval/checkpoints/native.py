"""diffeval's native format: config.json (ModelConfig fields + "family") and model.safetensors
with the decoder's own parameter names, + tokenizer.json when the model has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffeval.errors import CheckpointError, ConfigError
from diffeval.models.config import ModelConfig

FORMAT_VERSION = 1


def config_from(raw: dict[str, Any], path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict({k: v for k, v in raw.items() if k != "format_version"}, str(path))
    except ConfigError as exc:
        msg = str(exc)
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def convert(weights, cfg: ModelConfig, raw: dict[str, Any]):
    """The native layout is the internal one: unchanged."""
    return cfg, weights


def map_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, str]:
    """native name -> name in file (identity)."""
    return {name: name for name in tensors}


def file_name(native: str) -> str:
    return native


def config_to(cfg: ModelConfig, tokenizer: str) -> dict[str, Any]:
    return {"format": "diffeval", "format_version": FORMAT_VERSION, **cfg.to_dict(), "tokenizer": tokenizer}
