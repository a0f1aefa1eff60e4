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
