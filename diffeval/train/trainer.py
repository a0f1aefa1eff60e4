"""CPU-friendly training of a tiny decoder on the synthetic corpus.

AdamW, linear warm-up then cosine decay, gradient clipping, answer-weighted next-token loss,
a document-length curriculum (short documents first), periodic resumable checkpoints. Every
batch is a pure function of (seed, step), so a resumed run sees the same data as an
uninterrupted one and the same recipe and seed give the same loss curve on the same machine.

Output directory:
    config.json, model.safetensors, tokenizer.json, tokenizer_config.json   the native checkpoint
    train_state.pt     model + optimizer + step (torch.save, loaded with weights_only=True)
    log.jsonl          one line per logged step: loss, answer loss / accuracy, lr, tokens/s
    summary.json       recipe, steps, minutes, final losses
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffeval.errors import ConfigError, UsageError
from diffeval.train.corpus import CorpusConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a training run (read from YAML)."""

    name: str
    model: dict  # ModelConfig fields except vocab_size (set from the tokenizer)
    seed: int = 0
    steps: int = 2000
    batch_size: int = 8
    seq_len: int = 1024
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    answer_weight: float = 4.0
    min_doc: int = 32
    max_doc_start: int = 256  # curriculum: longest document at step 0 ...
    max_doc: int = 1024  # ... and after `ramp_steps`
    ramp_steps: int = 500
    threads: int = 1
    checkpoint_every: int = 100
    log_every: int = 10
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"recipe name ({self.name!r}) must be a non-empty string")
        if not isinstance(self.model, dict) or "family" not in self.model:
            raise ConfigError(f"recipe {self.name}: model ({self.model!r}) must be a mapping with a family")
        if "vocab_size" in self.model:
            raise ConfigError(f"recipe {self.name}: model.vocab_size is set from the tokenizer; remove it")
        for k in ("seed", "steps", "batch_size", "seq_len", "warmup_steps", "min_doc", "max_doc_start",
                  "max_doc", "ramp_steps", "threads", "checkpoint_every", "log_every"):
            v = getattr(self, k)
            low = 0 if k in ("seed", "warmup_steps", "ramp_steps") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"recipe {self.name}: {k} ({v!r}) must be an integer >= {low}")
        for k in ("lr", "grad_clip", "answer_weight"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"recipe {self.name}: {k} ({v!r}) must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"recipe {self.name}: min_lr_ratio ({self.min_lr_ratio}) must lie in [0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"recipe {self.name}: weight_decay ({self.weight_decay}) must be >= 0")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"recipe {self.name}: betas ({self.betas!r}) must be two numbers in [0, 1)")
        if not self.min_doc <= self.max_doc_start <= self.max_doc:
            raise ConfigError(f"recipe {self.name}: need min_doc ({self.min_doc}) <= max_doc_start "
                              f"({self.max_doc_start}) <= max_doc ({self.max_doc})")
        if isinstance(self.corpus, dict):
            try:
                object.__setattr__(self, "corpus", CorpusConfig(**self.corpus))
            except TypeError as exc:
                raise ConfigError(f"recipe {self.name}: corpus: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr`, then cosine decay to lr * min_lr_ratio at `steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        frac = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def max_doc_at(self, step: int) -> int:
        """Longest document length at `step`: grows linearly over ramp_steps."""
        if self.ramp_steps == 0 or step >= self.ramp_steps:
            return self.max_doc
        return int(self.max_doc_start + (self.max_doc - self.max_doc_start) * step / self.ramp_steps)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {p}: expected a mapping at the top level")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"recipe {p}: unknown field(s) {', '.join(unknown)}")
    try:
        return Recipe(**raw)
    except TypeError as exc:
        raise UsageError(f"recipe {p}: {exc}") from None


def model_config(recipe: Recipe, vocab_size: int):
    """The recipe's ModelConfig with vocab_size rounded up to a multiple of 64."""
    from diffeval.models.config import ModelConfig

    return ModelConfig.from_dict({**recipe.model, "vocab_size": int(math.ceil(vocab_size / 64) * 64)},
                                 f"recipe {recipe.name}: model")


def weighted_loss(model, ids, weights):
    """ids (B, T+1), weights (B, T) -> (weighted mean NLL, per-target NLL (B, T), logits argmax (B, T))."""
    import torch.nn.functional as F

    logits = model(ids[:, :-1])  # (B, T, V)
    targets = ids[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    return (nll * weights).sum() / weights.sum(), nll.detach(), logits.detach().argmax(-1)


def _state_path(out: Path) -> Path:
    return out / "train_state.pt"


def train(recipe: Recipe, out: Path, resume: bool = True, progress: bool = True,
          max_minutes: Optional[float] = None) -> dict[str, Any]:
    """Train (or resume) `recipe` into `out`; export the native checkpoint at the end or when
    `max_minutes` of this call have passed. Returns the summary dict."""
    import torch

    from diffeval.checkpoints import save
    from diffeval.models.decoder import Decoder
    from diffeval.tokenizers import load_tokenizer
    from diffeval.train.corpus import Packer, corpus_words
    from diffeval.train.tokenizer import build_tokenizer

    torch.set_num_threads(recipe.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(corpus_words(recipe.seed), out / "tok")
    tok = load_tokenizer(out / "tok")
    assert tok is not None and tok.bos_id is not None and tok.eos_id is not None
    cfg = model_config(recipe, tok.vocab_size)
    model = Decoder(cfg)
    model.init_weights(recipe.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=recipe.betas, eps=1e-8)
    step, elapsed = 0, 0.0
    log_path = out / "log.jsonl"
    state_path = _state_path(out)
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if state["recipe"] != json.dumps(recipe.to_dict(), sort_keys=True):
            raise UsageError(f"{state_path}: written by a different recipe; use a new --out or --no-resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        log.info("resuming %s at step %d", recipe.name, step)
    lines = log_path.read_text().splitlines() if log_path.exists() and step > 0 else []
    kept = [ln for ln in lines if json.loads(ln)["step"] < step]
    log_path.write_text("".join(ln + "\n" for ln in kept))
    packer = Packer(tok._tok, tok.bos_id, tok.eos_id, recipe.corpus, recipe.answer_weight)
    from tqdm import tqdm

    bar = tqdm(total=recipe.steps, initial=step, desc=recipe.name, disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    window: list[dict] = []

    def checkpoint() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "elapsed": elapsed + time.perf_counter() - started,
                    "recipe": json.dumps(recipe.to_dict(), sort_keys=True)}, tmp)
        tmp.replace(state_path)

    stopped_early = False
    with log_path.open("a") as logf:
        while step < recipe.steps:
            if max_minutes is not None and time.perf_counter() - started > 60 * max_minutes:
                stopped_early = True
                break
            t0 = time.perf_counter()
            ids_np, w_np = packer.batch(np.random.SeedSequence([recipe.seed, 0x7A11, step]), recipe.batch_size,
                                        recipe.seq_len, recipe.min_doc, recipe.max_doc_at(step))
            ids, w = torch.from_numpy(ids_np), torch.from_numpy(w_np)
            for g in opt.param_groups:
                g["lr"] = recipe.lr_at(step)
            loss, nll, pred = weighted_loss(model, ids, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            step += 1
            ans = w > 1.0
            n_ans = int(ans.sum())
            rec = {"step": step, "loss": float(nll.mean()), "weighted_loss": float(loss.detach()),
                   "answer_loss": float(nll[ans].mean()) if n_ans else None,
                   "answer_acc": float((pred == ids[:, 1:])[ans].float().mean()) if n_ans else None,
                   "lr": recipe.lr_at(step - 1), "grad_norm": float(gnorm),
                   "tokens_per_s": ids_np[:, 1:].size / (time.perf_counter() - t0)}
            window.append(rec)
            if step % recipe.log_every == 0 or step == recipe.steps:
                avg = {k: float(np.mean([r[k] for r in window if r[k] is not None] or [float("nan")]))
                       for k in ("loss", "answer_loss", "answer_acc", "tokens_per_s")}
                logf.write(json.dumps({**rec, **{f"avg_{k}": round(v, 5) for k, v in avg.items()},
                                       "minutes": round((elapsed + time.perf_counter() - started) / 60, 3)}) + "\n")
                logf.flush()
                bar.set_postfix(loss=f"{avg['loss']:.3f}", ans=f"{avg['answer_acc']:.2f}",
                                tok_s=f"{avg['tokens_per_s']:.0f}")
                window = []
            bar.update(1)
            if step % recipe.checkpoint_every == 0:
                checkpoint()
    bar.close()
    checkpoint()
    model.eval()
    save(model, out, tok)
    (out / "tokenizer_config.json").write_text((out / "tok" / "tokenizer_config.json").read_text())
    minutes = (elapsed + time.perf_counter() - started) / 60
    tail = [json.loads(ln) for ln in log_path.read_text().splitlines()][-5:]
    summary = {"recipe": recipe.to_dict(), "steps": step, "finished": step >= recipe.steps,
               "stopped_early": stopped_early, "minutes": round(minutes, 2),
               "tokens": step * recipe.batch_size * recipe.seq_len,
               "final_loss": round(float(np.mean([r["avg_loss"] for r in tail])), 4) if tail else None,
               "final_answer_acc": round(float(np.mean([r["avg_answer_acc"] for r in tail])), 4) if tail else None,
               "n_params": sum(p.numel() for p in model.parameters()),
               "torch": torch.__version__, "threads": recipe.threads}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
