"""The prepared GPU suite (benchmarks/gpu_suite.py) cannot rot: its --smoke run (tiny shapes,
the CPU) goes through every section and writes numbers that hang together."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_suite_smoke_runs_every_section(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["matmul_tflops"] > 0 and report["copy_gb_s"] > 0
    for row in report["attention"]:  # every path computes the same attention as the first
        assert all(row[p]["max_diff"] < 1e-4 and row[p]["tflops"] > 0 for p in ("padded sdpa", "two sdpa calls"))
    assert {r["model"] for r in report["prefill"]} == {"llama", "diffllama"}
    assert all(r["max_logit_diff"] < 1e-4 and r["ratio"] > 0 for r in report["prefill"])  # same weights, same logits
    assert all(r["bound_ms"] > 0 and r["ours_ms"] > 0 and r["generate_ms"] > 0 for r in report["decode"])
    needle = report["needle"]
    assert needle["prompts"] == 10 and needle["ours_prefilled"] <= needle["theirs_prefilled"]
    for section in ("1. DIFF attention", "2. prefill", "3. decode", "4. needle grid"):
        assert section in proc.stdout
