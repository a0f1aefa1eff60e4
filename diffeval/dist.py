"""Data-parallel runs under PyTorch's launcher: `torchrun --nproc-per-node N -m diffeval needle ...`.

Every rank loads its own copy of the model (on cuda:LOCAL_RANK, or the CPU with gloo) and
generates every sample (generation is pure and cheap); then, per model:

    agree     the ranks pool what each found unfinished in the resume files (one all-gather),
              so every rank computes the same work list and the same assignment;
    assign    samples go to ranks in groups (those sharing a prompt prefix, named by the
              probe's `group`, default: the sample), heaviest group first to the least-loaded
              rank, weight = prompt tokens, ties broken by content key: deterministic, and the
              prefix KV cache is reused within a rank as in a single process;
    compute   each rank appends its finished samples to .resume/<model>.rank<k>.jsonl;
    gather    rank 0 receives every rank's records and timing (one gather) and writes
              results.json, samples.jsonl and figures exactly as a single process would.

Samples that feed a probe's running statistics (`stateful`) all go to rank 0, which alone
keeps the state, in the same order as a single process. A single process reads and writes
.resume/<model>.jsonl; every run reads all of a model's resume files, so a rerun with any
number of ranks reuses every finished sample. A rank that raises prints its rank and exits;
torchrun stops the others, and collectives time out after DIFFEVAL_DIST_TIMEOUT seconds
(default 3600) should a peer on another node vanish. Multi-node runs need --out on a file
system every node sees (resume files and arrays are written by the ranks).

The launcher's environment is read once per process into a `Launch` (diffeval/launch.py, with
`is_main` and `rank_tag`, re-exported here), which `World.join` takes. Importing this module
imports no torch."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from diffeval.errors import UsageError
from diffeval.launch import Launch, PeerFailed, is_main, launch, rank_tag  # noqa: F401 (is_main, rank_tag: for callers)

TIMEOUT_ENV = "DIFFEVAL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600
_STATE_GROUP = "\0state"  # the group of stateful samples: always rank 0


def resume_path(stem: Path, rank: int, size: int) -> Path:
    """The resume file this process appends to: <stem>.jsonl alone, <stem>.rank<k>.jsonl in a job."""
    return stem.parent / (f"{stem.name}.jsonl" if size == 1 else f"{stem.name}.rank{rank}.jsonl")


def resume_files(stem: Path) -> list[Path]:
    """Every resume file of `stem`, whatever world size wrote it: <stem>.jsonl, <stem>.rank<k>.jsonl."""
    if not stem.parent.is_dir():
        return []
    pattern = re.compile(re.escape(stem.name) + r"(\.rank\d+)?\.jsonl")
    return sorted(p for p in stem.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def request_tokens(req) -> int:
    """Tokens a request runs through the model (its prompt or ids, plus Choice candidates)."""
    ids = getattr(req, "prompt", None) or getattr(req, "ids", None) or ()
    return len(ids) + sum(len(c) for c in getattr(req, "candidates", None) or ())


def plan(groups: dict[str, tuple[int, str]], size: int) -> dict[str, int]:
    """Rank of each group, from {group: (weight in tokens, content key)}: the stateful group
    on rank 0, then heaviest first onto the least-loaded rank (lowest rank on ties), groups of
    equal weight in content-key order. Deterministic; max load <= mean + the heaviest group."""
    load = [0] * size
    owner: dict[str, int] = {}
    if _STATE_GROUP in groups:
        owner[_STATE_GROUP] = 0
        load[0] += groups[_STATE_GROUP][0]
    for g in sorted((g for g in groups if g != _STATE_GROUP), key=lambda g: (-groups[g][0], groups[g][1])):
        r = min(range(size), key=lambda k: (load[k], k))
        owner[g] = r
        load[r] += groups[g][0]
    return owner


@dataclass
class World:
    """This process's place in the job and what its ranks did (for results.json `timing`).
    `World.join(device)` inside torchrun initialises the process group once per process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    group: Any = None  # the gloo group the records travel in (None: the default group)
    ranks: dict[int, dict] = field(default_factory=dict)  # rank -> accumulated timing (rank 0 holds all)
    nodes: int = 1

    @classmethod
    def join(cls, device: str, place: Optional[Launch] = None) -> "World":
        """This process's World (`place`: this process's Launch unless given)."""
        place = place or launch()
        rank, size, local = place.rank, place.size, place.local_rank
        if size == 1:
            return cls()
        if device.startswith("cuda"):
            if device != "cuda":
                raise UsageError(f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; "
                                 "pass --device cuda or auto")
            import torch

            if local >= torch.cuda.device_count():
                raise UsageError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); "
                                 "use --nproc-per-node <= the GPU count")
            torch.cuda.set_device(local)  # "cuda" now means cuda:LOCAL_RANK for this process
        backend = "nccl" if device.startswith("cuda") else "gloo"
        return cls(rank, size, local, backend, _init_group(backend), nodes=place.nodes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def resume_cache(self, stem: Path):
        """The cache this rank appends to, holding the finished samples of every resume file of `stem`."""
        from diffeval.results import ResumeCache

        cache = ResumeCache(resume_path(stem, self.rank, self.size))
        for path in resume_files(stem):
            if path != cache.path:
                cache.done.update(ResumeCache(path).done)
        return cache

    def assign(self, todo: list[int], keys: Sequence[str], samples: Sequence, work: Sequence[Sequence],
               group: Optional[Callable[[Any], Optional[str]]], stateful: Sequence[bool]) -> tuple[list[int], int]:
        """(this rank's share of the unfinished samples `todo`, how many are unfinished in all)."""
        if self.size == 1:
            return todo, len(todo)
        import torch.distributed as tdist

        views: list = [None] * self.size
        _collective("agreeing on the unfinished samples", tdist.all_gather_object, views, todo, group=self.group)
        todo = sorted(set().union(*views))  # unfinished for any rank: every rank agrees on the list
        of: dict[int, str] = {}
        groups: dict[str, tuple[int, str]] = {}
        for i in todo:
            g = _STATE_GROUP if stateful[i] else (group(samples[i]) if group else None) or keys[i]
            weight, key = groups.get(g, (0, keys[i]))
            groups[g] = (weight + sum(request_tokens(r) for r in work[i]), min(key, keys[i]))
            of[i] = g
        owner = plan(groups, self.size)
        return [i for i in todo if owner[of[i]] == self.rank], len(todo)

    def gather(self, cache, mine: Sequence[str], counters, wall: float, device: str):
        """Send this rank's new records (keys `mine`) and engine counters to rank 0, which adds
        them to its `cache`. Returns (counters summed over ranks, slowest rank's wall) on rank
        0, None elsewhere."""
        from diffeval.results import peak_memory_mb

        part = {"records": {k: cache.get(k) for k in mine}, "counters": _numbers(counters), "wall": wall,
                "memory": peak_memory_mb(device), "host": socket.gethostname(), "device": _device_name(device)}
        parts = [part]
        if self.size > 1:
            import torch.distributed as tdist

            parts = [None] * self.size if self.is_main else None
            _collective("gathering the records", tdist.gather_object, part, parts, dst=0,
                        group=self.group)
            if not self.is_main:
                return None
        total = {}
        for k, p in enumerate(parts):
            cache.done.update(p["records"])
            self._log(k, p)
            total = _add(total, p["counters"])
        return type(counters)(**total), max(p["wall"] for p in parts)

    def share(self, results: Optional[dict]) -> dict:
        """Rank 0's results on every rank."""
        if self.size == 1:
            return results
        import torch.distributed as tdist

        box = [results]
        _collective("waiting for rank 0's results", tdist.broadcast_object_list, box, src=0,
                    group=self.group)
        return box[0]

    def timing(self) -> list[dict]:
        """Per-rank wall time (model compute, summed over models), samples and tokens."""
        return [self.ranks[k] for k in sorted(self.ranks)]

    def provenance(self) -> dict:
        return {"world_size": self.size, "nnodes": self.nodes, "dist_backend": self.backend}

    def _log(self, rank: int, part: dict) -> None:
        c = part["counters"]
        row = self.ranks.setdefault(rank, {"rank": rank, "host": part["host"], "device": part["device"],
                                           "wall_seconds": 0.0, "samples": 0, "prompt_tokens": 0,
                                           "prefilled_tokens": 0, "generated_tokens": 0})
        row["wall_seconds"] = round(row["wall_seconds"] + part["wall"], 3)
        row["samples"] += len(part["records"])
        for name in ("prompt_tokens", "prefilled_tokens", "generated_tokens"):
            row[name] += int(c.get(name, 0))
        for name, mb in part["memory"].items():
            row[name] = max(row.get(name, 0.0), mb)


def _collective(what: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except RuntimeError as exc:  # gloo / NCCL: a peer closed its connection, or the timeout passed
        raise PeerFailed(f"another rank stopped or timed out while {what} ({' '.join(str(exc).split())[:200]}); "
                         "its own message names it; finished samples are kept (rerun to resume)") from exc


_OBJECTS: dict[str, Any] = {}  # backend -> the group for Python objects, made once per process


def _init_group(backend: str):
    """Initialise the default process group from torchrun's environment (once per process) and
    return the group the records travel in: the default group with gloo; with NCCL a gloo group
    beside it, since records are Python objects on the CPU and gloo notices a vanished peer
    (its connection closes) where NCCL waits for the timeout."""
    import atexit
    import datetime

    import torch.distributed as tdist

    try:
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r}: give seconds, e.g. 3600") from None
    if not tdist.is_initialized():
        tdist.init_process_group(backend, timeout=timeout)
        atexit.register(tdist.destroy_process_group)
    if backend not in _OBJECTS:
        if tdist.get_backend() != backend:
            raise UsageError(f"this job's process group uses {tdist.get_backend()}; a run on another device "
                             f"type would need {backend}: use one --device per torchrun job")
        _OBJECTS[backend] = tdist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return _OBJECTS[backend]


def _numbers(obj) -> dict:
    """A counters dataclass as a dict of its numeric fields (nested dicts kept)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if isinstance(getattr(obj, f.name), (int, float, dict))}


def _add(a: dict, b: dict) -> dict:
    """Field-wise sum of two counter dicts (numbers, or dicts of numbers)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _add(out.get(k, {}), v) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return device
