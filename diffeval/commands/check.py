"""`diffeval check`: the regression suite against stored reference scores."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from diffeval import terminal
from diffeval.commands import options as o
from diffeval.errors import UsageError
from diffeval.launch import is_main


@o.with_run_options("device", "dtype", "backend", "overwrite")
def check(
    ctx: typer.Context,
    suite_file: str = typer.Argument(..., metavar="SUITE.yaml", help="A suite of small tasks (see tasks/ci/)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference scores (default: the suite's `reference`)."),
    runs: Optional[str] = typer.Option(None, "--runs", help="Run folder per task (finished runs are read, not rerun). Default: a temporary folder."),
    ckpt: list[str] = typer.Option([], "--ckpt", help="Checkpoints instead of the suite's models (labels must match the reference)."),
    update: bool = typer.Option(False, "--update", help="Rewrite the reference with these results (on purpose)."),
    junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML here for CI systems."),
    summary: Optional[str] = typer.Option(None, "--summary", help="Write a markdown summary here (also appended to $GITHUB_STEP_SUMMARY when set)."),
    opts=None,
) -> None:
    """Run (or read) a suite and compare every metric with the reference: exit 0 when nothing
    regressed, 1 on a regression, 2 on bad input."""
    from diffeval.report.check import (
        compare,
        junit_xml,
        line,
        load_suite,
        markdown_summary,
        read_reference,
        reference_of,
        write_reference,
    )
    from diffeval.results import write_atomic

    suite = load_suite(suite_file, reference)
    if not update and not suite.reference.is_file():
        raise UsageError(f"reference {suite.reference}: no such file (create it with --update)")
    reference_scores = None if update else read_reference(suite.reference)  # refused before any run
    with tempfile.TemporaryDirectory() as tmp:
        results = run_suite(suite, Path(runs) if runs else Path(tmp), opts, list(ckpt) or None)
    if not is_main():  # under torchrun, rank 0 compares, prints and writes
        return
    if update:
        write_reference(suite.reference, reference_of(results, suite))
        print(f"reference written: {suite.reference}", file=sys.stderr)
        return
    rows = compare(reference_scores, results)
    console = terminal.of(ctx).console(highlight=False, soft_wrap=True)
    colour = {"regressed": "red", "missing": "red", "improved": "green", "moved": "yellow"}
    for r in rows:
        if r.status != "ok":
            console.print(f"[{colour[r.status]}]{r.status.upper():9}[/] {line(r)}")
    failed = [r for r in rows if r.status in ("regressed", "missing")]
    console.print(f"{suite.name}: {len(rows)} metrics compared: {len(failed)} regressed or missing, "
                  f"{sum(r.status in ('improved', 'moved') for r in rows)} improved or moved")
    if junit:
        write_atomic(Path(junit), junit_xml(suite, rows), follow=True)
    md = markdown_summary(suite, rows)
    if summary:
        write_atomic(Path(summary), md, follow=True)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
            f.write(md)
    if failed:
        raise typer.Exit(1)


def run_suite(suite, runs: Path, opts, ckpts: Optional[list[str]] = None) -> dict[str, dict]:
    """Results per task name of a loaded `Suite` (each task run into runs/<name>, resuming a
    finished run)."""
    from diffeval.probes import get_probe
    from diffeval.run import TaskInfo, run_probe  # imports torch: only when a suite runs

    out = {}
    for task in suite.tasks:
        probe = get_probe(task.probe)
        info = TaskInfo(task.name, 1, str(suite.path), suite.sha256)
        out[task.name] = run_probe(probe, probe.config(task.params), list(ckpts or suite.models), runs / task.name,
                                   opts, task=info)
    return out
