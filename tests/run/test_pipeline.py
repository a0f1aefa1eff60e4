"""Every probe in the registry through the one pipeline: generate -> engine -> score ->
aggregate -> files, validated against the shipped JSON Schema; an interrupted run resumes
to identical files; the resume key covers every setting that changes outputs."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import torch

from diffeval.errors import UsageError
from diffeval.probes import PROBES, get_probe
from diffeval.results import SCHEMA_FILE
from diffeval.run import RunOptions, run_probe
from helpers import interrupt_after, saved_tiny_models

CASES = {name: get_probe(name).quick for name in PROBES}  # each probe declares a run of seconds
OPTS = RunOptions(device="cpu", max_new_tokens=3, progress=False)
AGAIN = RunOptions(device="cpu", max_new_tokens=3, progress=False, overwrite=True)  # other settings, same --out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("ckpts"))


def test_every_registered_probe_declares_a_quick_run():
    assert all(CASES.values()), [name for name, params in CASES.items() if not params]


def _run(name, ckpts, out, opts=OPTS):
    probe = get_probe(name)
    return run_probe(probe, probe.config(CASES[name]), ckpts, out, opts)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stable(results: dict) -> dict:
    """results.json without what differs between two runs of the same work (clock, argv)."""
    return {k: v for k, v in results.items() if k not in ("timing", "provenance")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_probe_files_follow_the_contract_and_resume_exactly(name, ckpts, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    results = _run(name, ckpts, whole)
    schema = json.loads(SCHEMA_FILE.read_text())
    on_disk = json.loads((whole / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    jsonschema.validate(on_disk, schema)
    assert on_disk["probe"] == name and on_disk["task"]["probe_version"] == get_probe(name).version
    for cell in on_disk["cells"]:
        assert set(on_disk["cell_keys"]) <= set(cell), cell
    labels = [m["label"] for m in on_disk["models"]]
    assert set(on_disk["metrics"]) == set(labels) == set(on_disk["timing"]["models"])
    samples = _lines(whole / "samples.jsonl")
    sample_schema = {**schema["$defs"]["sample"], "$defs": schema["$defs"]}
    for row in samples:
        jsonschema.validate(row, sample_schema)
    assert len({(r["model"], r["id"]) for r in samples}) == len(samples)
    for fig in on_disk["artifacts"]["figures"]:
        assert (whole / fig).stat().st_size > 1000
    for arr in on_disk["artifacts"].get("arrays", []):
        assert (whole / arr).is_file()

    # interrupt after 3 finished samples, then rerun: identical files
    part = tmp_path / "part"
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            _run(name, ckpts, part)
    assert not (part / "results.json").exists()
    again = _run(name, ckpts, part)
    assert _stable(again) == _stable(results)
    assert (part / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    assert sum(t["resumed_samples"] for t in again["timing"]["models"].values()) >= 2

    # the same command again reuses everything; another dtype reuses nothing
    same = _run(name, ckpts, whole)
    assert all(t["resumed_samples"] == t["samples"] for t in same["timing"]["models"].values())
    float64 = RunOptions(device="cpu", max_new_tokens=3, progress=False, dtype=torch.float64)
    with pytest.raises(UsageError, match="--overwrite"):  # the folder holds the float32 results
        _run(name, ckpts, whole, float64)
    other = _run(name, ckpts, whole, replace(float64, overwrite=True))
    assert all(t["resumed_samples"] == 0 for t in other["timing"]["models"].values())
    assert other["run"]["dtype"] == "float64"


# the families (and options) beyond the zoo's three: DIFF V2, gated attention, sinks with a sliding window
VARIANTS = {"diff2": dict(family="diff2"), "gated": dict(family="gated", gate="element"),
            "gated-head": dict(family="gated", gate="head", qk_norm=True),
            "sinks": dict(family="sinks", sliding_window=64, layer_types=["sliding_attention", "full_attention"])}


@pytest.fixture(scope="module")
def variant_ckpts(tmp_path_factory):
    import diffeval
    from helpers import tiny_model

    root = tmp_path_factory.mktemp("variants")
    for label, options in VARIANTS.items():
        diffeval.save(tiny_model(vocab_size=259, max_seq_len=1024, n_layers=2, **options), root / label)
    return [str(root / label) for label in VARIANTS]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_probe_runs_on_every_variant_family(name, variant_ckpts, tmp_path):
    results = _run(name, variant_ckpts, tmp_path / "v")
    jsonschema.validate(json.loads((tmp_path / "v" / "results.json").read_text()), json.loads(SCHEMA_FILE.read_text()))
    assert [m["family"] for m in results["models"]] == [o["family"] for o in VARIANTS.values()]
    assert all(results["metrics"][label] for label in VARIANTS)
    rows = _lines(tmp_path / "v" / "samples.jsonl")
    assert {r["model"] for r in rows} == set(VARIANTS)


def test_resume_key_covers_decoding_backend_and_the_checkpoint_config(ckpts, tmp_path):
    probe = get_probe("needle")
    cfg = probe.config(CASES["needle"])
    model = tmp_path / "model"
    shutil.copytree(ckpts[0], model)
    out = tmp_path / "run"
    first = run_probe(probe, cfg, [str(model)], out, OPTS)
    resumed = lambda r: r["timing"]["models"]["model"]["resumed_samples"]  # noqa: E731
    more_tokens = run_probe(probe, cfg, [str(model)], out, replace(AGAIN, max_new_tokens=5))
    assert resumed(more_tokens) == 0
    ruler = run_probe(probe, cfg, [str(model)], out, replace(AGAIN, decode="ruler"))
    assert resumed(ruler) == 0 and ruler["run"]["decode"] == "ruler"
    reference = run_probe(probe, cfg, [str(model)], out, replace(AGAIN, backend="reference"))
    assert resumed(reference) == 0 and reference["models"][0]["backend"] == "reference"
    config = json.loads((model / "config.json").read_text())
    config["rope"]["theta"] *= 2  # same weights, another model
    (model / "config.json").write_text(json.dumps(config))
    edited = run_probe(probe, cfg, [str(model)], out, AGAIN)
    assert resumed(edited) == 0
    assert edited["models"][0]["config_sha256"] != first["models"][0]["config_sha256"]
    assert edited["models"][0]["sha256"] == first["models"][0]["sha256"]


def test_save_prompts_writes_the_text_of_every_prompt(ckpts, tmp_path):
    probe = get_probe("needle")
    out = tmp_path / "p"
    opts = RunOptions(device="cpu", max_new_tokens=3, progress=False, save_prompts=True)
    results = run_probe(probe, probe.config(CASES["needle"]), ckpts[:1], out, opts)
    rows = _lines(out / "prompts.jsonl")
    samples = {s["id"]: s for s in _lines(out / "samples.jsonl")}
    assert results["artifacts"]["prompts"] == "prompts.jsonl"
    assert len(rows) == sum(len(s["n_tokens"]) for s in samples.values())  # one per question
    for row in rows:
        sample = samples[row["id"]]
        assert row["n_tokens"] == sample["n_tokens"][row["request"]]
        assert sample["queries"][row["request"]] in row["text"].rsplit("Question:", 1)[1]
        assert row["text"].endswith(" is")  # the answer prefix closes the prompt


def test_task_grid_folder_names_stay_inside_out(ckpts, tmp_path):
    from diffeval.tasks import load_task

    hay = tmp_path / "story.txt"
    hay.write_text("The river bends near the old mill. " * 40)
    task = tmp_path / "t.yaml"
    task.write_text(f"name: t\nprobe: needle\nversion: 3\nparams: {{lengths: [128], depths: [50], samples: 1}}\n"
                    f"grid:\n  - {{haystack: '{hay}'}}\n  - {{haystack: noise}}\n")
    names = [n for n, _ in load_task(task).variants({})]
    assert all("/" not in n and ".." not in n and len(n) <= 49 for n in names)
    assert names[1] == "haystacknoise" and len(set(names)) == 2


def test_resume_files_keep_labels_with_dots_apart(ckpts, tmp_path):
    """Model labels like Llama-3.1-8B and Llama-3.2-1B must not share a resume file."""
    models = []
    for name, src in (("tiny-3.1-a", ckpts[0]), ("tiny-3.2-b", ckpts[1])):
        shutil.copytree(src, tmp_path / name)
        models.append(str(tmp_path / name))
    probe = get_probe("needle")
    run_probe(probe, probe.config(CASES["needle"]), models, tmp_path / "run", OPTS)
    names = sorted(p.name for p in (tmp_path / "run" / ".resume").iterdir())
    assert names == ["tiny-3.1-a.jsonl", "tiny-3.2-b.jsonl"]
