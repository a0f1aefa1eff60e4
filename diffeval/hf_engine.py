"""`--engine hf`: the text probes on any causal LM that transformers implements (Gemma, Phi,
OLMo, hybrids, tomorrow's architecture), with the native engine's contract: the same
scheduling (prefix reuse in aligned chunks, batched greedy decoding, candidate scoring over
one prefilled prompt), the same tokenizer path (so the same exact prompt lengths), the same
results, resume keys and counters.

    load(spec, ...) -> Loaded(HFModel, tokenizer, info)     AutoModelForCausalLM from safetensors
    HFEngine(model, ...)                                    diffeval.engine.Engine on transformers

transformers is imported here only, and only for `--engine hf` (the `[hf]` extra). Remote
code never runs: `trust_remote_code` stays off, and a config whose `model_type` transformers
does not implement is refused in one line. Attention analysis (captured rows, logit hooks,
activation statistics) needs diffeval's own model code: those requests are refused."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from diffeval.checkpoints import (
    TOKENIZER_FILES,
    CheckpointInfo,
    Loaded,
    _files_sha256,
    refuse_beyond_memory,
    resolve_spec,
)
from diffeval.checkpoints.files import WeightFiles, safetensors_files
from diffeval.checkpoints.zoo import tokenizer_dir
from diffeval.engine import Engine
from diffeval.errors import CheckpointError, UsageError
from diffeval.models.decoder import row_nll
from diffeval.requests import CaptureRows, Stats, TokenNLL
from diffeval.tokenizers import load_tokenizer
from diffeval.yamlio import read_json

ENGINES = ("native", "hf")
ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "reference": "eager"}  # --backend -> transformers' attn_implementation


@contextmanager
def _quiet(transformers):
    """transformers' own progress bars and warnings off while diffeval calls it (diffeval reports
    what matters in one line), restored after."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def transformers_module():
    """transformers, or a one-line refusal saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UsageError("--engine hf needs transformers: pip install 'diffeval[hf]'") from None
    return transformers


@dataclass(frozen=True)
class ForeignConfig:
    """What probes may know of a model diffeval does not implement (ModelContext's fields)."""

    family: str  # transformers' model_type
    vocab_size: int
    n_layers: int
    n_heads: int
    max_seq_len: int


class HFModel:
    """A transformers causal LM with the attributes the run needs (`cfg`, `parameters`)."""

    def __init__(self, hf: Any, cfg: ForeignConfig) -> None:
        self.hf, self.cfg = hf, cfg
        params = inspect.signature(hf.forward).parameters
        self.keeps_logits = "logits_to_keep" in params
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x

    def parameters(self):
        return self.hf.parameters()

    def __call__(self, ids: torch.Tensor, cache, logits: str = "last") -> Optional[torch.Tensor]:
        """(B, T) ids, extending `cache` -> logits (B, T, V) for "all", (B, 1, V) for "last", None for "none"."""
        kw = {"logits_to_keep": 0 if logits == "all" else 1} if self.keeps_logits else {}
        kw[self.cache_arg] = cache
        out = self.hf(input_ids=ids, use_cache=True, **kw).logits
        if logits == "none":
            return None
        return out if logits == "all" else out[:, -1:]


def _config_error(path: Path, exc: Exception) -> CheckpointError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return CheckpointError(f"{path}: transformers cannot read it ({lines[0][:160] if lines else type(exc).__name__})")


def _read_config(directory: Path):
    """transformers' config of a checkpoint directory, refusing what needs remote code."""
    transformers = transformers_module()
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = directory / "config.json"
    raw = read_json(path, "", CheckpointError)
    if "family" in raw:
        raise CheckpointError(f"{path}: a diffeval native checkpoint; transformers cannot read it: use --engine native")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not an architecture transformers "
                              f"{transformers.__version__} implements; checkpoints that need their own code "
                              "(trust_remote_code) are refused")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"{path}: model_type {model_type!r} has no causal language model in transformers")
    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except (ValueError, OSError, TypeError, KeyError, AttributeError) as exc:
        raise _config_error(path, exc) from None
    return config, raw


def _n_params(paths: list[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for p in paths:
        try:
            with safe_open(str(p), framework="pt") as f:
                for name in f.keys():
                    total += int(torch.Size(f.get_slice(name).get_shape()).numel())
        except (OSError, ValueError, RuntimeError) as exc:  # safetensors' own error type derives from these
            raise CheckpointError(f"{p}: not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    return total


def _kv_bytes_per_token(config, size: int) -> int:
    text = config.get_text_config()
    heads = getattr(text, "num_attention_heads", None) or 0
    kv = getattr(text, "num_key_value_heads", None) or heads
    d_head = getattr(text, "head_dim", None) or (getattr(text, "hidden_size", 0) // heads if heads else 0)
    return 2 * (getattr(text, "num_hidden_layers", 0) or 0) * kv * d_head * size


def _foreign_config(config) -> ForeignConfig:
    text = config.get_text_config()
    limit = getattr(text, "max_position_embeddings", None)
    return ForeignConfig(family=config.model_type, vocab_size=int(text.vocab_size),
                         n_layers=int(getattr(text, "num_hidden_layers", 0) or 0),
                         n_heads=int(getattr(text, "num_attention_heads", 0) or 0),
                         max_seq_len=int(limit) if isinstance(limit, int) and limit > 0 else 1 << 31)


def load(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, backend: str = "auto",
         length: Optional[int] = None, allow_beyond_memory: bool = False) -> Loaded:
    """A Hugging Face checkpoint directory through transformers: Loaded(HFModel in eval mode on
    `device`/`dtype`, its tokenizer.json read by diffeval's tokenizer, info). Safetensors only;
    a checkpoint transformers loads with missing or unexpected tensors is refused (it would
    otherwise initialise them at random)."""
    transformers = transformers_module()
    from transformers import AutoModelForCausalLM

    if backend not in ATTENTION:
        raise UsageError(f"--backend {backend}: diffeval's own kernel; with --engine hf choose auto or sdpa "
                         "(transformers' SDPA attention) or reference (its eager attention)")
    directory = resolve_spec(spec)
    config, raw = _read_config(directory)
    paths = safetensors_files(directory)
    if not paths:
        raise CheckpointError(f"{directory}: no safetensors weights (--engine hf reads model.safetensors or "
                              "model.safetensors.index.json)")
    n_params = _n_params(paths)
    size = torch.empty((), dtype=dtype).element_size()
    refuse_beyond_memory(n_params * size + _kv_bytes_per_token(config, size) * (length or 0), n_params, dtype,
                         device, length, allow_beyond_memory, spec)
    attn = _attention(backend, config, directory)
    try:
        with _quiet(transformers):
            hf, info = AutoModelForCausalLM.from_pretrained(
                str(directory), config=config, dtype=dtype, attn_implementation=attn, trust_remote_code=False,
                use_safetensors=True, output_loading_info=True)
    except (ValueError, OSError, RuntimeError, TypeError, KeyError) as exc:
        raise _config_error(directory, exc) from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            first = sorted(info[kind])[0]
            raise CheckpointError(f"{directory}: transformers reports {kind.replace('_', ' ')} "
                                  f"({len(info[kind])}, first {first!r}); the weights do not fit the config")
    hf = hf.to(device).eval()
    model = HFModel(hf, _foreign_config(config))
    with _quiet(transformers):  # first calls into the model's code may log which kernels it found
        _check_first_forward(model, directory, dtype)
        _check_cache(model, directory, dtype)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    tok_dir = tokenizer_dir(directory)
    tokenizer = load_tokenizer(tok_dir, eos_ids, label=directory.name)
    if tokenizer is not None and tokenizer.max_id >= model.cfg.vocab_size:
        raise CheckpointError(f"{directory}: the tokenizer can emit id {tokenizer.max_id} but the model's vocab_size "
                              f"is {model.cfg.vocab_size}; tokenizer and weights do not belong together")
    return Loaded(model, tokenizer, _info(spec, directory, config, raw, model, n_params, dtype, attn, tokenizer,
                                          tok_dir, paths, transformers.__version__))


def _attention(backend: str, config, directory: Path) -> str:
    """transformers' attn_implementation for --backend: SDPA (auto falls back to eager attention
    for an architecture transformers runs only eagerly, e.g. Gemma 2's logit soft-capping)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    want = ATTENTION[backend]
    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type], None)
    if want == "sdpa" and cls is not None and not getattr(cls, "_supports_sdpa", True):
        if backend == "sdpa":
            raise UsageError(f"--backend sdpa: transformers runs {cls.__name__} ({directory}) with eager attention "
                             "only; use --backend auto or reference")
        return "eager"
    return want


def _check_first_forward(model: HFModel, directory: Path, dtype: torch.dtype) -> None:
    n = min(8, model.cfg.max_seq_len)
    device = next(model.parameters()).device
    ids = (torch.arange(n, device=device) % model.cfg.vocab_size)[None]  # (1, n)
    with torch.no_grad():
        logits = model(ids, None, logits="last")  # (1, 1, V)
    if not bool(torch.isfinite(logits).all()):
        raise CheckpointError(f"{directory}: a first forward pass gives non-finite logits under "
                              f"{str(dtype).replace('torch.', '')}; the weights overflow this dtype or the config "
                              "is wrong")


def new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def truncate(cache, length: int) -> None:
    """Roll `cache` back to its first `length` positions."""
    held = cache.get_seq_length()
    if held > length:
        cache.crop(length - held)  # a negative count removes that many tokens


def _check_cache(model: HFModel, directory: Path, dtype: torch.dtype) -> None:
    """The engine's use of the cache must reproduce a full forward pass: logits of a prompt
    run in two chunks through a DynamicCache equal those of one pass, and again after a
    roll-back to the first chunk. A model whose state cannot be rolled back (recurrent layers:
    Mamba, linear attention) or that keeps a cache of its own fails this and is refused."""
    n = min(12, model.cfg.max_seq_len)
    device = next(model.parameters()).device
    ids = ((torch.arange(n, device=device) * 7 + 3) % model.cfg.vocab_size)[None]  # (1, n)
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 0.1
    h = n // 2
    try:
        with torch.no_grad():
            full = model(ids, None, logits="all").float()  # (1, n, V)
            cache = new_cache()
            first = model(ids[:, :h], cache, logits="all").float()
            second = model(ids[:, h:], cache, logits="all").float()
            truncate(cache, h)
            again = model(ids[:, h:], cache, logits="all").float()
        same = (torch.allclose(torch.cat([first, second], 1), full, atol=tol, rtol=0)
                and torch.allclose(again, second, atol=tol, rtol=0))
    except Exception as exc:  # noqa: BLE001 (whatever the model's code raises, one line naming it)
        line = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(f"{directory}: --engine hf runs models whose cache is keys and values it can roll "
                              f"back; {model.cfg.family} fails that, its layers keep other state (recurrent or "
                              f"convolutional: Mamba, hybrids) ({type(exc).__name__}: {line})") from None
    if not same:
        raise CheckpointError(f"{directory}: --engine hf: logits through a key/value cache (chunked, rolled back) "
                              f"differ from one forward pass; {model.cfg.family} keeps state the engine cannot roll "
                              "back (recurrent layers?)")


def _info(spec: str, directory: Path, config, raw: dict, model: HFModel, n_params: int, dtype, attn: str, tokenizer,
          tok_dir: Path, paths: list[Path], version: str) -> CheckpointInfo:
    text = config.get_text_config()
    cfg = model.cfg
    d_model = int(getattr(text, "hidden_size", 0) or 0)
    d_head = int(getattr(text, "head_dim", None) or (d_model // cfg.n_heads if cfg.n_heads else 0))
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    digest, digest_from = WeightFiles(files=paths).sha256()
    archs = raw.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else type(model.hf).__name__
    return CheckpointInfo(
        spec=spec, path=str(directory), format="hf", architecture=arch,
        family=cfg.family, n_params=n_params, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or cfg.n_heads), d_head=d_head, d_value=d_head,
        d_model=d_model, d_ff=int(getattr(text, "intermediate_size", 0) or 0), vocab_size=cfg.vocab_size,
        max_seq_len=cfg.max_seq_len, rope=dict(rope) if isinstance(rope, dict) else {},
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)), dtype=str(dtype).replace("torch.", ""),
        backend=f"hf-{attn}", tokenizer=tokenizer.name if tokenizer is not None else "none",
        files=[p.name for p in paths], sha256=digest, sha256_from=digest_from, config=raw,
        config_sha256=_files_sha256([directory / "config.json"]),
        tokenizer_sha256=None if tokenizer is None else _files_sha256([tok_dir / n for n in TOKENIZER_FILES]),
        engine="hf", engine_version=f"transformers {version}",
    )


@dataclass
class HFEngine(Engine):
    """The engine's scheduling on a transformers model: its DynamicCache is the prefix cache
    (rolled back with crop), a batch's cache is its rows' caches stacked, TokenNLL runs in
    `nll_chunk`-token calls through the cache so that (T x vocab) logits never exist at once."""

    nll_chunk: int = 1024

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run(self, work):
        for reqs in work:
            for r in reqs:
                if isinstance(r, (CaptureRows, Stats)) or r.hook is not None or getattr(r, "stats", False):
                    raise UsageError(f"--engine hf runs text requests only, not {type(r).__name__} with attention "
                                     "hooks, captures or statistics: use --engine native")
        return super().run(work)

    def _call(self, ids: torch.Tensor, cache, logits="last"):
        return self.model(ids, cache, logits=logits)

    def _new_cache(self):
        return new_cache()

    def _truncate(self, cache, length: int) -> None:
        truncate(cache, length)

    def _new_batch(self) -> list:
        return []

    def _put_row(self, batch: list, row: int, rows: int, extra: int) -> list:
        batch.append([(layer.keys.clone(), layer.values.clone()) for layer in self._cache.layers])
        return batch

    def _batch_ready(self, batch: list):
        from transformers import DynamicCache

        layers = range(len(batch[0]))  # per layer: keys, values (B, H_kv, T, D)
        return DynamicCache(ddp_cache_data=[(torch.cat([r[i][0] for r in batch]), torch.cat([r[i][1] for r in batch]))
                                            for i in layers])

    @torch.no_grad()
    def _one(self, req: TokenNLL):
        self.counters.requests += 1
        self._count(len(req.ids))
        ids = list(req.ids)
        cache, out = self._new_cache(), []
        for s in range(0, len(ids) - 1, self.nll_chunk):
            chunk = ids[s:min(s + self.nll_chunk, len(ids) - 1)]  # the last position predicts nothing
            logits = self._call(self._ids(chunk), cache, logits="all")[0].float()  # (c, V)
            target = torch.tensor(ids[s + 1:s + 1 + len(chunk)], device=logits.device)
            out.append(row_nll(logits, target))
        return (torch.cat(out) if out else torch.zeros(0)).cpu().numpy()  # (T-1,) float32
