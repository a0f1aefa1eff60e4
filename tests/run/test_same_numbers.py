"""Needle, attn-map and outliers give the same numbers on the probe pipeline as they gave
before it: each fixture in tests/fixtures/before_pipeline/ holds the command that was run
(on the shipped zoo models, fixed seeds) and its metrics and per-sample results. Decisions
are equal; floats agree to 1e-4 relative (the host's CPU kernels move float32 sums in their
last digits)."""

import json
import shlex
from pathlib import Path

import pytest

from helpers import run_cli

FIXTURES = Path(__file__).parent.parent / "fixtures" / "before_pipeline"


def _run(name: str, tmp_path: Path) -> tuple[dict, list[dict], dict]:
    before = json.loads((FIXTURES / f"{name}.json").read_text())
    argv = shlex.split(before["command"])[1:] + ["--out", str(tmp_path)]
    assert run_cli(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    return before, samples, results


def test_needle_predictions_scores_and_cells_unchanged(tmp_path):
    before, samples, results = _run("needle", tmp_path)
    now = {(s["model"], s["id"]): s for s in samples}
    assert len(now) == len(before["samples"])
    for old in before["samples"]:
        new = now[(old["model"], old["id"])]
        assert new["prediction"] == old["prediction"] and new["score"] == old["score"]
    assert [(c["model"], c["length"], c["depth"], c["mean"], c["ci95"]) for c in results["cells"]] == \
        [(c["model"], c["length"], c["depth"], c["mean"], c["ci95"]) for c in before["cells"]]
    for label, m in before["metrics"].items():
        assert results["metrics"][label]["accuracy"]["value"] == m["accuracy"]
        assert results["metrics"][label]["accuracy"]["ci95"] == m["ci95"]
        assert results["metrics"][label]["all_correct"]["value"] == m["all_correct"]
        assert {k: results["metrics"][label][f"accuracy@depth={k}"]["value"] for k in m["by_depth"]} == m["by_depth"]


def test_attn_map_allocations_and_cells_unchanged(tmp_path):
    """Same numbers; since attn-map v3 the DIFF headline is the signed differential row (v1's
    `allocation_signed`) and v1's normalised headline is the `normalised` view."""
    before, samples, results = _run("attn-map", tmp_path)
    now = {(s["model"], s["id"]): s for s in samples}
    for old in before["samples"]:
        new = now[(old["model"], old["id"])]
        if "allocation_signed" in old:
            assert new["allocation"] == pytest.approx(old["allocation_signed"], rel=1e-4, abs=2e-5)
            assert new["allocation_normalised"] == pytest.approx(old["allocation"], rel=1e-4, abs=2e-5)
        else:
            assert new["allocation"] == pytest.approx(old["allocation"], rel=1e-4, abs=2e-5)
    assert len(results["cells"]) == len(before["cells"])
    cats = ("answer", "needle", "other_needles", "sink", "query", "noise")
    for a, b in zip(results["cells"], before["cells"]):
        headline = b.get("signed", {c: b[c] for c in cats})
        assert {c: a[c] for c in cats} == pytest.approx(headline, rel=1e-4, abs=2e-5)
        if "signed" in b:
            assert a["normalised"] == pytest.approx({c: b[c] for c in cats}, rel=1e-4, abs=2e-5)
    for label, m in before["metrics"].items():
        for view, prefix in (("by_depth_signed" if "by_depth_signed" in m else "by_depth", ""),
                             *((("by_depth", "normalised."),) if "by_depth_signed" in m else ())):
            for depth, values in m[view].items():
                for cat, value in values.items():
                    got = results["metrics"][label][f"{prefix}{cat}@depth={depth}"]["value"]
                    assert got == pytest.approx(value, rel=1e-4, abs=2e-5)


def test_outliers_statistics_and_nll_unchanged(tmp_path):
    before, samples, results = _run("outliers-nll", tmp_path)
    now = {(s["model"], s["index"]): s for s in samples if s["kind"] == "sequence"}
    for old in before["samples"]:
        new = now[(old["model"], old["index"])]
        assert new["ids_sha256"] == old["ids_sha256"] and new["nll"] == pytest.approx(old["nll"], rel=1e-4, abs=2e-5)
    old_act = {(c["model"], c["activation"]): c for c in before["cells"] if c["kind"] == "activation"}
    new_act = {(c["model"], c["activation"]): c for c in results["cells"] if c["kind"] == "activation"}
    assert old_act.keys() == new_act.keys()
    for key, c in old_act.items():
        for stat in ("top1", "top2", "top3", "top10", "top100", "median"):
            assert new_act[key][stat] == pytest.approx(c[stat], rel=1e-4, abs=2e-5), (key, stat)
    for label, m in before["metrics"].items():
        for bits, v in m["quantization"]["by_bits"].items():
            assert results["metrics"][label][f"nll@bits={bits}"]["value"] == pytest.approx(v["value"], rel=1e-4, abs=2e-5)
            assert results["metrics"][label][f"nll@bits={bits}"]["n"] == v["n"]


def test_outliers_needle_metric_unchanged(tmp_path):
    before, samples, results = _run("outliers-needle", tmp_path)
    now = {(s["model"], s["bits"], s["index"], s["id"].split("-", 1)[1]): s for s in samples if s["kind"] == "needle"}
    olds = [s for s in before["samples"] if s["kind"] == "needle"]
    assert len(now) == len(olds)
    for old in olds:
        new = now[(old["model"], old["bits"], old["index"], old["id"])]
        assert new["prediction"] == [old["prediction"]] and new["score"] == old["score"]
    for label, m in before["metrics"].items():
        for bits, v in m["quantization"]["by_bits"].items():
            got = results["metrics"][label][f"accuracy@bits={bits}"]
            assert (got["value"], got["n"], got["ci95"]) == (v["value"], v["n"], v["ci95"])
