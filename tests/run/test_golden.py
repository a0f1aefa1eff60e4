"""Same numbers: every probe's samples.jsonl and results.json (less timing and provenance)
equal the committed golden fixtures, produced before the probe layer was rebuilt
(tests/fixtures/golden/regen.py writes them and names each command).

Everything but floats must be equal (tokens, predictions, decisions, counts, names); floats
agree to 1e-4 relative or 2e-5 absolute (differences of two sums, such as a quantised NLL
delta). The CPU kernels torch picks for the host's instruction set move float32 sums in
their last digits (up to 5e-6 relative seen between two hosts), nothing a probe decides."""

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden"
_spec = importlib.util.spec_from_file_location("golden_regen", GOLDEN / "regen.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


def _same(a, b, where: str = "") -> None:
    """Assert a == b with floats compared at 1e-4 relative; `where` names the first difference."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool), where
        assert a == pytest.approx(b, rel=1e-4, abs=2e-5), f"{where}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", list(regen.COMMANDS))
def test_run_equals_golden_fixture(name, tmp_path):
    results, samples = regen.run(name, tmp_path / "run")
    want_samples = (GOLDEN / name / "samples.jsonl").read_text()
    want_results = (GOLDEN / name / "results.json").read_text()
    if samples != want_samples:  # name the first sample that moved
        for i, (a, b) in enumerate(zip(samples.splitlines(), want_samples.splitlines())):
            _same(json.loads(a), json.loads(b), f"{name}: sample line {i}")
        assert len(samples.splitlines()) == len(want_samples.splitlines()), f"{name}: sample count differs"
    _same(json.loads(results), json.loads(want_results), f"{name}: results")
