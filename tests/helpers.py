"""Small builders shared by tests."""

from __future__ import annotations

import torch

from diffeval.models import Decoder, ModelConfig


def tiny_config(family: str = "transformer", **overrides) -> ModelConfig:
    base = dict(family=family, vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=4096)
    if family == "sha":
        base.update(n_heads=1, d_head=32)
    if family == "diff":
        base.update(n_heads=2)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(family: str = "transformer", seed: int = 0, dtype=torch.float32, backend: str = "sdpa", **overrides) -> Decoder:
    model = Decoder(tiny_config(family, **overrides), backend=backend)
    model.init_weights(seed)
    with torch.no_grad():  # larger weights than a fresh init so attention is far from uniform
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
    return model.to(dtype).eval()
