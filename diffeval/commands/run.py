"""`diffeval run TASK`: a task preset, shipped (by name) or a file; each grid variant writes its
own folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from diffeval import terminal
from diffeval.commands import options as o


@o.with_run_options(*o.RUN_PARAMS)
def run_task(
    ctx: typer.Context,
    task_file: str = typer.Argument(..., metavar="TASK", help="A shipped task preset by name (see diffeval tasks) or a task YAML file."),
    ckpt: list[str] = o.CKPT,
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/<task>-<UTC time>). Rerun to resume."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Override samples per cell."),
    length: Optional[str] = typer.Option(None, "--len", help="Override lengths."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Override depths."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed."),
    data: Optional[str] = typer.Option(None, "--data", help="Override the data (probes that read text: nll, outliers)."),
    opts=None,
) -> None:
    """Run a task preset (a shipped name or a YAML file); each grid variant writes its own folder under --out."""
    from diffeval.catalog import resolve_task
    from diffeval.dist import is_main
    from diffeval.probes import get_probe
    from diffeval.report.tables import print_run_tables
    from diffeval.results import default_out
    from diffeval.run import TaskInfo, run_probe
    from diffeval.tasks import load_task

    task = load_task(resolve_task(task_file))
    overrides = {k: v for k, v in dict(samples=samples, lengths=length, depths=depths, seed=seed, data=data).items()
                 if v is not None}
    variants = task.variants(overrides)
    probe = get_probe(task.probe)
    field = probe.aliases.get("lengths", "lengths")
    names = {n for n, f in probe.aliases.items() if f == field}  # every name the preset may give it under
    chosen = []
    if length is None and not any(names & {**task.params, **v}.keys() for v in task.grid or ({},)):
        # the preset leaves the length to the probe's default: cap it to what every model fits
        default = variants[0][1].to_dict()[field]
        if default not in ([], (), None):  # empty: another field replaces the lengths (icl's shots)
            chosen.append(o.default_lengths(ckpt, task.name, cap=max(default) if isinstance(default, list) else default))
            overrides["lengths"] = chosen[0].value
            variants = task.variants(overrides)
    info = TaskInfo(task.name, task.version, str(Path(task.path).resolve()), task.sha256)
    root = Path(out) if out else default_out(task.name)
    for name, cfg in variants:
        target = root / name if name else root
        with o.flags(o.RUN_FLAGS), o.interruptible(root):
            results = run_probe(probe, cfg, list(ckpt), target, opts, task=info)
        if not is_main():  # under torchrun, rank 0 speaks for the job
            continue
        if name:
            print(f"\n{task.name}: variant {name}", file=sys.stderr)
        print_run_tables(probe, results, terminal.of(ctx).console())
        o.say_chosen(chosen)
        print(f"results: {target / 'results.json'}", file=sys.stderr)
