"""load(spec) -> Loaded(model, tokenizer, info); save(model, dir). One module per format:
native.py, hf.py, unilm.py (DIFF V1 in Microsoft's reference layout, converted at load) and
unilm_v2.py (DIFF V2 in Microsoft's reference layout, converted at load)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from diffeval.checkpoints import hf, native, unilm, unilm_v2
from diffeval.checkpoints.files import read_weights
from diffeval.checkpoints.zoo import tokenizer_dir, zoo_path
from diffeval.errors import CheckpointError, did_you_mean
from diffeval.models.config import ModelConfig
from diffeval.models.decoder import Decoder
from diffeval.tokenizers import ByteTokenizer, load_tokenizer
from diffeval.yamlio import read_json

FORMATS = {"native": native, "hf": hf, "unilm": unilm, "unilm-v2": unilm_v2}
REFERENCE_LAYOUTS = ("unilm", "unilm-v2")  # read under any config (--format); converted at load
ARCHITECTURE_NAMES = {"unilm": "unilm Diff-Transformer", "unilm-v2": "unilm Diff-Transformer-V2"}


@dataclass
class CheckpointInfo:
    spec: str
    path: str
    format: str
    architecture: str
    family: str
    n_params: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_value: int
    d_model: int
    d_ff: int
    vocab_size: int
    max_seq_len: int
    rope: dict[str, Any]
    tie_embeddings: bool
    dtype: str
    backend: str
    tokenizer: str
    files: list[str]
    sha256: str
    sha256_from: str = "read"  # "cache": taken from the hash cache (path, size, mtime, ctime, inode unchanged)
    config: dict[str, Any] = field(default_factory=dict)
    config_sha256: Optional[str] = None  # of config.json: edits that keep the weights still count
    tokenizer_sha256: Optional[str] = None  # of tokenizer.json and tokenizer_config.json
    engine: str = "native"  # the code that runs the model: native (diffeval's) | hf (transformers)
    engine_version: Optional[str] = None  # "transformers 5.x.y" under --engine hf

    def fingerprint(self) -> dict[str, Any]:
        """Everything about the loaded model that changes its outputs (for resume keys)."""
        out = {"sha256": self.sha256, "config_sha256": self.config_sha256,
               "tokenizer_sha256": self.tokenizer_sha256, "dtype": self.dtype, "backend": self.backend}
        if self.engine != "native":  # native keys stay what they were before other engines existed
            out.update(engine=self.engine, engine_version=self.engine_version)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Loaded:
    model: Decoder
    tokenizer: Any
    info: CheckpointInfo


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _files_sha256(paths: list[Path]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for p in paths:
        if p.is_file():
            digest.update(os.fsencode(p.name) + b"\0" + p.read_bytes())
    return digest.hexdigest()


def resolve_spec(spec: str) -> Path:
    if spec.startswith("zoo:"):
        return zoo_path(spec[4:])
    path = Path(spec).expanduser()
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:  # e.g. a parent folder without search permission
        raise CheckpointError(f"{spec}: cannot look at it ({exc.strerror or exc})") from None
    if not exists:
        raise CheckpointError(f"{spec}: no such checkpoint directory")
    if not is_dir:
        raise CheckpointError(f"{spec}: a checkpoint is a directory (config.json + *.safetensors)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CheckpointError(f"{spec}: permission denied (cannot list the checkpoint directory)")
    return path


def read_config(directory: Path) -> tuple[str, ModelConfig, dict[str, Any]]:
    """(format of config.json: native | hf | unilm | unilm-v2, its ModelConfig, the raw JSON)."""
    path = directory / "config.json"
    if not path.exists() and not path.is_symlink() and os.access(directory, os.R_OK | os.X_OK):
        raise CheckpointError(f"{path}: missing (a checkpoint directory needs config.json)")
    raw = read_json(path, "", CheckpointError)
    fmt = ("unilm" if unilm.is_unilm_config(raw) else "unilm-v2" if unilm_v2.is_config(raw)
           else "native" if "family" in raw else "hf")
    try:
        return fmt, FORMATS[fmt].config_from(raw, path), raw
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as exc:  # a value of the wrong type
        raise CheckpointError(f"{path}: a field has a value of the wrong type ({exc})") from None


def position_limit(spec: str) -> int:
    """The position limit of a checkpoint from its config.json alone: diffeval's reading of it,
    or for an architecture only transformers implements (--engine hf) its max_position_embeddings."""
    directory = resolve_spec(spec)
    try:
        return read_config(directory)[1].max_seq_len
    except CheckpointError:
        raw = read_json(directory / "config.json", "", CheckpointError)
        limit = raw.get("max_position_embeddings")
        if "family" in raw or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise
        return limit


def _layout(fmt: str, requested: Optional[str], tensors: dict[str, torch.Tensor], directory: Path) -> str:
    """The weight layout to read: --format when given, else the config's format, switched to
    unilm-v2 / unilm when the tensor names are a reference layout's (an attention `out_proj`,
    with / without a `lambda_proj`). DIFF V2 reference weights named `o_proj` look like native
    diff2 ones: only "format": "unilm-v2" or --format unilm-v2 reads them so."""
    if requested is not None:
        if requested not in FORMATS:
            raise CheckpointError(f"--format {requested!r}: " + did_you_mean(requested, FORMATS))
        if requested not in REFERENCE_LAYOUTS and requested != fmt:
            raise CheckpointError(f"{directory}: --format {requested} but config.json is in the {fmt} format")
        if requested == "unilm" and not unilm.detect(tensors):
            raise CheckpointError(f"{directory}: --format unilm but no attention tensor 'out_proj' (not the "
                                  "reference layout)")
        if requested == "unilm-v2" and not unilm_v2.has_lambda_proj(tensors):
            raise CheckpointError(f"{directory}: --format unilm-v2 but no attention tensor 'lambda_proj' (not DIFF "
                                  "V2 weights)")
        return requested
    if fmt == "unilm-v2" or unilm_v2.detect(tensors):
        if not unilm_v2.has_lambda_proj(tensors):
            raise CheckpointError(f"{directory}: config.json says \"format\": \"unilm-v2\" but there is no attention "
                                  "tensor 'lambda_proj' (not DIFF V2 weights)")
        return "unilm-v2"
    if fmt == "unilm" and not unilm.detect(tensors):  # read as unilm, native tensors load scrambled
        raise CheckpointError(f"{directory}: config.json says \"format\": \"unilm\" but the attention tensors are "
                              "not in the reference layout (no 'out_proj'); write a native or Hugging Face config")
    return "unilm" if fmt == "unilm" or unilm.detect(tensors) else fmt


def _state_dict(weights, mapping: dict[str, str], model: Decoder, fmt) -> dict[str, torch.Tensor]:
    """Validated state dict for `model`: every tensor present, of the right shape, none extra."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for native_name, file_name in mapping.items():
        if native_name not in expected:
            raise CheckpointError(f"{weights.origin[file_name]}: unexpected tensor {file_name!r}")
    inverse_missing = sorted(set(expected) - set(mapping))
    if inverse_missing:
        where = weights.files[0].parent if weights.files else "checkpoint"
        raise CheckpointError(f"{where}: missing tensor {fmt.file_name(inverse_missing[0])!r}")
    out = {}
    for native_name, file_name in mapping.items():
        t = weights.tensors[file_name]
        if tuple(t.shape) != expected[native_name]:
            raise CheckpointError(
                f"{weights.origin[file_name]}: tensor {file_name!r} has shape {tuple(t.shape)}, "
                f"expected {expected[native_name]}"
            )
        if not t.is_floating_point():
            raise CheckpointError(f"{weights.origin[file_name]}: tensor {file_name!r} has dtype {t.dtype}")
        out[native_name] = t
    return out


def load(
    spec: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    allow_pickle: bool = False,
    require_tokenizer: bool = False,
    length: Optional[int] = None,
    allow_beyond_memory: bool = False,
    format: Optional[str] = None,
) -> Loaded:
    """Load a checkpoint: `zoo:NAME`, a native directory, or a Hugging Face directory.
    Returns Loaded(model in eval mode on `device`/`dtype`, tokenizer, info). A Hugging Face
    directory without tokenizer.json loads for forward passes with tokenizer None (an error
instead when `require_tokenizer`); probes that need text say so in one line. `format`
    ("native", "hf", "unilm", "unilm-v2") overrides detection: unilm reads DIFF V1 weights in
    Microsoft's reference layout (with a native, Hugging Face or unilm config.json), unilm-v2
    DIFF V2 weights in its V2 reference layout (with a native diff2 or unilm-v2 config.json). Before any
    weight is read, the memory the model needs (parameters, and the KV cache at `length`
    tokens when given) is compared with the device's: more is refused unless
    `allow_beyond_memory`. Weights holding NaN or infinity, and logits that are not finite on
    a first short forward pass, are refused naming the checkpoint."""
    directory = resolve_spec(spec)
    fmt, cfg, raw = read_config(directory)
    check_memory(cfg, dtype, device, length, allow_beyond_memory, spec)
    weights = read_weights(directory, allow_pickle=allow_pickle)
    layout = _layout(fmt, format, weights.tensors, directory)
    cfg, weights = FORMATS[layout].convert(weights, cfg, raw)  # each layout made internal (native: as it is)
    mapping = FORMATS[layout].map_state(weights.tensors, cfg)
    with torch.device("meta"):
        model = Decoder(cfg)
    state = _state_dict(weights, mapping, model, FORMATS[layout])
    model.load_state_dict(state, assign=True, strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    model.set_backend(backend, device)
    _check_first_forward(model, directory, dtype)
    tok_dir = tokenizer_dir(directory)
    tokenizer, arch = _tokenizer(directory, tok_dir, fmt, raw, cfg, require_tokenizer)
    info = _info(spec, directory, fmt, layout, arch, cfg, model, dtype, tokenizer, tok_dir, weights)
    return Loaded(model, tokenizer, info)


def _tokenizer(directory: Path, tok_dir: Path, fmt: str, raw: dict, cfg: ModelConfig, require: bool):
    """The checkpoint's tokenizer (None: a Hugging Face directory without one) and its
    architecture name; a tokenizer that emits ids beyond the vocabulary is refused."""
    if fmt in ("hf", *REFERENCE_LAYOUTS):
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        tokenizer = load_tokenizer(tok_dir, eos_ids, label=directory.name)
        if tokenizer is None and require:
            raise CheckpointError(f"{directory / 'tokenizer.json'}: missing ({fmt} checkpoints need it)")
        arch = hf.architecture(raw, directory / "config.json") if fmt == "hf" else ARCHITECTURE_NAMES[fmt]
    else:
        tokenizer = load_tokenizer(tok_dir, label=directory.name)
        if tokenizer is None and raw.get("tokenizer") == "tokenizer.json":
            raise CheckpointError(f"{directory / 'tokenizer.json'}: missing (config.json says the model was saved "
                                  "with it; copy it next to config.json)")
        tokenizer = tokenizer or ByteTokenizer()
        arch = "diffeval"
    if tokenizer is not None and tokenizer.max_id >= cfg.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer can emit id {tokenizer.max_id} but the model's vocab_size is "
            f"{cfg.vocab_size} (ids 0..{cfg.vocab_size - 1}); tokenizer and weights do not belong together"
        )
    return tokenizer, arch


def _info(spec: str, directory: Path, fmt: str, layout: str, arch: str, cfg: ModelConfig, model, dtype,
          tokenizer, tok_dir: Path, weights) -> CheckpointInfo:
    digest, digest_from = weights.sha256()
    info = CheckpointInfo(
        spec=spec,
        path=str(directory),
        format=fmt if layout == fmt else f"{fmt} config, {layout} weights",
        architecture=arch,
        family=cfg.family,
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        d_head=cfg.d_head,
        d_value=cfg.d_value,
        d_model=cfg.d_model,
        d_ff=cfg.d_ff,
        vocab_size=cfg.vocab_size,
        max_seq_len=cfg.max_seq_len,
        rope=cfg.rope.to_dict(),
        tie_embeddings=cfg.tie_embeddings,
        dtype=str(dtype).replace("torch.", ""),
        backend=model.backend.name,
        tokenizer=tokenizer.name if tokenizer is not None else "none",
        files=[p.name for p in weights.files],
        sha256=digest,
        sha256_from=digest_from,
        config=cfg.to_dict(),
        config_sha256=_files_sha256([directory / "config.json"]),
        tokenizer_sha256=(None if tokenizer is None else _files_sha256([tok_dir / n for n in TOKENIZER_FILES])
                          if hasattr(tokenizer, "path") else tokenizer.name),
    )
    return info


def memory_estimate(cfg: ModelConfig, dtype: torch.dtype, length: Optional[int] = None) -> int:
    """Bytes a model needs: its parameters in `dtype`, plus the KV cache of one `length`-token
    sequence (every layer's keys and values) when `length` is given."""
    size = torch.empty((), dtype=dtype).element_size()
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.d_head * (length or 0)
    return (cfg.n_params() + kv) * size


def device_memory(device: str | torch.device) -> Optional[int]:
    """Bytes of memory the device has for this process: the GPU's total on CUDA, the
    machine's available memory on the CPU; None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[1]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: ModelConfig, dtype: torch.dtype, device, length: Optional[int], allow: bool,
                 spec: str) -> None:
    """Refuse, with the estimate, a model (and KV cache) larger than the device's memory."""
    refuse_beyond_memory(memory_estimate(cfg, dtype, length), cfg.n_params(), dtype, device, length, allow, spec)


def refuse_beyond_memory(need: int, n_params: int, dtype: torch.dtype, device, length: Optional[int], allow: bool,
                         spec: str) -> None:
    """Refuse `need` bytes (n_params parameters, and a KV cache at `length`) beyond the device's memory."""
    have = device_memory(device)
    if allow or have is None or need <= have:
        return
    at = f" and a KV cache of {length:,} tokens" if length else ""
    raise CheckpointError(
        f"{spec}: needs about {need / 2**30:,.1f} GiB ({n_params:,} parameters in "
        f"{str(dtype).replace('torch.', '')}{at}) but {torch.device(device).type} has "
        f"{have / 2**30:,.1f} GiB available; pass --allow-beyond-memory to try anyway"
    )


def _check_first_forward(model: Decoder, directory: Path, dtype: torch.dtype) -> None:
    """A short forward pass must give finite logits: weights within range of `dtype` and a sane
    config (e.g. norm_eps) do; otherwise every score would be silent nonsense."""
    n = min(8, model.cfg.max_seq_len)
    device = next(model.parameters()).device
    ids = (torch.arange(n, device=device) % model.cfg.vocab_size)[None]  # (1, n)
    with torch.no_grad():
        logits = model(ids, logits="last")  # (1, 1, V)
    if not bool(torch.isfinite(logits).all()):
        raise CheckpointError(
            f"{directory}: a first forward pass gives non-finite logits under {str(dtype).replace('torch.', '')} "
            f"(backend {model.backend.name}); the weights overflow this dtype or the config is wrong"
        )


def save(model: Decoder, directory: str | Path, tokenizer: Optional[Any] = None) -> Path:
    """Write `model` in the native format (config.json, model.safetensors, tokenizer.json when
    the tokenizer came from one). Files are written to temporaries and renamed, never through
    a symlink in their place."""
    from safetensors.torch import save_file

    from diffeval.results import atomic_path, write_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok_name = "byte"
    if tokenizer is not None and hasattr(tokenizer, "path"):
        with atomic_path(directory / "tokenizer.json") as tmp:
            tmp.write_bytes(Path(tokenizer.path).read_bytes())
        tok_name = "tokenizer.json"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_atomic(directory / "config.json", json.dumps(native.config_to(model.cfg, tok_name), indent=2) + "\n")
    return directory
