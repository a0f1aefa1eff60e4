"""Data-parallel runs under the real launcher (`python -m torch.distributed.run`, 2 CPU ranks,
gloo): the same files as one process, resume across world sizes with no sample computed
twice, and a failing rank named. Each launch costs a few seconds of process start-up, so the
grids are tiny and the launches few."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch

from diffeval.results import SCHEMA_FILE
from helpers import run_cli

pytestmark = pytest.mark.integration

MODELS = ["--ckpt", "zoo:transformer-tiny", "--ckpt", "zoo:diff-tiny"]
NEEDLE = ["needle", *MODELS, "--len", "300,600", "--depths", "0,50,100", "--samples", "2", "--needles", "2",
          "--queries", "2", "--device", "cpu", "--max-new-tokens", "4"]
N_SAMPLES = 2 * 2 * 3 * 2  # models x lengths x depths x samples
OUTLIERS_TASK = """name: outliers-dp
probe: outliers
version: 1
params: {n_tokens: 512, seq_len: 128, bits: [16, 4], metric: needle, needle_samples: 2, depths: [0, 100]}
"""


def torchrun(args: list[str], nproc: int = 2, wait: bool = True):
    """`python -m torch.distributed.run --nproc-per-node N -m diffeval ARGS` on the CPU."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "diffeval", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: Ctrl-C reaches torchrun and ranks
    if not wait:
        return proc
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def single(args: list[str]) -> int:
    """The same command in this process (one thread, as each rank has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cli(args)
    finally:
        torch.set_num_threads(threads)


def resume_lines(run: Path) -> dict[str, list[str]]:
    """Sample ids per resume file."""
    return {p.name: [json.loads(line)["value"]["id"] for line in p.read_text().splitlines()]
            for p in sorted((run / ".resume").glob("*.jsonl"))}


def stable(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    return {k: v for k, v in results.items() if k not in ("timing", "provenance")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    assert single([*NEEDLE, "--out", str(out)]) == 0
    return out


def test_two_ranks_write_what_one_process_writes(reference, tmp_path):
    out = tmp_path / "dp"
    rc, stdout, err = torchrun([*NEEDLE, "--out", str(out)])
    assert rc == 0, err[-3000:]
    assert stable(out) == stable(reference)
    assert (out / "samples.jsonl").read_text() == (reference / "samples.jsonl").read_text()
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert results["provenance"]["launcher"] == "torchrun" and results["provenance"]["world_size"] == 2
    assert results["provenance"]["dist_backend"] == "gloo"
    ranks = results["timing"]["ranks"]
    assert results["timing"]["world_size"] == 2 and [r["rank"] for r in ranks] == [0, 1]
    assert all(r["samples"] > 0 and r["prompt_tokens"] > 0 for r in ranks)
    assert sum(r["samples"] for r in ranks) == N_SAMPLES
    # the tokens of both ranks add up to one process's tokens; prefix reuse works within each
    # rank (it loses only what prompts of different haystacks on different ranks would share)
    one = json.loads((reference / "results.json").read_text())["timing"]["models"]
    for label, t in results["timing"]["models"].items():
        for key in ("samples", "requests", "prompt_tokens", "generated_tokens"):
            assert t[key] == one[label][key], (label, key)
        assert one[label]["prefilled_tokens"] <= t["prefilled_tokens"] <= 1.1 * one[label]["prefilled_tokens"]
        assert t["prefilled_tokens"] < 0.6 * t["prompt_tokens"]
    assert sum(r["prompt_tokens"] for r in ranks) == sum(t["prompt_tokens"] for t in one.values())
    # each rank its own resume file; every sample once; the depths of a haystack on one rank
    files = resume_lines(out)
    assert sorted(files) == sorted(f"{m}.rank{k}.jsonl" for m in ("transformer-tiny", "diff-tiny") for k in (0, 1))
    assert sum(len(ids) for ids in files.values()) == N_SAMPLES
    rank_of: dict[tuple, set] = {}
    for name, ids in files.items():
        for i in ids:
            length, _, index = i.split("-")  # L300-d50-s1: length, depth, sample index
            rank_of.setdefault((name.split(".rank")[0], length, index), set()).add(name)
    assert len(rank_of) == N_SAMPLES // 3 and all(len(r) == 1 for r in rank_of.values())
    assert "accuracy" in stdout and stdout.count("transformer-tiny (transformer)") == 1  # rank 0 prints


def test_interrupted_job_resumes_in_one_process_computing_nothing_twice(reference, tmp_path):
    out = tmp_path / "cut"
    proc = torchrun([*NEEDLE, "--out", str(out)], wait=False)
    deadline = time.monotonic() + 120
    while sum(len(v) for v in (resume_lines(out).values() if (out / ".resume").is_dir() else [])) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before 3 samples"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the launcher's terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "interrupted (rank 0 of 2)" in err and "interrupted (rank 1 of 2)" in err
    assert not (out / "results.json").exists()
    done = sum(len(v) for v in resume_lines(out).values())
    assert 3 <= done < N_SAMPLES

    assert single([*NEEDLE, "--out", str(out)]) == 0
    assert stable(out) == stable(reference)
    assert (out / "samples.jsonl").read_text() == (reference / "samples.jsonl").read_text()
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert sum(t["resumed_samples"] for t in timing["models"].values()) == done
    files = resume_lines(out)
    assert sum(len(v) for v in files.values()) == N_SAMPLES  # each sample computed exactly once
    assert len({(f.split(".")[0], i) for f, ids in files.items() for i in ids}) == N_SAMPLES


def test_a_failing_rank_is_named_and_the_rerun_resumes(reference, tmp_path):
    out = tmp_path / "broken"
    (out / ".resume").mkdir(parents=True)
    # a real failure on rank 1 only: its resume file points into a folder that does not exist,
    # so its first finished sample cannot be saved
    (out / ".resume" / "transformer-tiny.rank1.jsonl").symlink_to(tmp_path / "missing" / "r1.jsonl")
    started = time.monotonic()
    rc, _, err = torchrun([*NEEDLE, "--out", str(out)])
    assert rc != 0 and time.monotonic() - started < 120
    failed = [line for line in err.splitlines() if "(rank 1 of 2)" in line]
    assert failed and "diffeval: error (rank 1 of 2): " in failed[0] and "rank1.jsonl: cannot write" in failed[0], err
    assert not (out / "results.json").exists()
    (out / ".resume" / "transformer-tiny.rank1.jsonl").unlink()
    kept = sum(len(v) for v in resume_lines(out).values())
    assert single([*NEEDLE, "--out", str(out)]) == 0
    assert (out / "samples.jsonl").read_text() == (reference / "samples.jsonl").read_text()
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert sum(t["resumed_samples"] for t in timing["models"].values()) == kept


def test_a_task_with_running_statistics_gives_the_same_numbers(tmp_path):
    """`diffeval run TASK` with the outliers probe: the statistics samples stay on rank 0,
    the quantized needle samples spread; results identical to one process."""
    task = tmp_path / "outliers.yaml"
    task.write_text(OUTLIERS_TASK)
    args = ["run", str(task), "--ckpt", "zoo:diff-tiny", "--device", "cpu", "--max-new-tokens", "4"]
    assert single([*args, "--out", str(tmp_path / "one")]) == 0
    rc, _, err = torchrun([*args, "--out", str(tmp_path / "two")])
    assert rc == 0, err[-3000:]
    assert stable(tmp_path / "two") == stable(tmp_path / "one")
    assert (tmp_path / "two" / "samples.jsonl").read_text() == (tmp_path / "one" / "samples.jsonl").read_text()
    files = resume_lines(tmp_path / "two")
    assert all(i.startswith("b") for i in files["diff-tiny.rank1.jsonl"])  # no statistics sample on rank 1
    assert any(i.startswith("seq") for i in files["diff-tiny.rank0.jsonl"])
    assert files["diff-tiny.rank1.jsonl"]
