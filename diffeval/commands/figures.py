"""`diffeval figures`: the paper's figure and table forms from saved runs, by a recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def figures(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="A shipped figure recipe by name (see diffeval tasks) or a recipe YAML file."),
    results: list[str] = typer.Option(..., "--results", help="Run folders, or folders holding them (repeatable)."),
    out: str = typer.Option("figures", "--out", help="Where the figures (PNG, PDF, SVG) and tables (LaTeX, markdown) go."),
) -> None:
    """Draw a recipe's figures and tables from saved runs (no model is loaded)."""
    from diffeval.catalog import resolve_recipe
    from diffeval.errors import UsageError
    from diffeval.report.figures import find_runs, load_recipe, render
    from diffeval.results import out_folder

    rec = load_recipe(resolve_recipe(recipe))
    runs = find_runs(list(results))
    written, skipped = render(rec, runs, out_folder(Path(out)))
    for note in skipped:
        print(note, file=sys.stderr)
    if not written:
        raise UsageError(f"recipe {recipe}: nothing to draw from {len(runs)} run(s): " + "; ".join(skipped))
    print(f"{len(written)} files in {out}/: " + ", ".join(sorted({p.stem for p in written})), file=sys.stderr)
