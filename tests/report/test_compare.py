"""`diffeval compare`: alignment, differences and significance, warnings, report.md, and a
report.html that renders in headless Chromium with every figure loaded and no console error."""

import os
import shutil
import subprocess

import pytest

from diffeval.probes.needle import PROBE

config = PROBE.config
from diffeval.report.compare import load_runs, significant, table_rows
from diffeval.run import RunOptions, run_probe
from helpers import run_cli, saved_tiny_models

OPTS = RunOptions(device="cpu", max_new_tokens=3, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    ckpts = saved_tiny_models(root / "ckpts")
    a, b = root / "a", root / "b"
    run_probe(PROBE, config({"lengths": [200], "depths": [0, 100], "samples": 3}), ckpts, a, OPTS)
    run_probe(PROBE, config({"lengths": [200], "depths": [0, 100], "samples": 2}), ckpts[:1], b, OPTS)
    return a, b


def test_significance():
    a = {"value": 0.9, "n": 100, "ci95": [0.83, 0.94]}
    assert significant(a, {"value": 0.6, "n": 100, "ci95": [0.5, 0.69]}) is True
    assert significant(a, {"value": 0.86, "n": 100, "ci95": [0.78, 0.91]}) is False
    assert significant({"value": 2.0, "n": 5, "ci95": [1.9, 2.1]}, {"value": 2.5, "n": 5, "ci95": [2.3, 2.7]}) is True
    assert significant({"value": 2.0, "n": 5}, {"value": 2.5, "n": 5}) is None


def test_rows_align_models_and_runs(runs):
    loaded = load_runs([str(r) for r in runs])
    cols, rows = table_rows(loaded)
    assert cols == [(0, "transformer"), (0, "diff"), (1, "transformer")]
    acc = next(r for r in rows if r["metric"] == "accuracy")
    base = loaded[0].results["metrics"]["transformer"]["accuracy"]["value"]
    other = loaded[0].results["metrics"]["diff"]["accuracy"]["value"]
    assert acc["cells"][0]["delta"] is None and acc["cells"][1]["delta"] == pytest.approx(other - base)
    assert all("@" not in r["metric"] for r in rows)
    assert any("@" in r["metric"] for r in table_rows(loaded, all_metrics=True)[1])


def test_report_files_and_warnings(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert run_cli(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "task parameters differ" in md and "samples" in md  # 3 vs 2 samples per cell
    assert "| accuracy |" in md and "command: `" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # both runs' heatmaps, inlined
    assert "not strictly comparable" in capsys.readouterr().out


@pytest.mark.integration
def test_report_renders_in_headless_chromium(runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    out = tmp_path / "rep"
    assert run_cli(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-figures-loaded="2/2"' in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console


def test_bad_inputs_exit_2(runs, tmp_path, capsys):
    assert run_cli(["compare", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    text = (other / "results.json").read_text().replace('"probe": "needle"', '"probe": "nll"', 1)
    (other / "results.json").write_text(text)
    assert run_cli(["compare", str(runs[0]), str(other)]) == 2
    assert "different probes" in capsys.readouterr().err
