"""`diffeval train` (train a tiny model from a recipe) and `diffeval zoo` (list the shipped
reference models). Registered in cli.py with `app.command("train")(train)` and
`app.command("zoo")(zoo)`; heavy imports stay inside the functions."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from diffeval import terminal
from diffeval.errors import UsageError


def train(
    recipe: str = typer.Option(..., "--recipe", help="A shipped recipe by name (transformer-tiny, sha-tiny, diff-tiny: the zoo models'; gated-tiny, sinks-tiny) or a recipe YAML file."),
    out: str = typer.Option(..., "--out", help="Output directory: the checkpoint, train_state.pt, log.jsonl."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/train_state.pt when present."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after this many minutes (checkpoint kept; rerun to continue)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch CPU threads (default: the recipe's, usually 1)."),
) -> None:
    """Train a tiny reference model on the synthetic corpus (CPU), writing a native checkpoint
    with its tokenizer. Same recipe and seed, same loss curve."""
    import dataclasses
    from pathlib import Path

    from diffeval.catalog import resolve_training_recipe
    from diffeval.train.trainer import load_recipe
    from diffeval.train.trainer import train as run_train

    rec = load_recipe(resolve_training_recipe(recipe))
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads ({threads}) must be >= 1")
        rec = dataclasses.replace(rec, threads=threads)
    if max_minutes is not None and not max_minutes > 0:
        raise UsageError(f"--max-minutes ({max_minutes}) must be > 0")
    from diffeval.commands.options import interruptible

    with interruptible(Path(out)):
        summary = run_train(rec, Path(out), resume=resume, progress=True, max_minutes=max_minutes)
    state = "finished" if summary["finished"] else "stopped (rerun the same command to resume)"
    print(f"{rec.name}: {summary['steps']} steps, {summary['minutes']:.1f} min, final loss "
          f"{summary['final_loss']}, {state}; checkpoint: {out}", file=sys.stderr)


def zoo(ctx: typer.Context) -> None:
    """List the shipped reference models: family, parameters, trained length, scores."""
    from rich.table import Table

    from diffeval.checkpoints.zoo import zoo_card, zoo_models

    models = zoo_models()
    if not models:
        raise UsageError("no zoo models are installed in this package")
    table = Table(title="diffeval zoo: --ckpt zoo:NAME")
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    for col in ("params", "L x H", "len", "needle", "4/2"):
        table.add_column(col, justify="right", no_wrap=True)
    for name in models:
        card = zoo_card(name)
        scores = card.get("scores", {})

        def score(key: str) -> str:
            value = scores.get(key, {}).get("accuracy") if isinstance(scores.get(key), dict) else None
            return "-" if value is None else f"{value:.2f}"

        table.add_row(name, str(card.get("family", "?")), f"{card.get('n_params', 0) / 1e6:.2f}M",
                      f"{card.get('n_layers', '?')} x {card.get('n_heads', '?')}", str(card.get("trained_len", "?")),
                      score("needle_single"), score("needle_multi"))
    table.caption = ("len: trained context (tokens); needle: single-needle accuracy; 4/2: four needles, two "
                     "asked (diffeval needle at the trained length, 5 depths x 20 samples). "
                     "Model cards: diffeval/zoo/NAME/NAME.md")
    terminal.of(ctx).console().print(table)
