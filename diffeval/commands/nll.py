"""`diffeval nll`: cumulative average NLL by position over long documents."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"length": "--len", "data": "--data", "text_field": "--text-field", "docs": "--docs", "pack": "--pack",
         "positions": "--positions", "seed": "--seed"}


@o.with_run_options("device", "dtype", "backend", "allow_beyond", "allow_pickle", "weights_format")
def nll(
    ckpt: list[str] = o.CKPT,
    data: str = typer.Option("synthetic", "--data", help="synthetic (generated documents), a .txt file, a folder of .txt files (one document each), or a .jsonl file."),
    text_field: str = typer.Option("text", "--text-field", help="JSONL field holding each document's text."),
    length: Optional[str] = typer.Option(None, "--len", help="Tokens per sequence after BOS (4k, 64K, ...). Default: 4k, or less when a model's position limit is shorter."),
    docs: Optional[int] = typer.Option(None, "--docs", help="Sequences to evaluate (default: every document; synthetic: 8). Too few is an error."),
    pack: bool = typer.Option(False, "--pack", help="Join documents (EOS or a blank line between) instead of skipping ones shorter than --len."),
    positions: str = typer.Option("log", "--positions", help="Curve points: log (1, 2, 4, ..., len) or a list like 1k,4k,16k (the end is always added)."),
    seed: int = o.SEED,
    out: Optional[str] = o.OUT,
    opts=None,
) -> None:
    """Cumulative average NLL by position (DIFF paper 3.3): curve with 95% bands, per-bucket
    table, perplexity; past the trained length with --allow-beyond-max-positions."""
    if length is None:  # 4k, or the largest multiple of 1024 that fits with BOS
        length = o.default_lengths(ckpt, "nll", reserve=1)
    params = dict(length=length, data=data, text_field=text_field, docs=docs, pack=pack, positions=positions,
                  seed=seed)
    o.run_command("nll", params, ckpt, out, opts, FLAGS)
