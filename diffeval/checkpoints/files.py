"""Reading weight files: safetensors (single or sharded) by default; pickles only on opt-in."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffeval.errors import CheckpointError, shown
from diffeval.hashing import file_sha256
from diffeval.paths import confined
from diffeval.yamlio import read_json

PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "consolidated.pt")


@dataclass
class WeightFiles:
    """Tensors by their name in the file, and which file each came from."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, Path] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def sha256(self) -> tuple[str, str]:
        """(one digest for the whole set: sha256 of the single file, or of 'name:digest' lines;
        "cache" when every file's digest came from the hash cache, else "read")."""
        hashed = {p.name: cached_sha256(p) for p in self.files}
        source = "cache" if all(src == "cache" for _, src in hashed.values()) else "read"
        digests = {name: digest for name, (digest, _) in hashed.items()}
        if len(digests) == 1:
            return next(iter(digests.values())), source
        joined = "\n".join(f"{n}:{d}" for n, d in sorted(digests.items()))
        return hashlib.sha256(joined.encode("utf-8", "surrogateescape")).hexdigest(), source


def cache_dir() -> Path:
    """diffeval's cache folder: $DIFFEVAL_CACHE_DIR, else $XDG_CACHE_HOME/diffeval, else ~/.cache/diffeval."""
    if os.environ.get("DIFFEVAL_CACHE_DIR"):
        return Path(os.environ["DIFFEVAL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffeval"


def cached_sha256(path: Path) -> tuple[str, str]:
    """(sha256 of a weight file, "cache" | "read"). Reading gigabytes on every run is most of
    the fixed cost of a short one, so digests are kept under cache_dir()/sha256, keyed by the
    resolved path and valid while size, mtime, ctime and inode are unchanged (a rewrite
    changes ctime even when it keeps size and mtime)."""
    path = path.resolve()
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
             "inode": st.st_ino}
    entry = cache_dir() / "sha256" / f"{hashlib.sha256(os.fsencode(path)).hexdigest()[:32]}.json"
    try:
        saved = json.loads(entry.read_text())
        if isinstance(saved, dict) and {k: saved.get(k) for k in stamp} == stamp and _is_sha256(saved.get("sha256")):
            return saved["sha256"], "cache"
    except (OSError, ValueError):
        pass  # no entry, or an unreadable one: hash the file
    digest = file_sha256(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "sha256": digest}))
        tmp.replace(entry)
    except OSError:
        pass  # a read-only cache only costs the next run a re-read
    return digest, "read"


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_safetensors(path: Path, out: WeightFiles) -> None:
    from safetensors import SafetensorError

    readable(path, "weight file")
    try:
        with _opened(path) as f:
            for name in f.keys():
                if name in out.tensors:
                    raise CheckpointError(f"{path}: tensor {name!r} also in {out.origin[name]}")
                out.tensors[name] = check_finite(f.get_tensor(name), name, path)
                out.origin[name] = path
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); truncated or corrupt?") from None
    out.files.append(path)


def _opened(path: Path):
    """safe_open(path), also for a path the file system gave in bytes that are not UTF-8 (a
    unicode name under a C locale): safetensors takes text paths only, so such a file is
    opened here and handed over as /proc/self/fd/N where that exists."""
    from contextlib import contextmanager

    from safetensors import safe_open

    try:
        str(path).encode("utf-8")
        return safe_open(str(path), framework="pt")
    except UnicodeEncodeError:
        pass

    @contextmanager
    def by_descriptor():
        fd = os.open(path, os.O_RDONLY)
        try:
            with safe_open(f"/proc/self/fd/{fd}", framework="pt") as f:
                yield f
        finally:
            os.close(fd)

    return by_descriptor()


def readable(path: Path, what: str) -> None:
    """A regular file this process may read; CheckpointError saying which of these it is not."""
    if not path.exists():
        raise CheckpointError(f"{path}: {what} missing")
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is a {'directory' if path.is_dir() else 'special file'}, not a file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied (cannot read the {what})")


def check_finite(t: torch.Tensor, name: str, path: Path) -> torch.Tensor:
    """The tensor, unless it holds NaN or infinity (a corrupt or bit-flipped file): those
    would score as a silently broken model, so they are refused naming the tensor."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{path}: tensor {name!r} holds {bad} non-finite value(s) (NaN or infinity); "
                              "the file is corrupt or the weights diverged")
    return t


def safe_torch_load(path: Path):
    """torch.load(weights_only=True) without torch's own warning lines; any refusal (an unsafe
    global, a truncated or foreign file) is one CheckpointError naming the file."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad, truncated or unsafe pickle
            raise CheckpointError(f"{path}: cannot load with weights_only=True ({_pickle_reason(exc)})") from None


def _pickle_reason(exc: Exception) -> str:
    """The line of torch's refusal that says why (its message is a page of advice)."""
    import re

    text = str(exc)
    code = re.search(r"GLOBAL\s+([\w.]+)", text)
    if code:
        return f"it calls {code.group(1)}: code, not weights; refused"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:100]}" if lines else type(exc).__name__


def safetensors_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: the shards its index names, else
    model.safetensors, else every *.safetensors; [] when it has none."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, "", CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: not a valid shard index (no weight_map of tensor -> file)")
        shards = sorted(set(weight_map.values()))
        return [confined(directory, shard, f"{index}: shard", CheckpointError) for shard in shards]
    single = directory / "model.safetensors"
    return [single] if single.exists() else sorted(directory.glob("*.safetensors"))


def read_weights(directory: Path, allow_pickle: bool = False) -> WeightFiles:
    """All weight tensors of a checkpoint directory."""
    out = WeightFiles()
    paths = safetensors_files(directory)
    for path in paths:
        _read_safetensors(path, out)
    index = directory / "model.safetensors.index.json"
    if paths and index.exists():
        weight_map = read_json(index, "", CheckpointError)["weight_map"]
        missing = sorted(set(weight_map) - set(out.tensors))
        if missing:
            raise CheckpointError(f"{index}: tensor {missing[0]!r} listed for {weight_map[missing[0]]} but not in it")
    if paths:
        return out
    pickles = [directory / n for n in PICKLE_NAMES if (directory / n).exists()]
    if pickles:
        if not allow_pickle:
            raise CheckpointError(
                f"{pickles[0]}: pickle checkpoints can run code and are refused; convert to "
                "safetensors or pass --allow-pickle (loads with torch.load(weights_only=True))"
            )
        for path in pickles:
            readable(path, "weight file")
            state = safe_torch_load(path)
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
            for name, t in state.items():
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{path}: entry {shown(name)} is a {type(t).__name__}, not a tensor")
                out.tensors[name] = check_finite(t, name, path)
                out.origin[name] = path
            out.files.append(path)
        return out
    raise CheckpointError(f"{directory}: no weights (model.safetensors or model.safetensors.index.json)")
