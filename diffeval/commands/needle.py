"""`diffeval needle`: needle / multi-needle retrieval over a depth x length grid."""

from __future__ import annotations

from typing import Optional

import typer

from diffeval.commands import options as o

FLAGS = {"lengths": "--len", "depths": "--depths", "n_needles": "--needles", "n_queries": "--queries",
         "samples": "--samples", "haystack": "--haystack", "needle_kind": "--needle-kind", "seed": "--seed"}


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
    device: str = o.DEVICE,
    dtype: str = o.DTYPE,
    backend: str = o.BACKEND,
    batch_size: int = o.BATCH,
    max_new_tokens: Optional[int] = o.MAX_NEW,
    prompt_format: str = o.PROMPT_FORMAT,
    decode: str = o.DECODE,
    save_prompts: bool = o.SAVE_PROMPTS,
    allow_beyond: bool = o.ALLOW_BEYOND,
    allow_pickle: bool = o.ALLOW_PICKLE,
) -> None:
    """Needle / multi-needle retrieval over a depth x length grid; heatmap and results."""
    opts = o.run_options(device, dtype, backend, batch_size, max_new_tokens, allow_beyond, allow_pickle,
                         prompt_format, decode, save_prompts)
    params = dict(lengths=length if length is not None else o.default_lengths(ckpt), depths=depths,
                  n_needles=needles, n_queries=queries, samples=samples, haystack=haystack,
                  needle_kind=needle_kind, seed=seed)
    o.run_command("needle", params, ckpt, out, opts, FLAGS)
