"""The pure parts of data-parallel runs: the assignment of sample groups to ranks, resume file
names, and the launcher environment (the launched runs are in tests/run/test_torchrun.py)."""

import os

import pytest

from diffeval.dist import World, plan, resume_files, resume_path
from diffeval.errors import UsageError
from diffeval.launch import Launch, is_main, launch, rank_tag


def test_plan_balances_tokens_heaviest_first_and_keeps_state_on_rank_0():
    groups = {f"g{i}": (w, f"k{i}") for i, w in enumerate([900, 800, 700, 300, 300, 200, 100])}
    groups["\0state"] = (50, "k-state")
    owner = plan(groups, 3)
    assert owner["\0state"] == 0
    load = [sum(groups[g][0] for g, r in owner.items() if r == k) for k in range(3)]
    assert max(load) - min(load) <= 200 and sum(load) == 3350
    assert {owner["g0"], owner["g1"], owner["g2"]} == {0, 1, 2}  # the three longest on three ranks
    shuffled = dict(sorted(groups.items(), key=lambda kv: kv[1][1], reverse=True))
    assert plan(shuffled, 3) == owner  # by weight and content key, not by listing order
    assert set(plan(groups, 1).values()) == {0}


def test_plan_breaks_weight_ties_by_content_key():
    groups = {"b": (10, "k2"), "a": (10, "k1"), "c": (10, "k3")}
    assert plan(groups, 2) == {"a": 0, "b": 1, "c": 0}


def test_resume_files_of_every_world_size_and_only_them(tmp_path):
    stem = tmp_path / ".resume" / "Llama-3.1-8B"
    assert resume_files(stem) == []
    assert resume_path(stem, 0, 1).name == "Llama-3.1-8B.jsonl"
    assert resume_path(stem, 3, 4).name == "Llama-3.1-8B.rank3.jsonl"
    stem.parent.mkdir()
    for name in ("Llama-3.1-8B.jsonl", "Llama-3.1-8B.rank0.jsonl", "Llama-3.1-8B.rank12.jsonl",
                 "Llama-3.1-8B.state.npz", "Llama-3.1-8B-x.jsonl", "Llama-3.1.jsonl"):
        (stem.parent / name).write_text("")
    (stem.parent / "Llama-3.1-8B.rank1.jsonl").mkdir()  # not a file: skipped
    assert [p.name for p in resume_files(stem)] == ["Llama-3.1-8B.jsonl", "Llama-3.1-8B.rank0.jsonl",
                                                    "Llama-3.1-8B.rank12.jsonl"]


def test_a_single_process_is_a_world_of_one():
    place = Launch.from_env({})
    assert place == Launch(rank=0, size=1, local_rank=0, nodes=1) and place.is_main and place.tag == ""
    world = World.join("cpu", place)
    assert (world.rank, world.size, world.is_main, world.backend) == (0, 1, True, None)
    assert rank_tag(place) == "" and world.provenance() == {"world_size": 1, "nnodes": 1, "dist_backend": None}
    todo = [0, 2, 5]
    assert world.assign(todo, [], [], [], None, []) == (todo, 3)
    assert world.share({"a": 1}) == {"a": 1}


def test_launcher_environment_is_checked_before_any_collective():
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "GROUP_WORLD_SIZE": "2"}
    place = Launch.from_env(env)
    assert place == Launch(rank=1, size=2, local_rank=1, nodes=2) and not is_main(place)
    assert rank_tag(place) == " (rank 1 of 2)"
    with pytest.raises(UsageError, match="cuda:LOCAL_RANK; pass --device cuda or auto"):
        World.join("cuda:1", place)
    with pytest.raises(UsageError, match=r"RANK \(2\) must lie in \[0, WORLD_SIZE \(2\)\)"):
        Launch.from_env({**env, "RANK": "2"})
    with pytest.raises(UsageError, match="must be integers"):
        Launch.from_env({**env, "RANK": "one"})
    with pytest.raises(UsageError, match=r"GROUP_WORLD_SIZE \('two'\) must be an integer"):
        Launch.from_env({**env, "GROUP_WORLD_SIZE": "two"})


def test_the_environment_is_read_once_per_process(monkeypatch):
    """is_main, rank_tag and World.join answer from the Launch read at the first call: a
    variable changed later (by a library, a test) does not move this process to another rank."""
    first = launch()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launch() is first and is_main() == first.is_main and rank_tag() == first.tag
    assert Launch.from_env(os.environ).rank == 1  # what a fresh read would have said


def test_a_malformed_environment_is_refused_where_the_job_starts_and_not_in_messages():
    import subprocess
    import sys

    code = ("from diffeval.launch import is_main, rank_tag\nfrom diffeval.errors import UsageError\n"
            "print(repr(rank_tag()))\ntry:\n    is_main()\nexcept UsageError as exc:\n    print(exc)\n"
            "try:\n    is_main()\nexcept UsageError as exc:\n    print(exc)\n")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "one"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "''" and len(lines) == 3 and lines[1] == lines[2] and "must be integers" in lines[1]
