"""Attention backends. `resolve_backend` turns "auto" | a name into a backend object.

A backend provides `attend(q, k, v, scale=...)` and `diff_attend(q, k, v, lam, scale=...)`
(shapes in kernels/reference.py). A fused `triton` backend registers itself here when it is
importable on a CUDA device."""

from __future__ import annotations

from typing import Callable

import torch

from diffeval.errors import ConfigError, did_you_mean

from .reference import ReferenceBackend
from .sdpa import SdpaBackend

BACKENDS: dict[str, Callable[[], object]] = {
    "reference": ReferenceBackend,
    "sdpa": SdpaBackend,
}


def _triton_available(device: torch.device) -> bool:
    if device.type != "cuda" or "triton" not in BACKENDS:
        return False
    return True


def resolve_backend(name: str, device: torch.device | str = "cpu"):
    """Backend object for `name` ("auto" picks triton on CUDA when available, else sdpa)."""
    device = torch.device(device)
    if name == "auto":
        name = "triton" if _triton_available(device) else "sdpa"
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; " + did_you_mean(name, list(BACKENDS) + ["auto"]))
    return BACKENDS[name]()
