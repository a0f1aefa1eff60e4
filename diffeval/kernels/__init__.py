"""Attention backends. `resolve_backend` turns "auto" | a name into a backend object.

A backend provides `attend(q, k, v, scale=...)` and `diff_attend(q, k, v, lam, scale=...)`
(shapes in kernels/reference.py). `triton` (fused differential attention, kernels/
triton_diff.py) is picked by "auto" on CUDA when the triton package is installed."""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch

from diffeval.errors import ConfigError, did_you_mean

from .reference import ReferenceBackend
from .sdpa import SdpaBackend

def _triton_backend():
    from .triton_diff import TritonBackend  # imports triton: only when asked for

    return TritonBackend()


BACKENDS: dict[str, Callable[[], object]] = {
    "reference": ReferenceBackend,
    "sdpa": SdpaBackend,
    "triton": _triton_backend,
}


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_available(device: torch.device) -> bool:
    return device.type == "cuda" and _triton_importable()


def resolve_backend(name: str, device: torch.device | str = "cpu"):
    """Backend object for `name` ("auto" picks triton on CUDA when available, else sdpa)."""
    device = torch.device(device)
    if name == "auto":
        name = "triton" if _triton_available(device) else "sdpa"
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; " + did_you_mean(name, list(BACKENDS) + ["auto"]))
    if name == "triton":
        if not _triton_importable():
            raise ConfigError("backend 'triton' needs the triton package: pip install 'diffeval[cuda]'")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(f"backend 'triton' runs on CUDA devices, not {device.type} "
                              "(set TRITON_INTERPRET=1 to run it in Triton's interpreter)")
    return BACKENDS[name]()
