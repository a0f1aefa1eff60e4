"""`diffeval outliers`: activation-outlier statistics (the DIFF paper's Table 5) and the
metric under attention-logit quantization (its Figure 8). Registered in cli.py with
`app.command("outliers")(outliers)`."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from diffeval.errors import UsageError

SHORT = {"attention_logits": "attn logits", "attention_logits_map1": " map 1",
         "attention_logits_map2": " map 2", "hidden_states": "hidden"}  # table rows, Table 5's names
CKPT_HELP = "Checkpoint (repeatable): zoo:NAME, a native or a Hugging Face directory. Default: the zoo models."


def outliers(
    ckpt: list[str] = typer.Option([], "--ckpt", help=CKPT_HELP),
    data: str = typer.Option("synthetic", "--data", help="synthetic (generated essay prose), or a .txt file / folder of them."),
    tokens: str = typer.Option("32k", "--tokens", help="Tokens of text to stream through each model (k = 1024), or all."),
    length: str = typer.Option("2k", "--len", help="Sequence length in tokens (also the needle prompt length)."),
    quant_bits: str = typer.Option("16,8,6,4", "--quant-bits", help="Attention-logit bit widths; 16 = unquantized; none to skip."),
    metric: str = typer.Option("nll", "--metric", help="nll (mean token NLL over the text) or needle (accuracy)."),
    samples: int = typer.Option(4, "--samples", help="Needle metric: samples per depth."),
    depths: str = typer.Option("0,25,50,75,100", "--depths", help="Needle metric: depths in %."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/outliers-<UTC time>)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    backend: str = typer.Option("auto", "--backend", help="auto, reference or sdpa (statistics and quantization always use reference)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Needle metric: prompts decoded together."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Needle metric: default enough for the answer."),
    allow_beyond: bool = typer.Option(False, "--allow-beyond-max-positions", help="Allow --len beyond the model's position limit."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .bin/.pt weights (weights_only=True)."),
) -> None:
    """Activation outliers: top-k / median of |attention logits| and |hidden states|, and the
    metric with attention logits quantized to fewer bits."""
    from pathlib import Path

    from diffeval.cli import _run_options
    from diffeval.outliers_run import run_outliers
    from diffeval.probes.needle import parse_depths, parse_lengths
    from diffeval.probes.outliers import OutliersConfig, parse_bits, parse_tokens
    from diffeval.results import default_out

    lengths = parse_lengths(length)
    if len(lengths) != 1:
        raise UsageError(f"--len {length!r}: give one sequence length, not {len(lengths)}")
    if metric not in ("nll", "needle"):
        raise UsageError(f"--metric {metric!r}: choose nll or needle")
    if samples < 1:
        raise UsageError(f"--samples ({samples}) must be >= 1")
    if seed < 0:
        raise UsageError(f"--seed ({seed}) must be >= 0")
    cfg = OutliersConfig(n_tokens=parse_tokens(tokens), seq_len=lengths[0], bits=parse_bits(quant_bits),
                         metric=metric, data=data, needle_samples=samples, depths=tuple(parse_depths(depths)),
                         seed=seed)
    opts = _run_options(device, dtype, backend, batch_size, max_new_tokens, allow_beyond, allow_pickle)
    out_dir = Path(out) if out else default_out("outliers")
    results = run_outliers(cfg, list(ckpt), out_dir, opts)
    render_outliers_tables(results)
    print(f"results: {out_dir / 'results.json'}", file=sys.stderr)


def render_outliers_tables(results: dict) -> None:
    """Table 5 (one row per model and activation type), then the metric per bit width."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from diffeval.probes.outliers import RANKS

    console = Console()
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"Activation outliers: |x| over {_tokens_text(results)} per model")
    table.add_column("model", no_wrap=True)
    table.add_column("activation", no_wrap=True)
    for r in RANKS:
        table.add_column(f"top-{r}", justify="right")
    table.add_column("median", justify="right")
    for m in results["models"]:
        label = m["label"]
        for i, (name, row) in enumerate(results["metrics"][label]["activations"].items()):
            sub = name.endswith(("_map1", "_map2"))
            table.add_row(label if i == 0 else "", SHORT.get(name, name),
                          *[_num(row.get(f"top{r}")) for r in RANKS], _num(row["median"]),
                          style="dim" if sub else None)
        table.add_section()
    console.print(table)
    bits = sorted({c["bits"] for c in results["cells"] if c["kind"] == "quant"}, reverse=True)
    if not bits:
        return
    metric = results["task"]["params"]["metric"]
    quant = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"{'Mean token NLL' if metric == 'nll' else 'Needle accuracy'} vs attention-logit bits")
    quant.add_column("model")
    for b in bits:
        quant.add_column(f"{b} bits" + (" (float)" if b == 16 else ""), justify="right")
    for m in results["models"]:
        by = results["metrics"][m["label"]]["quantization"]["by_bits"]
        quant.add_row(m["label"], *[_num(by[str(b)]["value"], 3 if metric == "needle" else 4) for b in bits])
    console.print(quant)


def _num(v, digits: Optional[int] = None) -> str:
    """Fixed digits when given; else one decimal from 10 up (as Table 5), 3 significant below."""
    if v is None:
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    return f"{v:.1f}" if abs(v) >= 9.95 else f"{v:#.3g}"


def _tokens_text(results: dict) -> str:
    counts = sorted({results["metrics"][m["label"]]["n_tokens"] for m in results["models"]})
    return ", ".join(f"{n:,}" for n in counts) + " tokens"
