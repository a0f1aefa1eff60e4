"""`diffeval check`: a suite of small tasks (read and validated here; the command runs them)
and the comparison of every metric with stored reference scores.

Suite (YAML):

    name: diffeval-ci
    reference: reference.yaml            # relative to the suite file
    models: [zoo:transformer-tiny, zoo:diff-tiny]
    tasks:
      - {name: needle, probe: needle, params: {lengths: [512], depths: [0, 50, 100], samples: 4}}

Each task runs into `<runs>/<task name>/`; an existing finished run resumes, so a second
check reads its results. A metric regresses when it moves in its worse direction
(`higher_is_better`) by more than its tolerance: the reference's declared `tolerance`, else
the sampling noise of the difference, sqrt(h_ref^2 + h_now^2) with h the half-widths of the
two 95% intervals (Wilson for accuracies, t across sequences for NLL), else a small numeric
tolerance for metrics without an interval. Descriptive metrics (no direction) are reported
when they move, never failed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from diffeval.errors import UsageError, shown
from diffeval.hashing import file_sha256
from diffeval.probes import PROBES
from diffeval.results import safe_name, write_atomic
from diffeval.tasks import build_config
from diffeval.yamlio import read_yaml_mapping

SUITE_KEYS = {"name", "reference", "models", "tasks", "description"}
TASK_KEYS = {"name", "probe", "params"}
NUMERIC_REL, NUMERIC_ABS = 1e-3, 1e-4  # tolerance of a metric without an interval


@dataclass(frozen=True)
class SuiteTask:
    name: str
    probe: str
    params: dict


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    reference: Path
    models: tuple[str, ...]
    tasks: tuple[SuiteTask, ...]
    sha256: str


def load_suite(path: str | Path, reference: Optional[str] = None) -> Suite:
    path = Path(path)
    raw = read_yaml_mapping(path, "suite")
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(SUITE_KEYS))}")
    for key in ("name", "tasks"):
        if key not in raw:
            raise UsageError(f"{path}: missing key {key!r}")
    tasks = raw["tasks"]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise UsageError(f"{path}: tasks must be a non-empty list of mappings")
    out = []
    for i, t in enumerate(tasks):
        bad = sorted(set(t) - TASK_KEYS)
        if bad or "name" not in t or "probe" not in t:
            raise UsageError(f"{path}: tasks[{i}] needs name and probe (and params){f'; unknown key {bad[0]!r}' if bad else ''}")
        if not isinstance(t["probe"], str) or t["probe"] not in PROBES:
            raise UsageError(f"{path}: tasks[{i}]: unknown probe {t['probe']!r}; valid: {', '.join(PROBES)}")
        if safe_name(str(t["name"])) != str(t["name"]):
            raise UsageError(f"{path}: tasks[{i}]: name {t['name']!r} must be a plain file name")
        params = t.get("params") or {}
        build_config(t["probe"], params, f"{path}: tasks[{i}].params")  # validate now
        out.append(SuiteTask(str(t["name"]), t["probe"], dict(params)))
    if len({t.name for t in out}) != len(out):
        raise UsageError(f"{path}: two tasks have the same name")
    models = raw.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise UsageError(f"{path}: models must be a list of checkpoint specs")
    ref = Path(reference) if reference else path.parent / str(raw.get("reference", f"{path.stem}.reference.yaml"))
    return Suite(str(raw["name"]), path, ref, tuple(models), tuple(out), file_sha256(path))


def reference_of(results: dict[str, dict], suite: Suite) -> dict:
    """The reference file's content for these results: every metric with a direction."""
    ref: dict[str, Any] = {"suite": suite.name, "metrics": {}}
    for name, res in results.items():
        ref["metrics"][name] = {
            label: {m: {k: v for k, v in met.items() if k in ("value", "n", "ci95", "higher_is_better")}
                    for m, met in metrics.items() if met.get("higher_is_better") is not None and met["value"] is not None}
            for label, metrics in res["metrics"].items()}
    return ref


@dataclass
class Comparison:
    task: str
    model: str
    metric: str
    reference: Optional[float]
    value: Optional[float]
    tolerance: float
    status: str  # ok | regressed | improved | missing | moved
    higher_is_better: Optional[bool] = None

    @property
    def delta(self) -> Optional[float]:
        if self.reference is None or self.value is None:
            return None
        return self.value - self.reference


def _half(met: dict) -> Optional[float]:
    ci = met.get("ci95")
    return (ci[1] - ci[0]) / 2 if ci else None


def tolerance(ref: dict, now: Optional[dict]) -> float:
    if "tolerance" in ref:
        return float(ref["tolerance"])
    halves = [h for h in (_half(ref), _half(now or {})) if h is not None]
    if halves:
        return math.sqrt(sum(h * h for h in halves))
    return max(NUMERIC_ABS, NUMERIC_REL * abs(ref["value"]))


def compare(reference: dict, results: dict[str, dict]) -> list[Comparison]:
    out = []
    for task, models in reference.get("metrics", {}).items():
        for model, metrics in models.items():
            for name, ref in metrics.items():
                now = results.get(task, {}).get("metrics", {}).get(model, {}).get(name)
                tol = tolerance(ref, now)
                hib = ref.get("higher_is_better")
                if now is None or now.get("value") is None:
                    out.append(Comparison(task, model, name, ref["value"], None, tol, "missing", hib))
                    continue
                delta = now["value"] - ref["value"]
                worse = -delta if hib else delta
                status = "ok"
                if hib is None:
                    status = "moved" if abs(delta) > tol else "ok"
                elif worse > tol:
                    status = "regressed"
                elif -worse > tol:
                    status = "improved"
                out.append(Comparison(task, model, name, ref["value"], now["value"], tol, status, hib))
    return out


def read_reference(path: Path) -> dict:
    ref = read_yaml_mapping(path, "reference")
    if not isinstance(ref.get("metrics"), dict):
        raise UsageError(f"reference {path}: expected a 'metrics' mapping (task -> model -> metric)")
    for task, models in ref["metrics"].items():
        _mapping(models, f"reference {path}: {task}", "model -> metric")
        for model, metrics in (models or {}).items():
            _mapping(metrics, f"reference {path}: {task}.{model}", "metric name -> metric")
            for name, met in (metrics or {}).items():
                err = _metric_error(met)
                if err:
                    raise UsageError(f"reference {path}: {task}.{model}.{name}: {err}")
    return ref


def _mapping(value: Any, where: str, what: str) -> None:
    if value is not None and not isinstance(value, dict):
        raise UsageError(f"{where}: expected a mapping ({what}), got {shown(value)}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_error(met: Any) -> Optional[str]:
    """What is wrong with one reference metric, or None: a finite value; a finite tolerance
    >= 0; an interval of two finite numbers; a boolean (or null) direction."""
    if not isinstance(met, dict):
        return f"expected a mapping with a numeric 'value', got {shown(met)}"
    if not _number(met.get("value")):
        return f"value must be a finite number, got {shown(met.get('value'))}"
    if "tolerance" in met and not (_number(met["tolerance"]) and met["tolerance"] >= 0):
        return f"tolerance must be a finite number >= 0, got {shown(met['tolerance'])}"
    ci = met.get("ci95")
    if "ci95" in met and not (isinstance(ci, list) and len(ci) == 2 and all(map(_number, ci)) and ci[0] <= ci[1]):
        return f"ci95 must be two finite numbers [low, high], got {shown(ci)}"
    if met.get("higher_is_better") not in (True, False, None):
        return f"higher_is_better must be true, false or null, got {shown(met['higher_is_better'])}"
    if "n" in met and not (isinstance(met["n"], int) and not isinstance(met["n"], bool) and met["n"] >= 0):
        return f"n must be a count, got {shown(met['n'])}"
    return None


def write_reference(path: Path, ref: dict) -> None:
    import yaml

    header = ("# Reference scores for `diffeval check`; rewrite on purpose with --update.\n"
              "# A metric may declare `tolerance:` to override the sampling-noise tolerance.\n")
    write_atomic(path, header + yaml.safe_dump(ref, sort_keys=False, width=120), follow=True)


def junit_xml(suite: Suite, rows: list[Comparison]) -> str:
    from xml.sax.saxutils import quoteattr

    tasks = list(dict.fromkeys(r.task for r in rows))
    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuites name={quoteattr(suite.name)} tests="{len(rows)}" '
             f'failures="{sum(r.status in ("regressed", "missing") for r in rows)}">']
    for task in tasks:
        mine = [r for r in rows if r.task == task]
        fails = sum(r.status in ("regressed", "missing") for r in mine)
        parts.append(f'  <testsuite name={quoteattr(task)} tests="{len(mine)}" failures="{fails}">')
        for r in mine:
            name = quoteattr(f"{r.model}: {r.metric}")
            if r.status in ("regressed", "missing"):
                msg = quoteattr(line(r))
                parts.append(f'    <testcase classname={quoteattr(task)} name={name}><failure message={msg}/></testcase>')
            else:
                parts.append(f'    <testcase classname={quoteattr(task)} name={name}/>')
        parts.append("  </testsuite>")
    parts.append("</testsuites>")
    return "\n".join(parts) + "\n"


def line(r: Comparison) -> str:
    """What moved and by how much, in one line."""
    if r.value is None:
        return f"{r.task} / {r.model} / {r.metric}: missing (reference {r.reference:.4g})"
    return (f"{r.task} / {r.model} / {r.metric}: {r.reference:.4g} -> {r.value:.4g} "
            f"({r.delta:+.4g}, tolerance {r.tolerance:.3g}{'' if r.higher_is_better is None else ', higher is better' if r.higher_is_better else ', lower is better'})")


def markdown_summary(suite: Suite, rows: list[Comparison]) -> str:
    bad = [r for r in rows if r.status in ("regressed", "missing")]
    moved = [r for r in rows if r.status in ("improved", "moved")]
    lines = [f"## diffeval check: {suite.name}", "",
             f"**{'FAILED' if bad else 'passed'}**: {len(rows)} metrics compared, {len(bad)} regressed or missing, "
             f"{len(moved)} improved or moved.", ""]
    if bad or moved:
        lines += ["| task | model | metric | reference | now | change | tolerance | status |", "|---|---|---|---|---|---|---|---|"]
        for r in bad + moved:
            now = "-" if r.value is None else f"{r.value:.4g}"
            change = "-" if r.delta is None else f"{r.delta:+.4g}"
            lines.append(f"| {r.task} | {r.model} | {r.metric} | {r.reference:.4g} | {now} | {change} | {r.tolerance:.3g} | {r.status} |")
    return "\n".join(lines) + "\n"
