"""`diffeval attn-map`: where attention goes (answer span vs noise), per depth, layer, head."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"lengths": "--len", "depths": "--depths", "samples": "--samples", "n_needles": "--needles",
         "layers": "--layers", "heads": "--heads", "query": "--query", "sink": "--sink", "haystack": "--haystack",
         "needle_kind": "--needle-kind", "seed": "--seed", "arrays": "--arrays"}


@o.with_run_options("device", "dtype", "backend", "prompt_format",
                    "save_prompts", "allow_beyond", "allow_pickle", "weights_format")
def attn_map(
    ckpt: list[str] = o.CKPT,
    length: Optional[str] = o.LENGTHS,
    depths: str = o.DEPTHS,
    samples: int = typer.Option(2, "--samples", help="Prompts per (length, depth)."),
    needles: int = typer.Option(1, "--needles", help="Needles in the context (the first is asked)."),
    layers: str = typer.Option("all", "--layers", help="all, or indices like 0,5,-1."),
    heads: str = typer.Option("all", "--heads", help="all, or indices like 0,3 (DIFF: differential heads)."),
    query: str = typer.Option("answer", "--query", help="Query tokens: question, answer (the answer prefix) or last."),
    sink: int = typer.Option(4, "--sink", help="Leading tokens counted as the attention sink."),
    haystack: str = o.HAYSTACK,
    needle_kind: str = o.NEEDLE_KIND,
    seed: int = o.SEED,
    log_scale: bool = typer.Option(True, "--log-scale/--linear-scale", help="Log y axis in the profile figure."),
    arrays: str = typer.Option("all", "--arrays", help="all: an .npz of captured rows per prompt; figure: only the prompt drawn in the figures."),
    out: Optional[str] = o.OUT,
    opts=None,
) -> None:
    """Where attention goes: mass on the answer, needles, sink, question and noise, per depth,
    layer and head (DIFF: differential, map 1, map 2); arrays and figures."""
    params = dict(lengths=length if length is not None else o.default_lengths(ckpt, "attn-map"), depths=depths,
                  samples=samples, n_needles=needles, layers=layers, heads=heads, query=query, sink=sink,
                  haystack=haystack, needle_kind=needle_kind, seed=seed, arrays=arrays, log_scale=log_scale)
    o.run_command("attn-map", params, ckpt, out, opts, FLAGS)
