"""Result files: the results contract (schema v2, shipped as results.schema.json), provenance,
atomic writes, safe file names, and the per-sample resume cache."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


def utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def default_out(probe: str) -> Path:
    return Path("runs") / f"{probe}-{utc_stamp()}"


def write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _git_sha() -> Optional[str]:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def safe_name(text: str, limit: int = 40) -> str:
    """A short file-name-safe slug of `text`, with a hash suffix when anything was changed
    or cut, so distinct texts give distinct names and none leaves its folder."""
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"
    if slug == text and len(slug) <= limit:
        return slug
    return f"{slug[:limit].rstrip('-.')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(seed: Optional[int], device: str) -> dict[str, Any]:
    import torch

    from diffeval import __version__

    return {
        "diffeval_version": __version__,
        "git_sha": _git_sha(),
        "argv": list(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine(),
        "seed": seed,
        "launcher": "torchrun" if os.environ.get("TORCHELASTIC_RUN_ID") else "python",
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (checkpoint sha, task parameters, sample)."""
    blob = json.dumps(parts, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class ResumeCache:
    """Append-only JSONL of finished samples, keyed by content. Each line is flushed and
    fsynced as it is written, so an interrupted run keeps every finished sample."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash mid-write: that sample is redone
                    self.done[row["key"]] = row["value"]
        self._f = None

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def get(self, key: str) -> dict:
        return self.done[key]

    def put(self, key: str, value: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps({"key": key, "value": value}, default=_json_default) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[key] = value

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak memory so far: CUDA allocator peak on GPU; process max RSS on the CPU."""
    import resource

    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def read_results(run_dir: Path) -> dict:
    """results.json of a run folder."""
    path = Path(run_dir) / "results.json"
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_samples(run_dir: Path) -> list[dict]:
    """samples.jsonl of a run folder."""
    with open(Path(run_dir) / "samples.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
