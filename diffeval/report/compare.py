"""`diffeval compare`: runs of one probe side by side, metric by metric, with each value's
difference to the first run's model and whether it is significant; `report.md` and a
self-contained `report.html` (figures inlined, provenance and commands of every run).

Significance: a two-proportion z-test (two-sided, 5%) for proportions with counts (a value in
[0, 1] with n and an interval); otherwise non-overlap of the two 95% intervals; nothing is
claimed for metrics without intervals."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Optional

from diffeval.errors import UsageError
from diffeval.report.runs import RunFolder, read_run
from diffeval.results import write_atomic


Run = RunFolder


def load_runs(paths: list[str]) -> list[Run]:
    if not paths:
        raise UsageError("give at least one run folder")
    runs = [read_run(Path(p)) for p in paths]
    probes = {r.probe for r in runs}
    if len(probes) > 1:
        raise UsageError(f"runs of different probes cannot be aligned: {', '.join(sorted(probes))}")
    return runs


def columns(runs: list[Run]) -> list[tuple[int, str]]:
    """(run index, model label) in order: the first is the baseline."""
    return [(i, m["label"]) for i, r in enumerate(runs) for m in r.results["models"]]


def significant(a: dict, b: dict) -> Optional[bool]:
    """Whether two metrics differ at 5%: a two-proportion z-test for proportions with
    counts, else interval overlap; None when neither applies."""
    if a.get("value") is None or b.get("value") is None:
        return None
    if "ci95" in a and "ci95" in b and 0 <= a["value"] <= 1 and 0 <= b["value"] <= 1 and a["n"] and b["n"] \
            and a["ci95"][0] >= 0 and a["ci95"][1] <= 1 and b["ci95"][0] >= 0 and b["ci95"][1] <= 1:
        p = (a["value"] * a["n"] + b["value"] * b["n"]) / (a["n"] + b["n"])
        se = math.sqrt(p * (1 - p) * (1 / a["n"] + 1 / b["n"]))
        return se > 0 and abs(a["value"] - b["value"]) / se > 1.959964
    if "ci95" in a and "ci95" in b:
        return a["ci95"][1] < b["ci95"][0] or b["ci95"][1] < a["ci95"][0]
    return None


def warnings(runs: list[Run]) -> list[str]:
    """What makes the runs not strictly comparable: other task parameters, other sample counts."""
    out = []
    base = runs[0].results
    for r in runs[1:]:
        res = r.results
        if res["task"]["params"] != base["task"]["params"] or res["task"]["probe_version"] != base["task"]["probe_version"]:
            diff = sorted(k for k in set(res["task"]["params"]) | set(base["task"]["params"])
                          if res["task"]["params"].get(k) != base["task"]["params"].get(k))
            out.append(f"{r.name}: task parameters differ from {runs[0].name} ({', '.join(diff) or 'probe version'})")
        n0 = {m: t["samples"] for m, t in base["timing"]["models"].items()}
        n1 = {m: t["samples"] for m, t in res["timing"]["models"].items()}
        if set(n0.values()) != set(n1.values()):
            out.append(f"{r.name}: sample counts {sorted(set(n1.values()))} differ from {runs[0].name}'s {sorted(set(n0.values()))}")
    return out


def table_rows(runs: list[Run], all_metrics: bool = False) -> tuple[list[tuple[int, str]], list[dict]]:
    """Columns and rows {"metric", "cells": [{"value", "delta", "significant"}]} ."""
    cols = columns(runs)
    names: list[str] = []
    for i, label in cols:
        for name in runs[i].results["metrics"][label]:
            if name not in names and (all_metrics or "@" not in name):
                names.append(name)
    base_i, base_label = cols[0]
    rows = []
    for name in names:
        base = runs[base_i].results["metrics"][base_label].get(name)
        cells = []
        for k, (i, label) in enumerate(cols):
            met = runs[i].results["metrics"][label].get(name)
            if met is None or met.get("value") is None:
                cells.append(None)
                continue
            delta = None if k == 0 or base is None or base.get("value") is None else met["value"] - base["value"]
            sig = None if delta is None else significant(base, met)
            cells.append({"value": met["value"], "delta": delta, "significant": sig, "ci95": met.get("ci95"),
                          "higher_is_better": met.get("higher_is_better")})
        rows.append({"metric": name, "cells": cells})
    return cols, rows


def _fmt(c: Optional[dict], with_delta: bool = True) -> str:
    if c is None:
        return "-"
    text = f"{c['value']:.4g}"
    if with_delta and c["delta"] is not None:
        text += f" ({c['delta']:+.3g}{'*' if c['significant'] else ''})"
    return text


def _col_name(runs: list[Run], col: tuple[int, str]) -> str:
    i, label = col
    return label if len(runs) == 1 or len({r.name for r in runs}) == 1 else f"{runs[i].name}/{label}"


def markdown(runs: list[Run], all_metrics: bool = False) -> str:
    cols, rows = table_rows(runs, all_metrics)
    res = runs[0].results
    lines = [f"# diffeval compare: {res['probe']}", "",
             f"Baseline: `{_col_name(runs, cols[0])}`. In brackets: the difference to the baseline; "
             "`*` marks a significant one (5%: two-proportion z-test for proportions with counts, "
             "else non-overlapping 95% intervals).", ""]
    for w in warnings(runs):
        lines.append(f"> **Not strictly comparable:** {w}")
    lines += ["", "| metric | " + " | ".join(_col_name(runs, c) for c in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for row in rows:
        lines.append(f"| {row['metric']} | " + " | ".join(_fmt(c) for c in row["cells"]) + " |")
    lines += ["", "## Runs", ""]
    for r in runs:
        p, t = r.results["provenance"], r.results["task"]
        lines += [f"### {r.name}", "", f"- task: {t['name']} v{t['version']} (probe v{t['probe_version']})"
                  + (f", preset {t['preset']} sha256 {t['preset_sha256'][:12]}" if t.get("preset") else ""),
                  f"- command: `{' '.join(p['argv'])}`",
                  f"- diffeval {p['diffeval_version']} (git {str(p['git_sha'])[:12]}), torch {p['torch']}, "
                  f"device {p['device']} ({p['device_name']}), {p['utc']}",
                  "- models: " + "; ".join(f"{m['label']} = {m['spec']} ({m['family']}, sha256 {m['sha256'][:12]})"
                                           for m in r.results["models"]), ""]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.sig{font-weight:bold;color:#b2182b}.warn{background:#fff3cd;padding:.5em}
figure{margin:1em 0}figure img{max-width:min(100%,760px);border:1px solid #eee}code{background:#f4f4f4;padding:1px 4px}"""
_SCRIPT = """window.addEventListener('load',function(){var im=document.querySelectorAll('img');var ok=0;
im.forEach(function(i){if(i.complete&&i.naturalWidth>0){ok++;}});
document.body.setAttribute('data-figures-loaded',ok+'/'+im.length);});"""


def html_report(runs: list[Run], all_metrics: bool = False) -> str:
    cols, rows = table_rows(runs, all_metrics)
    res = runs[0].results
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>diffeval compare: {e(res['probe'])}</title><style>{_CSS}</style>",
             f"<script>{_SCRIPT}</script></head><body>",
             f"<h1>diffeval compare: {e(res['probe'])}</h1>",
             f"<p>Baseline: <code>{e(_col_name(runs, cols[0]))}</code>. In brackets: the difference to the baseline; "
             "bold red marks a significant one (5%).</p>"]
    parts += [f"<p class='warn'>Not strictly comparable: {e(w)}</p>" for w in warnings(runs)]
    parts.append("<table><tr><th>metric</th>" + "".join(f"<th>{e(_col_name(runs, c))}</th>" for c in cols) + "</tr>")
    for row in rows:
        cells = "".join(f"<td class='{'sig' if c and c['significant'] else ''}'>{e(_fmt(c))}</td>" for c in row["cells"])
        parts.append(f"<tr><td>{e(row['metric'])}</td>{cells}</tr>")
    parts.append("</table><h2>Figures</h2>")
    for r in runs:
        for fig in r.results["artifacts"]["figures"]:
            path = r.file(fig)  # confined to the run folder when the run was read
            if fig.endswith(".png") and path.is_file() and not path.is_symlink():
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt='{e(fig)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{e(r.name)}: {e(fig)}</figcaption></figure>")
    parts.append("<h2>Runs</h2>")
    for r in runs:
        p = r.results["provenance"]
        models = "".join(f"<li>{e(m['label'])} = <code>{e(m['spec'])}</code> ({e(m['family'])}, sha256 "
                         f"{e(m['sha256'][:12])})</li>" for m in r.results["models"])
        parts.append(f"<h3>{e(r.name)}</h3><p>command: <code>{e(' '.join(p['argv']))}</code><br>diffeval "
                     f"{e(str(p['diffeval_version']))}, torch {e(str(p['torch']))}, device {e(str(p['device']))}, "
                     f"{e(str(p['utc']))}</p><ul>{models}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_table(runs: list[Run], all_metrics: bool = False, width: Optional[int] = None) -> None:
    """The comparison table on stdout, `width` columns wide (None: the terminal's)."""
    from rich.console import Console
    from rich.table import Table

    cols, rows = table_rows(runs, all_metrics)
    table = Table(title=f"{runs[0].results['probe']}: difference to {_col_name(runs, cols[0])} (* significant at 5%)")
    table.add_column("metric", no_wrap=True)
    for c in cols:
        table.add_column(_col_name(runs, c), justify="right")
    for row in rows:
        table.add_row(row["metric"], *[_fmt(c) for c in row["cells"]])
    console = Console(width=width)
    console.print(table)
    for w in warnings(runs):
        console.print(f"[yellow]not strictly comparable:[/] {w}")


def write_reports(runs: list[Run], out: Path, all_metrics: bool = False) -> dict[str, Any]:
    write_atomic(out / "report.md", markdown(runs, all_metrics))
    write_atomic(out / "report.html", html_report(runs, all_metrics))
    return {"markdown": out / "report.md", "html": out / "report.html"}
