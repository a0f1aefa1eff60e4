"""`diffeval figures`: the DIFF paper's figure and table forms, drawn from saved run folders
by a recipe (YAML, in plots/):

    name: paper
    figures:
      - {kind: needle_heatmap}
      - {kind: nll_curve, name: fig3_nll, models: [llama-7b, diff-7b]}
      - {kind: needle_table}

Runs of one probe found under `--results` are merged (models side by side; a label that two
runs share gets the run's folder name in front). Figures are written as PNG, PDF and SVG in
the project style; tables as LaTeX (booktabs) and markdown."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Callable, Optional

from diffeval.errors import UsageError
from diffeval.report.runs import RunFolder, read_run

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
        samples += [{**s, "model": rename[s["model"]]} for s in r.samples() if s["model"] in keep]
    if not base["models"]:
        raise UsageError(f"none of the models {models} is in the selected runs")
    return base, samples


# --- tables -----------------------------------------------------------------------------------


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def latex(header: list[str], rows: list[list[str]], caption: str) -> str:
    cols = "l" * sum(1 for _ in header[:1]) + "r" * (len(header) - 1)
    lines = ["% " + caption, "\\begin{tabular}{" + cols + "}", "\\toprule",
             " & ".join(_tex_escape(h) for h in header) + r" \\", "\\midrule"]
    lines += [" & ".join(_tex_escape(c) for c in row) + r" \\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def markdown(header: list[str], rows: list[list[str]], caption: str) -> str:
    lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def needle_table(runs: list[RunFolder], models) -> tuple[list[str], list[list[str]], str]:
    """The multi-needle table: a row per run (N needles, R asked), accuracy per model."""
    merged = [merge([r], models)[0] for r in runs]
    labels = list(dict.fromkeys(m["label"] for res in merged for m in res["models"]))
    header = ["N", "R", "length", *labels]
    rows = []
    for res in sorted(merged, key=lambda x: (x["task"]["params"]["n_needles"], x["task"]["params"]["n_queries"])):
        p = res["task"]["params"]
        row = [str(p["n_needles"]), str(p["n_queries"]), ",".join(str(n) for n in p["lengths"])]
        for label in labels:
            m = res["metrics"].get(label, {}).get("accuracy")
            row.append("-" if m is None else f"{m['value']:.2f}")
        rows.append(row)
    return header, rows, "Multi-needle retrieval accuracy (N needles in the context, R asked)"


def attn_table(runs, models):
    from diffeval.probes.attn_map import by_depth

    res, _ = merge(runs, models)
    views = {m["label"]: by_depth(res["metrics"][m["label"]]) for m in res["models"]}
    depths = sorted({d for v in views.values() for d in v}, key=float)
    header = ["model", "span", *[f"{d}%" for d in depths]]
    rows = []
    for m in res["models"]:
        for cat, name in (("answer", "answer span"), ("noise", "noise context")):
            rows.append([f"{m['label']} ({m['family']})", name, *[f"{views[m['label']][d][cat]:.3f}" for d in depths]])
    return header, rows, "Attention allocation by needle depth (DIFF: signed differential rows A1 - lambda A2)"


def outliers_table(runs, models):
    from diffeval.probes.activations import RANKS

    res, _ = merge(runs, models)
    header = ["model", "activation", *[f"top-{r}" for r in RANKS], "median"]
    rows = []
    for c in res["cells"]:
        if c["kind"] == "activation":
            rows.append([c["model"], c["activation"].replace("_", " "),
                         *[f"{c.get(f'top{r}', float('nan')):.3g}" for r in RANKS], f"{c['median']:.3g}"])
    return header, rows, "Largest and median |activation| (top-k, median)"


def halluc_table(runs, models):
    from diffeval.probes.halluc import OUTCOMES

    res, _ = merge(runs, models)
    labels = [m["label"] for m in res["models"]]
    by = {(c["model"], c["kind"]): c for c in res["cells"]}
    kinds = list(dict.fromkeys(c["kind"] for c in res["cells"] if c["kind"] != "summary"))
    rows = [[k, o, *[f"{by[(m, k)][f'{o}_rate']:.3f}" if (m, k) in by else "-" for m in labels]]
            for k in kinds for o in OUTCOMES]
    return ["kind", "outcome", *labels], rows, "Answer outcomes per question kind (shares)"


def nll_table(runs, models):
    res, _ = merge(runs, models)
    labels = [m["label"] for m in res["models"]]
    cells = {(c["model"], c["position"]): c for c in res["cells"] if c["kind"] == "bucket"}
    ends = sorted({c["position"] for c in res["cells"] if c["kind"] == "bucket"})
    rows = []
    for e in ends:
        start = next(cells[(m, e)]["start"] for m in labels if (m, e) in cells)
        rows.append([f"{start}-{e}", *[f"{cells[(m, e)]['mean']:.3f}" if (m, e) in cells else "-" for m in labels]])
    return ["positions", *labels], rows, "Mean NLL per position bucket (nats)"


# --- figures ----------------------------------------------------------------------------------


def _needle_heatmap(runs, models):
    from diffeval.plotting.needle import needle_figure

    res, _ = merge(runs, models)
    return needle_figure(res["cells"], [m["label"] for m in res["models"]])


def _attn_allocation(runs, models):
    from diffeval.plotting.attention import allocation_figure
    from diffeval.probes.attn_map import by_depth

    res, _ = merge(runs, models)
    view = {label: {"by_depth": by_depth(m)} for label, m in res["metrics"].items()}
    return allocation_figure(view, [m["label"] for m in res["models"]], {m["label"]: m["family"] for m in res["models"]})


def _attn_layer_head(runs, models):
    from diffeval.plotting.attention import layer_head_figure

    res, _ = merge(runs, models)
    return layer_head_figure(res["cells"], [m["label"] for m in res["models"]])


def _quant_curve(runs, models):
    from diffeval.plotting.outliers import quant_figure

    res, _ = merge(runs, models)
    return quant_figure(res["cells"], [m["label"] for m in res["models"]], res["task"]["params"]["metric"])


def _nll_curve(runs, models):
    from diffeval.plotting.nll import nll_curve_figure

    return nll_curve_figure(*merge(runs, models))


def _icl(kind: str):
    def draw(runs, models):
        from diffeval.plotting import icl

        res, _ = merge(runs, models)
        return icl.icl_curve_figure(res) if kind == "curve" else icl.icl_order_figure(res)
    return draw


def _halluc_bars(runs, models):
    from diffeval.plotting.halluc import outcome_figure

    return outcome_figure(merge(runs, models)[0])


# kind -> (probe, "figure" | "table", function(runs, models))
KINDS: dict[str, tuple[str, str, Callable]] = {
    "needle_heatmap": ("needle", "figure", _needle_heatmap),
    "needle_table": ("needle", "table", needle_table),
    "icl_curve": ("icl", "figure", _icl("curve")),
    "icl_order": ("icl", "figure", _icl("order")),
    "nll_curve": ("nll", "figure", _nll_curve),
    "nll_table": ("nll", "table", nll_table),
    "attn_allocation": ("attn-map", "figure", _attn_allocation),
    "attn_layer_head": ("attn-map", "figure", _attn_layer_head),
    "attn_table": ("attn-map", "table", attn_table),
    "outliers_table": ("outliers", "table", outliers_table),
    "quant_curve": ("outliers", "figure", _quant_curve),
    "halluc_bars": ("halluc", "figure", _halluc_bars),
    "halluc_table": ("halluc", "table", halluc_table),
}


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
    for i, e in enumerate(entries):
        bad = sorted(set(e) - ENTRY_KEYS)
        if bad:
            raise UsageError(f"{path}: figures[{i}]: unknown key {bad[0]!r}; valid: {', '.join(sorted(ENTRY_KEYS))}")
        if e.get("kind") not in KINDS:
            raise UsageError(f"{path}: figures[{i}]: kind {e.get('kind')!r}: {did_you_mean(str(e.get('kind')), KINDS)}")
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
    for e in recipe["figures"]:
        probe, form, fn = KINDS[e["kind"]]
        name = str(e.get("name", e["kind"]))
        mine = [r for r in runs if r.probe == probe and fnmatch.fnmatch(r.path.name, e.get("runs", "*"))]
        if not mine:
            skipped.append(f"{name}: no {probe} runs among the results")
            continue
        models = e.get("models")
        if form == "figure":
            with styled(labels):
                fig = fn(mine, models)
                if e.get("title"):
                    fig.suptitle(str(e["title"]))
                written += save_figure(fig, out / name, formats=("png", "pdf", "svg"))
        else:
            header, rows, caption = fn(mine, models)
            caption = str(e.get("title", caption))
            write_atomic(out / f"{name}.tex", latex(header, rows, caption))
            write_atomic(out / f"{name}.md", markdown(header, rows, caption))
            written += [out / f"{name}.tex", out / f"{name}.md"]
    return written, skipped


def describe(recipe: dict) -> list[dict[str, Any]]:
    return [{"kind": e["kind"], "probe": KINDS[e["kind"]][0], "form": KINDS[e["kind"]][1]} for e in recipe["figures"]]
