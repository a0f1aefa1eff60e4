"""Result files: the results contract (schema v2, shipped as results.schema.json), provenance,
atomic writes, safe file names, and the per-sample resume cache."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import stat
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterable, Optional

from diffeval.errors import UsageError
from diffeval.version import __version__

log = logging.getLogger("diffeval")

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


def utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def default_out(name: str) -> Path:
    """runs/<name>-<UTC time>: `name` (a probe's or a task's) made a plain, short file name, so
    that no name ('../x', '/abs', 300 characters) leads outside runs/."""
    return Path("runs") / f"{safe_name(name, 80)}-{utc_stamp()}"


@contextmanager
def atomic_path(path: Path, follow: bool = False):
    """Yield a path to write `path` through; a write that fails for the file system's reasons
    (no space, no permission, read-only, a name too long) is one UsageError naming the file.

    Over no file or a regular file the yielded path is a fresh temporary file beside it,
    renamed over `path` on success and removed on any failure. Any other target (a device, a
    pipe) is yielded itself and written in place: a rename would replace it. A symlink is
    never followed for a file the run owns (`follow=False`: the link itself is replaced);
    a target the user named (`follow=True`: `--junit out.xml`) is written where it leads."""
    path = Path(path)
    try:
        target, in_place = _write_target(path, follow)
        if in_place:
            yield target
            return
        tmp = target.with_name(target.name + ".tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _fresh_file(tmp)
            yield tmp
            os.replace(tmp, target)
        finally:
            with suppress(OSError):
                if tmp.is_symlink() or tmp.is_file():
                    tmp.unlink()
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _write_target(path: Path, follow: bool) -> tuple[Path, bool]:
    """(where to write, whether in place) for `path`: see atomic_path."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path, False
    if stat.S_ISLNK(st.st_mode):
        if not follow:
            return path, False
        try:
            st = os.stat(path)
        except FileNotFoundError:  # a dangling link: create what it names
            return path, True
        return (Path(os.path.realpath(path)), False) if stat.S_ISREG(st.st_mode) else (path, True)
    return path, not stat.S_ISREG(st.st_mode)


def _fresh_file(path: Path) -> None:
    """Create `path` as a new empty regular file, removing whatever entry held the name (a
    stale temporary file, a planted symlink: it is removed, never followed)."""
    with suppress(FileNotFoundError):
        if not path.is_dir() or path.is_symlink():
            path.unlink()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644))


def open_owned(path: Path, mode: str = "a"):
    """Open a file the run owns (a lock, a resume log) for appending or updating, never
    through a symlink: a link in its place is an OSError naming it (its target is left alone)."""
    import errno

    path = Path(path)
    if path.is_symlink():
        raise OSError(errno.ELOOP, f"{path.name} is a symlink; not followed (remove it)")
    flags = os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    if mode.startswith("a"):
        flags |= os.O_APPEND
    return os.fdopen(os.open(path, flags, 0o644), mode, encoding="utf-8")


RUN_FILES = ("results.json", "samples.jsonl", "prompts.jsonl")


def run_identity(probe: str, params: dict, run: dict, specs: list[str]) -> dict[str, Any]:
    """What a run folder's results are results of: the probe, its parameters, the run settings
    and the checkpoints (as JSON would read them back)."""
    return json.loads(json.dumps({"probe": probe, "params": params, "run": run, "models": list(specs)},
                                 default=_json_default))


IDENTITY_WORDS = {"probe": "probe", "params": "parameters", "run": "run settings", "models": "models"}


def _identity_of(results: dict) -> dict[str, Any]:
    return {"probe": results.get("probe"), "params": (results.get("task") or {}).get("params"),
            "run": results.get("run"), "models": [m.get("spec") for m in results.get("models") or []
                                                   if isinstance(m, dict)]}


@contextmanager
def claimed_out(out: Path, identity: dict[str, Any], overwrite: bool = False, flag: str = "--out"):
    """Claim the run folder `out` before any model is loaded: it must be a folder this process
    can create and write; it must not hold another run's results (another probe, parameters,
    run settings or models) unless `overwrite`, which removes those files; and no other
    diffeval run may be writing into it (a lock, released on exit). An empty `identity` (a
    training run) skips the results check. On failure, temporary files
    are removed, and so are the folder and parents this call created when nothing was kept."""

    out = Path(out)
    where = f"{flag} {out}"
    results = out / "results.json"
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"{where}: exists and is not a folder")
        results.exists()
    except OSError as exc:  # a name too long, a loop of links
        raise UsageError(f"{where}: cannot write there ({exc.strerror or exc})") from None
    if identity and results.exists():
        try:
            old = _identity_of(json.loads(results.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            old = None
        if old != identity and not overwrite:
            what = ("a results.json diffeval cannot read" if old is None else
                    "results of another run (its " + ", ".join(IDENTITY_WORDS.get(k, k) for k in identity
                                                              if old.get(k) != identity[k]) + " differ)")
            raise UsageError(f"{where}: holds {what}; pass --overwrite to replace them, or choose another {flag}")
    created = [p for p in (out, *out.parents) if not p.exists()]
    lock = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(out).free < MIN_FREE:
            raise UsageError(f"{where}: no space left on the device ({shutil.disk_usage(out).free:,} bytes free)")
        lock = _take_lock(out, where, flag)
    except OSError as exc:
        _release(lock, out, created)
        raise UsageError(f"{where}: cannot write there ({exc.strerror or exc})") from None
    except BaseException:
        _release(lock, out, created)
        raise
    if identity and results.exists() and overwrite:
        _remove_run_files(out)
    try:
        yield out
    except BaseException:
        for tmp in out.rglob("*.tmp"):
            with suppress(OSError):
                tmp.unlink()
        _release(lock, out, created)
        raise
    _release(lock, out, [])


def _take_lock(out: Path, where: str, flag: str):
    """The lock file of `out`, locked and holding this process's id; UsageError naming the
    holder when another run has it."""
    import fcntl

    lock = open_owned(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UsageError(f"{where}: another diffeval run (pid {holder[:20]}) is writing into it; "
                         f"wait for it to finish or choose another {flag}") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


MIN_FREE = 1 << 20  # bytes: below this a run could not even write its results


def _release(lock, out: Path, created: list[Path]) -> None:
    """Unlock `out` and remove the lock file; remove the folders in `created` left empty."""
    if lock is not None:
        with suppress(OSError):
            (out / ".lock").unlink()
        lock.close()
    for folder in created:
        with suppress(OSError):
            folder.rmdir()  # only when empty


def _remove_run_files(out: Path) -> None:
    """The files of the run that --overwrite replaces (the resume cache is keyed by content and
    stays: it can never feed stale outputs)."""
    try:
        figures = json.loads((out / "results.json").read_text(encoding="utf-8"))["artifacts"]["figures"]
    except (OSError, ValueError, KeyError, TypeError):
        figures = []
    for name in [*RUN_FILES, *(f for f in figures if isinstance(f, str))]:
        target = out / name
        if target.parent == out and target.is_file():
            target.unlink()


def out_folder(path: Path, flag: str = "--out") -> Path:
    """`path` as a folder to write into: refused when it exists and is something else."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    return path


def write_atomic(path: Path, text: str, follow: bool = False) -> None:
    """Write text to `path` through atomic_path (a temporary file renamed over it, or in place
    over a device or pipe; `follow`: a target the user named, see atomic_path)."""
    with atomic_path(path, follow) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a device or pipe has nothing to sync
                os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (no NaN or Infinity: a number that is not finite is written as null)."""
    write_atomic(path, json.dumps(finite(data), indent=2, sort_keys=False, default=_json_default,
                                  allow_nan=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(finite(r), default=_json_default, allow_nan=False) + "\n" for r in rows))


def finite(obj: Any) -> Any:
    """`obj` with every float that is NaN or infinite replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return finite(obj.tolist())
    return obj


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
    return f"{slug[:limit].rstrip('-.')}-{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def provenance(seed: Optional[int], device: str) -> dict[str, Any]:
    import torch

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
    fsynced as it is written, so an interrupted run keeps every finished sample. Damaged lines
    (cut by a kill, not JSON, not UTF-8, a record without the sample fields) are skipped with
    one warning and their samples recomputed."""

    REQUIRED = ("id", "n_tokens", "prediction", "score")  # the sample fields of the results schema

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        self.skipped = 0
        self._f = None
        if path.is_dir():
            raise UsageError(f"{path}: the resume file is a directory; move it away and rerun "
                             "(its samples are recomputed)")
        try:
            # a link in its place is not the run's file: not read, and refused at the first write
            data = path.read_bytes() if path.exists() and not path.is_symlink() else b""
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the resume file ({exc.strerror or exc}); move it away "
                             "and rerun (its samples are recomputed)") from None
        self._cut = bool(data) and not data.endswith(b"\n")
        for line in data.splitlines():
            row = _record(line)
            if row is None or not all(k in row[1] for k in self.REQUIRED):
                self.skipped += line.strip() != b""
                continue
            self.done[row[0]] = row[1]
        if self.skipped:
            log.warning("%s: %d damaged record(s) skipped; their samples are recomputed", path, self.skipped)

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def get(self, key: str) -> dict:
        return self.done[key]

    def put(self, key: str, value: dict, keep: bool = True) -> None:
        """Add a finished sample; `keep=False`: for this run only (a rerun computes it again)."""
        if not keep:
            self.done[key] = value
            return
        try:
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open_owned(self.path, "a")
                if self._cut:  # a line cut by a crash: end it so the next record starts clean
                    self._f.write("\n")
            self._f.write(json.dumps({"key": key, "value": value}, default=_json_default) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        self.done[key] = value

    def close(self) -> None:
        if self._f is not None:
            with suppress(OSError):
                self._f.close()
            self._f = None


def _record(line: bytes) -> Optional[tuple[str, dict]]:
    """(key, value) of one resume line, or None when the line is damaged."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not isinstance(row.get("value"), dict):
        return None
    return row["key"], row["value"]


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
