"""`diffeval needle` and `diffeval run` end to end on a tiny model."""

import json
from pathlib import Path

import pytest

from diffeval.cli import main
from helpers import interrupt_after, run_cli as run, saved_tiny_models

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return saved_tiny_models(tmp_path_factory.mktemp("ckpts"))


ARGS = ["--len", "300", "--depths", "0,50,100", "--samples", "2", "--needles", "2", "--queries", "2",
        "--device", "cpu", "--max-new-tokens", "4"]




def test_needle_writes_every_artifact(ckpts, tmp_path, capsys):
    out = tmp_path / "run"
    main(["needle", "--ckpt", ckpts[0], "--ckpt", ckpts[1], *ARGS, "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    for key in ("schema_version", "probe", "task", "models", "metrics", "cells", "timing", "provenance", "artifacts"):
        assert key in results
    assert results["probe"] == "needle"
    assert [m["label"] for m in results["models"]] == ["transformer", "diff"]
    assert all(len(m["sha256"]) == 64 for m in results["models"])
    assert len(results["cells"]) == 2 * 3  # models x depths
    cell = results["cells"][0]
    assert cell["n"] == 2 and 0 <= cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1] <= 1
    assert results["timing"]["world_size"] == 1
    for t in results["timing"]["models"].values():
        for key in ("requests", "prompt_tokens", "prefilled_tokens", "tokens_per_s", "wall_seconds", "peak_rss_mb"):
            assert key in t
        assert t["requests"] == 2 * 3 * 2  # samples x depths x queries
        assert t["prefilled_tokens"] < t["prompt_tokens"]  # the R questions share their context
        phases = t["phases"]
        assert set(phases) == {"load", "generate", "prefill", "decode", "score"}
        assert phases["prefill"] > 0 and phases["decode"] > 0 and t["prefill_tokens_per_s"] > 0
        assert phases["prefill"] + phases["decode"] + phases["score"] <= t["wall_seconds"] + 1e-3
    run_phases = results["timing"]["phases"]
    assert set(run_phases) == {"load", "generate", "prefill", "decode", "score", "aggregate", "write", "figures"}
    assert sum(run_phases.values()) <= results["timing"]["wall_seconds"] + 1e-2
    assert results["provenance"]["seed"] == 0 and results["provenance"]["argv"]
    assert set(results["provenance"]["weights_sha256_from"].values()) <= {"read", "cache"}
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2
    for r in rows:
        for key in ("model", "length", "n_tokens", "depth", "needles", "queries", "expected", "prediction", "score"):
            assert key in r
        assert r["length"] == 300 and r["n_tokens"][0] == 300  # first question exact; others differ by question length
    for name in results["artifacts"]["figures"]:
        assert (out / name).stat().st_size > 1000
    assert {Path(n).suffix for n in results["artifacts"]["figures"]} == {".png", ".pdf"}
    table = capsys.readouterr().out
    assert "depth" in table and "avg" in table


def test_heatmap_data_equals_cells(ckpts, tmp_path):
    from diffeval.plotting.needle import heatmap_matrix

    out = tmp_path / "run"
    main(["needle", "--ckpt", ckpts[1], *ARGS, "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    depths, lengths, matrix = heatmap_matrix(results["cells"], "diff")
    for c in results["cells"]:
        assert matrix[list(depths).index(c["depth"]), list(lengths).index(c["length"])] == pytest.approx(c["mean"])


def test_resume_after_interrupt_gives_the_same_results(ckpts, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    main(["needle", "--ckpt", ckpts[0], *ARGS, "--out", str(whole)])

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        assert run(["needle", "--ckpt", ckpts[0], *ARGS, "--out", str(part)]) == 130
    assert not (part / "results.json").exists()
    assert len((part / ".resume" / "transformer.jsonl").read_text().splitlines()) == 3
    main(["needle", "--ckpt", ckpts[0], *ARGS, "--out", str(part)])
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((part / "results.json").read_text())
    assert a["cells"] == b["cells"] and a["metrics"] == b["metrics"]
    assert b["timing"]["models"]["transformer"]["resumed_samples"] == 3
    strip = lambda text: [{k: v for k, v in json.loads(l).items()} for l in text.splitlines()]
    assert strip((whole / "samples.jsonl").read_text()) == strip((part / "samples.jsonl").read_text())


def test_run_task_yaml_with_grid(ckpts, tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text(
        "name: t\nprobe: needle\nversion: 1\nparams: {lengths: [256], depths: '0:100:2', samples: 1}\n"
        "grid:\n  - {n_needles: 1, n_queries: 1}\n  - {n_needles: 3, n_queries: 2}\n"
    )
    out = tmp_path / "run"
    main(["run", str(task), "--ckpt", ckpts[0], "--out", str(out), "--device", "cpu", "--max-new-tokens", "3"])
    for sub in ("n_needles1-n_queries1", "n_needles3-n_queries2"):
        results = json.loads((out / sub / "results.json").read_text())
        assert results["task"]["params"]["depths"] == [0.0, 100.0]


@pytest.mark.parametrize("argv,needle", [
    (["--len", "abc"], "abc"),
    (["--depths", "0,150"], "150"),
    (["--queries", "3", "--needles", "2"], "queries"),
    (["--needle-kind", "nope"], "nope"),
    (["--haystack", "/no/such/file.txt"], "/no/such/file.txt"),
    (["--len", "4k"], "1024"),  # beyond the model's max positions
])
def test_bad_needle_options_exit_2(ckpts, tmp_path, capsys, argv, needle):
    code = run(["needle", "--ckpt", ckpts[0], "--samples", "1", "--device", "cpu", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_default_lengths_fit_the_models_position_limit_and_are_said(ckpts, tmp_path, capsys):
    out = tmp_path / "d"
    main(["needle", "--ckpt", ckpts[0], "--depths", "50", "--samples", "1", "--device", "cpu",
          "--max-new-tokens", "2", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    # the models stop at 1024 positions, and the answer must fit too: 64 are left for it
    assert results["task"]["params"]["lengths"] == [240, 480, 960]
    assert "--len not given: using 240, 480, 960 tokens" in capsys.readouterr().err


def test_every_shipped_task_validates():
    from diffeval.catalog import task_presets
    from diffeval.tasks import load_task

    assert task_presets()
    for name, path in task_presets().items():
        task = load_task(path)
        assert task.name == name and task.variants({})


def test_run_attn_map_and_outliers_tasks(ckpts, tmp_path):
    attn = tmp_path / "a.yaml"
    attn.write_text("name: a\nprobe: attn-map\nversion: 1\n"
                    "params: {lengths: [256], depths: [50], samples: 1, layers: '-1', query: last}\n")
    main(["run", str(attn), "--ckpt", ckpts[1], "--out", str(tmp_path / "a"), "--device", "cpu"])
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["probe"] == "attn-map" and results["task"]["params"]["layers"] == "-1"
    assert {c["layer"] for c in results["cells"]} == {1}
    out = tmp_path / "o.yaml"
    out.write_text("name: o\nprobe: outliers\nversion: 1\n"
                   "params: {n_tokens: 300, seq_len: 150, bits: [16, 4]}\n")
    main(["run", str(out), "--ckpt", ckpts[0], "--out", str(tmp_path / "o"), "--device", "cpu", "--len", "100"])
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["probe"] == "outliers" and results["task"]["params"]["seq_len"] == 100  # --len override


def test_bad_task_files_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprobe: needle\nversion: 1\nparams: {samplez: 3}\n")
    assert run(["run", str(bad)]) == 2
    assert "samplez" in capsys.readouterr().err
    bad.write_text("name: x\nprobe: haystack\nversion: 1\n")
    assert run(["run", str(bad)]) == 2
    assert "haystack" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("info", "needle", "run", "attn-map", "outliers", "train", "zoo"):
        assert command in text
