"""`diffeval tasks`: the task presets and figure recipes shipped inside the package."""

from __future__ import annotations

import typer

from diffeval import terminal


def tasks(ctx: typer.Context) -> None:
    """List the shipped task presets (for `diffeval run NAME`) and figure recipes (for
    `diffeval figures NAME`)."""
    from rich.table import Table

    from diffeval.catalog import listing

    shipped = listing()
    presets = Table(title="task presets: diffeval run NAME")
    for col in ("name", "probe", "description"):
        presets.add_column(col, no_wrap=col != "description")
    for p in shipped["presets"]:
        presets.add_row(p["name"], p["probe"], p["description"])
    recipes = Table(title="figure recipes: diffeval figures NAME --results DIR")
    for col in ("name", "figures", "description"):
        recipes.add_column(col, no_wrap=col != "description", justify="right" if col == "figures" else "left")
    for r in shipped["recipes"]:
        recipes.add_row(r["name"], str(r["figures"]), r["description"])
    console = terminal.of(ctx).console()
    console.print(presets)
    console.print(recipes)
