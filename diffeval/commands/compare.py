"""`diffeval compare`: runs side by side; report.md and a self-contained report.html."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from diffeval import terminal


def compare(
    ctx: typer.Context,
    runs: list[str] = typer.Argument(..., metavar="RUN_DIR", help="Run folders of one probe; the first is the baseline."),
    out: Optional[str] = typer.Option(None, "--out", help="Where report.md and report.html go (default: report-<UTC time>)."),
    all_metrics: bool = typer.Option(False, "--all", help="Every metric, breakdowns (name@key=value) included."),
) -> None:
    """Align runs metric by metric with each value's difference to the first run and its
    significance; write report.md and report.html (figures inlined, provenance)."""
    from diffeval.report.compare import load_runs, render_table, write_reports
    from diffeval.results import out_folder, utc_stamp

    loaded = load_runs(list(runs))
    render_table(loaded, all_metrics, width=terminal.of(ctx).columns)
    paths = write_reports(loaded, out_folder(Path(out) if out else Path(f"report-{utc_stamp()}")), all_metrics)
    print(f"report: {paths['html']} and {paths['markdown'].name}", file=sys.stderr)
