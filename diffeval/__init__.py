"""diffeval: long-context evaluation and attention analysis for Transformer, single-head-stack
and Differential Transformer checkpoints.

    import diffeval
    m = diffeval.load("zoo:diff-tiny")          # .model, .tokenizer, .info
    logits = m.model(ids)                       # (B, T) LongTensor -> (B, T, vocab)
"""

from __future__ import annotations

from diffeval.version import __version__

__all__ = ["__version__", "load", "save"]


def __getattr__(name: str):
    # Lazy: importing the package pulls in no torch until a model is needed.
    if name in ("load", "save"):
        from diffeval import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'diffeval' has no attribute {name!r}")
