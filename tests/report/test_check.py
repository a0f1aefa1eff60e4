"""`diffeval check`: tolerances from sampling noise, directions, exit codes, JUnit, --update,
and a broken model (one layer's attention zeroed) failing the check with the cells named."""

import xml.etree.ElementTree as ET

import pytest
from safetensors.torch import load_file, save_file

from diffeval.checkpoints.zoo import zoo_path
from diffeval.report.check import compare, load_suite, tolerance
from helpers import copy_zoo_model, run_cli

SUITE = """name: mini
reference: ref.yaml
models: [zoo:transformer-tiny]
tasks:
  - {name: needle, probe: needle, params: {lengths: [384], depths: [0, 100], samples: 4, n_needles: 2, n_queries: 2}}
  - {name: nll, probe: nll, params: {length: 256, docs: 3}}
"""


def test_tolerance_and_direction():
    ref = {"t": {"m": {"acc": {"value": 0.8, "n": 50, "ci95": [0.67, 0.89], "higher_is_better": True},
                       "nll": {"value": 2.0, "n": 4, "ci95": [1.9, 2.1], "higher_is_better": False},
                       "std": {"value": 0.05, "n": 3, "higher_is_better": False},
                       "fixed": {"value": 0.5, "n": 10, "higher_is_better": True, "tolerance": 0.01}}}}

    def run(**values):
        metrics = {k: {**v, "value": values.get(k, v["value"])} for k, v in ref["t"]["m"].items()}
        return {r.metric: r.status for r in compare({"metrics": ref}, {"t": {"metrics": {"m": metrics}}})}

    assert set(run().values()) == {"ok"}
    assert run(acc=0.75)["acc"] == "ok"  # within the noise of two 95% intervals
    assert run(acc=0.55)["acc"] == "regressed" and run(acc=0.99)["acc"] == "improved"
    assert run(nll=2.3)["nll"] == "regressed" and run(nll=1.7)["nll"] == "improved"  # lower is better
    assert run(std=0.0501)["std"] == "ok" and run(std=0.0503)["std"] == "regressed"  # no interval: a small numeric tolerance
    assert run(fixed=0.495)["fixed"] == "ok" and run(fixed=0.48)["fixed"] == "regressed"
    half = (0.89 - 0.67) / 2
    assert tolerance(ref["t"]["m"]["acc"], None) == pytest.approx(half)
    missing = compare({"metrics": ref}, {"t": {"metrics": {"m": {}}}})
    assert {r.status for r in missing} == {"missing"}


def _broken(tmp_path):
    """transformer-tiny with layer 0's attention output zeroed (same name, so labels match)."""
    model = tmp_path / "broken" / "transformer-tiny"
    copy_zoo_model("transformer-tiny", model)
    weights = load_file(str(model / "model.safetensors"))
    weights["layers.0.attn.o_proj.weight"].zero_()
    weights["layers.1.attn.q_proj.weight"] = weights["layers.1.attn.q_proj.weight"].flip(0).contiguous()
    save_file(weights, str(model / "model.safetensors"))
    return model


def test_check_passes_then_fails_on_a_broken_model(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    runs = tmp_path / "runs"
    assert run_cli(["check", str(suite), "--runs", str(runs), "--update"]) == 0
    assert (tmp_path / "ref.yaml").is_file()
    capsys.readouterr()
    assert run_cli(["check", str(suite), "--runs", str(runs), "--junit", str(tmp_path / "ok.xml")]) == 0
    assert "0 regressed" in capsys.readouterr().out
    junit = tmp_path / "bad.xml"
    summary = tmp_path / "bad.md"
    code = run_cli(["check", str(suite), "--ckpt", str(_broken(tmp_path)), "--runs", str(tmp_path / "runs2"),
                    "--junit", str(junit), "--summary", str(summary)])
    out = capsys.readouterr().out
    assert code == 1
    assert "regressed" in out and "accuracy" in out and "nll" in out
    root = ET.parse(junit).getroot()
    failures = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert int(root.get("failures")) == len(failures) > 0
    assert any(name.startswith("transformer-tiny: accuracy") for name in failures)
    assert "FAILED" in summary.read_text()


def test_bad_suites_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    for text, needle in (("name: x\n", "missing key 'tasks'"),
                         ("name: x\ntasks:\n  - {name: a, probe: nedle}\n", "unknown probe"),
                         ("name: x\ntasks:\n  - {name: a, probe: needle, params: {lengths: abc}}\n", "params.lengths"),
                         ("name: x\ntasks:\n  - {name: a, probe: needle}\n", "missing required parameter(s): lengths"),
                         ("name: x\ntasks:\n  - {name: a, probe: nll, params: {length: 64}}\n", "no such file")):
        bad.write_text(text)
        assert run_cli(["check", str(bad), "--runs", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_shipped_suite_loads():
    suite = load_suite(zoo_path("transformer-tiny").parents[2] / "tasks" / "ci" / "suite.yaml")
    assert {t.probe for t in suite.tasks} == {"needle", "attn-map", "nll", "icl", "halluc", "ruler"}
    assert suite.reference.is_file()
