"""`diffeval needle`: needle / multi-needle retrieval over a depth x length grid."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"lengths": "--len", "depths": "--depths", "n_needles": "--needles", "n_queries": "--queries",
         "samples": "--samples", "haystack": "--haystack", "needle_kind": "--needle-kind", "seed": "--seed"}


@o.with_run_options(*o.RUN_PARAMS)
def needle(
    ckpt: list[str] = o.CKPT,
    length: Optional[str] = o.LENGTHS,
    depths: str = o.DEPTHS,
    needles: int = typer.Option(1, "--needles", help="Needles in the context (N)."),
    queries: int = typer.Option(1, "--queries", help="Needles asked for (R <= N)."),
    samples: int = typer.Option(10, "--samples", help="Samples per (length, depth) cell."),
    haystack: str = o.HAYSTACK,
    needle_kind: str = o.NEEDLE_KIND,
    seed: int = o.SEED,
    out: Optional[str] = o.OUT,
    opts=None,
) -> None:
    """Needle / multi-needle retrieval over a depth x length grid; heatmap and results."""
    params = dict(lengths=length if length is not None else o.default_lengths(ckpt, "needle", grid=True), depths=depths,
                  n_needles=needles, n_queries=queries, samples=samples, haystack=haystack,
                  needle_kind=needle_kind, seed=seed)
    o.run_command("needle", params, ckpt, out, opts, FLAGS)
