"""`diffeval outliers`: activation-outlier statistics (the DIFF paper's Table 5) and the metric
under attention-logit quantization (its Figure 8)."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"n_tokens": "--tokens", "seq_len": "--len", "bits": "--quant-bits", "metric": "--metric", "data": "--data",
         "needle_samples": "--samples", "depths": "--depths", "seed": "--seed", "lengths": "--len"}


@o.with_run_options(*o.RUN_PARAMS)
def outliers(
    ckpt: list[str] = o.CKPT,
    data: str = typer.Option("synthetic", "--data", help="synthetic (generated essay prose), or a .txt file / folder of them."),
    tokens: str = typer.Option("32k", "--tokens", help="Tokens of text to stream through each model (k = 1024), or all."),
    length: Optional[str] = typer.Option(None, "--len", help="Sequence length in tokens, BOS included (also the needle prompt length). Default: 2k, or the longest that fits every model's position limit."),
    quant_bits: str = typer.Option("16,8,6,4", "--quant-bits", help="Attention-logit bit widths; 16 = unquantized; none to skip."),
    metric: str = typer.Option("nll", "--metric", help="nll (mean token NLL over the text) or needle (accuracy)."),
    samples: int = typer.Option(4, "--samples", help="Needle metric: samples per depth."),
    depths: str = o.DEPTHS,
    seed: int = o.SEED,
    out: Optional[str] = o.OUT,
    opts=None,
) -> None:
    """Activation outliers: top-k / median of |attention logits| and |hidden states|, and the
    metric with attention logits quantized to fewer bits (statistics and quantization always
    run on the reference attention path, whatever --backend says)."""
    if length is None:
        length = o.default_lengths(ckpt, "outliers", cap=2048)
    params = dict(data=data, n_tokens=tokens, seq_len=length, bits=quant_bits, metric=metric,
                  needle_samples=samples, depths=depths, seed=seed)
    o.run_command("outliers", params, ckpt, out, opts, FLAGS)
