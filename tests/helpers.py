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


def rope64(T: int, d: int, theta: float = 10000.0):
    """Float64 rotary embedding for positions 0..T-1, rotate_half convention (pairs i and
    i + d/2), written from the definition: returns rot(t) for t (B, T, n, d)."""
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos()[:, None], torch.cat((ang, ang), -1).sin()[:, None]

    def rot(t):
        h = d // 2
        return t * cos + torch.cat((-t[..., h:], t[..., :h]), -1) * sin

    return rot


def saved_tiny_models(root) -> list[str]:
    """A transformer and a DIFF tiny model saved natively (byte tokenizer, 1024 positions)."""
    import diffeval

    out = []
    for family in ("transformer", "diff"):
        diffeval.save(tiny_model(family, vocab_size=259, max_seq_len=1024), root / family)
        out.append(str(root / family))
    return out


def run_cli(argv) -> int:
    """Exit code of a diffeval command run in-process (0 when it returns normally)."""
    from diffeval.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


def interrupt_after(monkeypatch, n: int) -> None:
    """Make the n-th finished sample raise KeyboardInterrupt right after it is saved (Ctrl-C)."""
    import diffeval.results as results_mod

    original = results_mod.ResumeCache.put
    calls = {"n": 0}

    def put_then_stop(self, key, value):
        original(self, key, value)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(results_mod.ResumeCache, "put", put_then_stop)
