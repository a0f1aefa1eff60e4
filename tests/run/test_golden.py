"""Same numbers: every probe's samples.jsonl and results.json (less timing and provenance)
equal the committed golden fixtures, produced before the probe layer was rebuilt
(tests/fixtures/golden/regen.py writes them and names each command)."""

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden"
_spec = importlib.util.spec_from_file_location("golden_regen", GOLDEN / "regen.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


@pytest.mark.parametrize("name", list(regen.COMMANDS))
def test_run_equals_golden_fixture(name, tmp_path):
    results, samples = regen.run(name, tmp_path / "run")
    want_samples = (GOLDEN / name / "samples.jsonl").read_text()
    want_results = (GOLDEN / name / "results.json").read_text()
    if samples != want_samples:  # name the first sample that moved
        for i, (a, b) in enumerate(zip(samples.splitlines(), want_samples.splitlines())):
            assert json.loads(a) == json.loads(b), f"{name}: sample line {i} differs"
        assert len(samples.splitlines()) == len(want_samples.splitlines()), f"{name}: sample count differs"
    assert json.loads(results) == json.loads(want_results)
