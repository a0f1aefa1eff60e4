"""`diffeval figures`: the DIFF paper's figure and table forms, drawn from saved run folders
by a recipe (YAML; shipped ones in diffeval/recipes/, by name):

    name: paper
    figures:
      - {kind: needle_heatmap}
      - {kind: nll_curve, name: fig3_nll, models: [llama-7b, diff-7b]}
      - {kind: needle_table}

A kind is a table or figure that a probe declares (its `views`); `kinds()` lists them. Runs
of one probe found under `--results` are merged (models side by side; a label that two runs
share gets the run's folder name in front). Figures are written as PNG, PDF and SVG in the
project style; tables as LaTeX (booktabs) and markdown, by the one table renderer."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from diffeval.errors import UsageError
from diffeval.probes.base import Figure, Table, TableData
from diffeval.report.runs import RunFolder, read_run
from diffeval.report.tables import latex, markdown

RECIPE_KEYS = {"name", "description", "figures"}
ENTRY_KEYS = {"kind", "name", "models", "runs", "title"}


def find_runs(roots: list[str]) -> list[RunFolder]:
    """Every run folder (a folder with results.json of schema 2) at or below the roots."""
    out = []
    for root in roots:
        path = Path(root)
        if not path.exists():
            raise UsageError(f"--results {root}: no such folder")
        files = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.rglob("results.json"))
        out += [r for r in (read_run(f.parent, strict=False) for f in files) if r is not None]
    if not out:
        raise UsageError(f"no run folders (results.json, schema 2) under {', '.join(roots)}")
    return out


def merge(runs: list[RunFolder], models: Optional[list[str]] = None) -> tuple[dict, list[dict]]:
    """One results dict (and samples) with every run's models side by side."""
    base = json.loads(json.dumps(runs[0].results))
    base["models"], base["cells"], base["metrics"], samples = [], [], {}, []
    seen = [m["label"] for r in runs for m in r.results["models"]]
    for r in runs:
        rename = {m["label"]: (m["label"] if seen.count(m["label"]) == 1 else f"{r.path.name}/{m['label']}")
                  for m in r.results["models"]}
        keep = {old for old, new in rename.items() if models is None or new in models or old in models}
        for m in r.results["models"]:
            if m["label"] in keep:
                base["models"].append({**m, "label": rename[m["label"]]})
                base["metrics"][rename[m["label"]]] = r.results["metrics"][m["label"]]
        base["cells"] += [{**c, "model": rename[c["model"]]} for c in r.results["cells"] if c["model"] in keep]
        samples += [{**s, "model": rename[s["model"]], "_run": str(r.path)} for s in r.samples() if s["model"] in keep]
    if not base["models"]:
        raise UsageError(f"none of the models {models} is in the selected runs")
    if len(runs) > 1:  # the task's parameters are the first run's: figures that title by them leave it
        base["merged_runs"] = [r.path.name for r in runs]
        base["left_out"] = _keep_shared(base, runs)
    return base, samples


def _cell_id(cell: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={cell.get(k)}" for k in keys if k != "model")


def _keep_shared(merged: dict, runs: list[RunFolder]) -> list[str]:
    """Keep the cells and metrics that every run has (runs over other depths or lengths share
    only some); -> what was left out, per run."""
    keys = merged["cell_keys"]
    cells = [{_cell_id(c, keys) for c in r.results["cells"]} for r in runs]
    names = [{n for m in r.results["metrics"].values() for n in m} for r in runs]
    shared_cells, shared_names = set.intersection(*cells), set.intersection(*names)
    merged["cells"] = [c for c in merged["cells"] if _cell_id(c, keys) in shared_cells]
    merged["metrics"] = {label: {n: v for n, v in m.items() if n in shared_names} for label, m in merged["metrics"].items()}
    notes = []
    for r, mine, have in zip(runs, cells, names):
        extra = sorted(mine - shared_cells) or sorted(n for n in have - shared_names if "@" in n)
        if extra:
            more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
            notes.append(f"{r.name}: {'; '.join(extra[:3])}{more} (not in every run)")
    return notes


# --- the probes' declared tables and figures ---------------------------------------------------


def kinds() -> dict[str, tuple[str, Any]]:
    """Every recipe kind: the tables and figures the probes declare -> (probe, declaration)."""
    from diffeval.probes import PROBES, get_probe

    return {view.kind: (name, view) for name in PROBES for view in get_probe(name).views}


def _table(view: Table, runs: list[RunFolder], models) -> tuple[TableData, list[str]]:
    if view.across_runs:
        return view.build([merge([r], models)[0] for r in runs]), []
    results = merge(runs, models)[0]
    return view.build(results), results.get("left_out", [])


def _figure(view: Figure, runs: list[RunFolder], models):
    results, samples = merge(runs, models)
    return view.figure(results, _Merged(runs[0].path, results, samples)), results.get("left_out", [])


class _Merged(RunFolder):
    """Merged runs as one run folder (figures that read arrays find the first run's)."""

    def __init__(self, path: Path, results: dict, samples: list[dict]) -> None:
        super().__init__(path, results)
        object.__setattr__(self, "_merged", samples)

    def samples(self) -> list[dict]:
        return self._merged


def load_recipe(path: str | Path) -> dict:
    from diffeval.errors import did_you_mean
    from diffeval.results import safe_name
    from diffeval.yamlio import read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "recipe")
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(RECIPE_KEYS))}")
    entries = raw.get("figures")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"{path}: figures must be a non-empty list of mappings")
    known = kinds()
    for i, e in enumerate(entries):
        bad = sorted(set(e) - ENTRY_KEYS)
        if bad:
            raise UsageError(f"{path}: figures[{i}]: unknown key {bad[0]!r}; valid: {', '.join(sorted(ENTRY_KEYS))}")
        if e.get("kind") not in known:
            raise UsageError(f"{path}: figures[{i}]: kind {e.get('kind')!r}: {did_you_mean(str(e.get('kind')), known)}")
        name = str(e.get("name", e["kind"]))
        if safe_name(name) != name:
            raise UsageError(f"{path}: figures[{i}]: name {name!r} must be a plain file name")
    return {"name": str(raw.get("name", path.stem)), "figures": entries}


def render(recipe: dict, runs: list[RunFolder], out: Path) -> tuple[list[Path], list[str]]:
    """Draw every entry that has runs; -> (written files, notes about entries skipped)."""
    from diffeval.plotting import save_figure
    from diffeval.plotting.style import styled
    from diffeval.results import write_atomic

    written: list[Path] = []
    skipped: list[str] = []
    # one colour per model across every figure of the report (labels as merged runs show them)
    labels = list(dict.fromkeys(m["label"] for probe in dict.fromkeys(r.probe for r in runs)
                                for m in merge([r for r in runs if r.probe == probe])[0]["models"]))
    known = kinds()
    for e in recipe["figures"]:
        probe, view = known[e["kind"]]
        name = str(e.get("name", e["kind"]))
        mine = [r for r in runs if r.probe == probe and fnmatch.fnmatch(r.path.name, e.get("runs", "*"))]
        if not mine:
            skipped.append(f"skipped {name}: no {probe} runs among the results")
            continue
        models = e.get("models")
        if isinstance(view, Figure):
            with styled(labels):
                fig, left_out = _figure(view, mine, models)
                skipped += [f"{name}: left out {note}" for note in left_out]
                if fig is None:
                    skipped.append(f"skipped {name}: nothing to draw in the {probe} runs")
                    continue
                if e.get("title"):
                    fig.suptitle(str(e["title"]))
                written += save_figure(fig, out / name, formats=("png", "pdf", "svg"))
        else:
            table, left_out = _table(view, mine, models)
            skipped += [f"{name}: left out {note}" for note in left_out]
            if e.get("title"):
                table = replace(table, title=str(e["title"]))
            write_atomic(out / f"{name}.tex", latex(table))
            write_atomic(out / f"{name}.md", markdown(table))
            written += [out / f"{name}.tex", out / f"{name}.md"]
    return written, skipped


def describe(recipe: dict) -> list[dict[str, Any]]:
    known = kinds()
    return [{"kind": e["kind"], "probe": known[e["kind"]][0],
             "form": "figure" if isinstance(known[e["kind"]][1], Figure) else "table"} for e in recipe["figures"]]
