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
import torch
import torch.nn.functional as F

from diffeval.checkpoints import device_memory, save
from diffeval.checkpoints.files import safe_torch_load
from diffeval.errors import CheckpointError, ConfigError, UsageError, shown
from diffeval.models.config import ModelConfig
from diffeval.models.decoder import Decoder
from diffeval.results import claimed_out
from diffeval.tokenizers import load_tokenizer
from diffeval.train.circuit_init import plant_induction
from diffeval.train.corpus import DOC_KINDS, CorpusConfig, Packer, corpus_words
from diffeval.train.tokenizer import build_tokenizer
from diffeval.yamlio import read_yaml_mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a training run (read from YAML)."""

    name: str
    model: dict  # ModelConfig fields except vocab_size (set from the tokenizer)
    seed: int = 0
    stages: tuple = ({"steps": 1000, "seq_len": 256, "batch_size": 16},
                     {"steps": 1000, "seq_len": 1024, "batch_size": 4})
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    answer_weight: float = 4.0
    lm_sample: float = 0.25  # share of non-answer positions that get a loss (answers always do)
    bf16: bool = True  # bfloat16 autocast for the forward pass (CPU)
    init: str = "normal"  # normal | induction (diffeval.train.circuit_init)
    sha_induction_layers: int = 1  # init induction, family sha: top layers with an induction head
    min_doc: int = 32  # documents are log-uniform in [min_doc, the stage's seq_len] tokens
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
        for k in ("seed", "warmup_steps", "min_doc", "threads", "checkpoint_every", "log_every",
                  "sha_induction_layers"):
            v = getattr(self, k)
            low = 0 if k in ("seed", "warmup_steps") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"recipe {self.name}: {k} ({v!r}) must be an integer >= {low}")
        for k in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "answer_weight", "lm_sample"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"recipe {self.name}: {k} ({shown(v)}) must be a number")
        if not isinstance(self.bf16, bool):
            raise ConfigError(f"recipe {self.name}: bf16 ({shown(self.bf16)}) must be true or false")
        if self.init not in ("normal", "induction"):
            raise ConfigError(f"recipe {self.name}: init ({self.init!r}) must be 'normal' or 'induction'")
        if not 0.0 < self.lm_sample <= 1.0:
            raise ConfigError(f"recipe {self.name}: lm_sample ({self.lm_sample!r}) must lie in (0, 1]")
        for k in ("lr", "grad_clip", "answer_weight"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"recipe {self.name}: {k} ({v!r}) must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"recipe {self.name}: min_lr_ratio ({self.min_lr_ratio}) must lie in [0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"recipe {self.name}: weight_decay ({self.weight_decay}) must be >= 0")
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.betas)):
            raise ConfigError(f"recipe {self.name}: betas ({shown(self.betas)}) must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"recipe {self.name}: betas ({self.betas!r}) must be two numbers in [0, 1)")
        self._check_stages()
        if isinstance(self.corpus, dict):
            try:
                object.__setattr__(self, "corpus", CorpusConfig(**self.corpus))
            except TypeError as exc:
                raise ConfigError(f"recipe {self.name}: corpus: {exc}") from None

    def _check_stages(self) -> None:
        """stages: a non-empty list of {steps, seq_len, batch_size[, mix]}, positive integers."""
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise ConfigError(f"recipe {self.name}: stages ({shown(self.stages)}) must be a non-empty list")
        for i, st in enumerate(self.stages):
            if not isinstance(st, dict):
                raise ConfigError(f"recipe {self.name}: stage {i} ({shown(st)}) must be a mapping "
                                  "{steps, seq_len, batch_size}")
        object.__setattr__(self, "stages", tuple(dict(s) for s in self.stages))
        for i, st in enumerate(self.stages):
            if not {"steps", "seq_len", "batch_size"} <= set(st) <= {"steps", "seq_len", "batch_size", "mix"}:
                raise ConfigError(f"recipe {self.name}: stage {i} ({st!r}) needs steps, seq_len, batch_size "
                                  "and may set mix")
            if "mix" in st:
                CorpusConfig(mix=st["mix"])  # validates the names and weights
            for k, v in st.items():
                if k == "mix":
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ConfigError(f"recipe {self.name}: stage {i} {k} ({v!r}) must be a positive integer")
            if st["seq_len"] < self.min_doc:
                raise ConfigError(f"recipe {self.name}: stage {i} seq_len ({st['seq_len']}) is below min_doc ({self.min_doc})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @property
    def steps(self) -> int:
        """Total optimizer steps over all stages."""
        return sum(st["steps"] for st in self.stages)

    @property
    def seq_len(self) -> int:
        """The trained context: the last stage's sequence length."""
        return self.stages[-1]["seq_len"]

    def stage_at(self, step: int) -> dict:
        """The stage (steps, seq_len, batch_size) that `step` (0-based) belongs to."""
        end = 0
        for st in self.stages:
            end += st["steps"]
            if step < end:
                return st
        return self.stages[-1]

    def tokens_until(self, step: int) -> int:
        """Training tokens seen in the first `step` steps."""
        return sum(self.stage_at(s)["batch_size"] * self.stage_at(s)["seq_len"] for s in range(step))

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr`, then cosine decay to lr * min_lr_ratio at `steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        frac = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))



def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    p = Path(path)
    raw = read_yaml_mapping(p, "recipe")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"recipe {p}: unknown field(s) {', '.join(unknown)}")
    try:
        recipe = Recipe(**raw)
    except TypeError as exc:
        raise UsageError(f"recipe {p}: {exc}") from None
    cfg = model_config(recipe, 64)  # the model's fields are checked now, before anything is written
    _check_training_memory(recipe, cfg)
    return recipe


def _check_training_memory(recipe: Recipe, cfg) -> None:
    """Weights, gradients and two AdamW moments in float32 (16 bytes per parameter, the
    vocabulary counted at the corpus's size) must fit the machine's memory."""
    n_params = dataclasses.replace(cfg, vocab_size=8192).n_params()
    need, have = 16 * n_params, device_memory("cpu")
    if have is not None and need > have:
        raise UsageError(f"recipe {recipe.name}: training needs about {need / 2**30:,.1f} GiB ({n_params:,} "
                         f"parameters x 16 bytes) but the machine has {have / 2**30:,.1f} GiB available")


def model_config(recipe: Recipe, vocab_size: int):
    """The recipe's ModelConfig with vocab_size rounded up to a multiple of 64."""
    return ModelConfig.from_dict({**recipe.model, "vocab_size": int(math.ceil(vocab_size / 64) * 64)},
                                 f"recipe {recipe.name}: model")


def weighted_loss(model, ids, weights, keep=None, bf16: bool = False):
    """ids (B, T+1), weights (B, T), keep (B, T) bool or None (all) -> (weighted mean NLL over
    the kept targets, their NLL (K,), their argmax predictions (K,)). Only kept positions are
    projected to the vocabulary, which is most of a tiny model's cost."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = model.hidden(ids[:, :-1])  # (B, T, C)
        if keep is None:
            keep = torch.ones_like(weights, dtype=torch.bool)
        logits = model.project(h[keep]).float()  # (K, V)
    nll = F.cross_entropy(logits, ids[:, 1:][keep], reduction="none")  # (K,)
    w = weights[keep]
    return (nll * w).sum() / w.sum(), nll.detach(), logits.detach().argmax(-1)


def _state_path(out: Path) -> Path:
    return out / "train_state.pt"


def _build(recipe: Recipe, out: Path):
    """Tokenizer (written to out/tok), seeded model and optimizer -> (tokenizer, model, optimizer)."""
    build_tokenizer(corpus_words(recipe.seed), out / "tok")
    tok = load_tokenizer(out / "tok")
    assert tok is not None and tok.bos_id is not None and tok.eos_id is not None
    model = Decoder(model_config(recipe, tok.vocab_size))
    model.init_weights(recipe.seed)
    if recipe.init == "induction":
        plant_induction(model, recipe.seq_len, recipe.seed, recipe.sha_induction_layers)
    model.train()
    # No weight decay on embeddings, norms and lambda vectors.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=recipe.betas, eps=1e-8)
    return tok, model, opt


def _saved_state(recipe: Recipe, out: Path, resume: bool) -> Optional[dict]:
    """out/train_state.pt when asked and present (read before anything is written); an
    unusable one is a UsageError naming it and what to do."""
    state_path = _state_path(out)
    if not (resume and state_path.exists()):
        return None
    try:
        state = safe_torch_load(state_path)
    except CheckpointError as exc:
        raise UsageError(_unusable(state_path, str(exc).split(": ", 1)[-1])) from None
    if not isinstance(state, dict) or not {"recipe", "model", "optimizer", "step", "elapsed"} <= set(state):
        raise UsageError(_unusable(state_path, "not a diffeval training state"))
    if state["recipe"] != json.dumps(recipe.to_dict(), sort_keys=True):
        raise UsageError(f"{state_path}: written by a different recipe; use a new --out or --no-resume")
    return state


def _unusable(path: Path, why: str) -> str:
    return f"{path}: unusable training state ({why}); delete it to start again from step 0 (or rerun with --no-resume)"


def _resume(recipe: Recipe, out: Path, model, opt, state: Optional[dict]) -> tuple[int, float]:
    """Restore `state` (from _saved_state) into model and optimizer; cut log.jsonl to the
    restored step. Returns (step, seconds already spent)."""
    step, elapsed = 0, 0.0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, elapsed = int(state["step"]), float(state["elapsed"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a state of another shape
            reason = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
            raise UsageError(_unusable(_state_path(out), f"{type(exc).__name__}: {reason}")) from None
        log.info("resuming %s at step %d", recipe.name, step)
    log_path = out / "log.jsonl"
    rows = _log_rows(log_path) if log_path.exists() and step > 0 else []
    log_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
    return step, elapsed


def _log_rows(path: Path) -> list[dict]:
    """The records of a training log; lines cut by a kill (or otherwise damaged) are dropped
    with one warning: the steps they logged are rerun and logged again."""
    rows, bad = [], 0
    for line in path.read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad += bool(line.strip())
    if bad:
        logging.getLogger("diffeval").warning("%s: %d damaged line(s) dropped", path, bad)
    return rows


def _train_step(recipe: Recipe, packer, model, opt, step: int) -> dict[str, Any]:
    """One optimizer step on the batch of `step` (a pure function of seed and step) -> record."""
    t0 = time.perf_counter()
    st = recipe.stage_at(step)
    ids_np, w_np, tag_np = packer.batch(np.random.SeedSequence([recipe.seed, 0x7A11, step]), st["batch_size"],
                                        st["seq_len"], recipe.min_doc, st["seq_len"], st.get("mix"))
    ids, w, tags = torch.from_numpy(ids_np), torch.from_numpy(w_np), torch.from_numpy(tag_np)
    gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    keep = (tags > 0) | (torch.rand(w.shape, generator=gen) < recipe.lm_sample)  # (B, T)
    for g in opt.param_groups:
        g["lr"] = recipe.lr_at(step)
    loss, nll, pred = weighted_loss(model, ids, w, keep, recipe.bf16)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    kt = tags[keep]  # (K,) answer tag of each kept target
    hit = (pred == ids[:, 1:][keep]).float()  # (K,)
    rec = {"step": step + 1, "seq_len": st["seq_len"], "loss": float(nll[kt == 0].mean()),
           "weighted_loss": float(loss.detach())}
    for i, kind in enumerate(DOC_KINDS):
        sel = kt == i + 1
        rec[f"{kind}_loss"] = float(nll[sel].mean()) if bool(sel.any()) else None
        rec[f"{kind}_acc"] = float(hit[sel].mean()) if bool(sel.any()) else None
    rec.update({"lr": recipe.lr_at(step), "grad_norm": float(gnorm),
                "tokens_per_s": ids_np[:, 1:].size / (time.perf_counter() - t0)})
    return rec


_AVERAGED = ("loss", "needle_loss", "needle_acc", "icl_acc", "repeat_acc", "copy_acc", "tokens_per_s")


def _window_average(window: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in window if r[k] is not None] or [float("nan")])) for k in _AVERAGED}


def train(recipe: Recipe, out: Path, resume: bool = True, progress: bool = True,
          max_minutes: Optional[float] = None) -> dict[str, Any]:
    """Train (or resume) `recipe` into `out`; export the native checkpoint at the end, or when
    `max_minutes` of this call have passed (checked at log boundaries, so that a resumed run
    logs exactly what an uninterrupted one does). Returns the summary dict."""
    torch.set_num_threads(recipe.threads)
    with claimed_out(Path(out), {}) as out:
        return _train(recipe, out, resume, progress, max_minutes)


def _train(recipe: Recipe, out: Path, resume: bool, progress: bool, max_minutes: Optional[float]) -> dict[str, Any]:
    from tqdm import tqdm

    state = _saved_state(recipe, out, resume)
    tok, model, opt = _build(recipe, out)
    step, elapsed = _resume(recipe, out, model, opt, state)
    packer = Packer(tok._tok, tok.bos_id, tok.eos_id, recipe.corpus, recipe.answer_weight)
    bar = tqdm(total=recipe.steps, initial=step, desc=recipe.name, disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()

    def minutes() -> float:
        return (elapsed + time.perf_counter() - started) / 60

    def checkpoint() -> None:
        from diffeval.results import atomic_path

        with atomic_path(_state_path(out)) as tmp:  # never through a link planted in `out`
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "elapsed": 60 * minutes(), "recipe": json.dumps(recipe.to_dict(), sort_keys=True)}, tmp)

    window: list[dict] = []
    stopped_early = False
    try:
        with (out / "log.jsonl").open("a") as logf:
            while step < recipe.steps:
                at_boundary = step % recipe.log_every == 0
                if at_boundary and max_minutes is not None and time.perf_counter() - started > 60 * max_minutes:
                    stopped_early = True
                    break
                rec = _train_step(recipe, packer, model, opt, step)
                step += 1
                window.append(rec)
                if step % recipe.log_every == 0 or step == recipe.steps:
                    avg = _window_average(window)
                    logf.write(json.dumps({**rec, **{f"avg_{k}": round(v, 5) for k, v in avg.items()},
                                           "minutes": round(minutes(), 3)}) + "\n")
                    logf.flush()
                    bar.set_postfix(loss=f"{avg['loss']:.3f}", needle=f"{avg['needle_acc']:.2f}",
                                    tok_s=f"{avg['tokens_per_s']:.0f}")
                    window = []
                bar.update(1)
                if step % recipe.checkpoint_every == 0:
                    checkpoint()
    finally:  # a Ctrl-C ends the bar before the line that says how to resume
        bar.close()
    checkpoint()
    model.eval()
    save(model, out, tok)
    (out / "tokenizer_config.json").write_text((out / "tok" / "tokenizer_config.json").read_text())
    return _summarize(recipe, out, step, stopped_early, minutes(), sum(p.numel() for p in model.parameters()))


def _summarize(recipe: Recipe, out: Path, step: int, stopped_early: bool, minutes: float, n_params: int) -> dict:
    """Write and return summary.json: recipe, steps, time, tokens, final losses (last 5 logs)."""
    tail = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()][-5:]

    def last(key: str) -> Optional[float]:
        vals = [r[key] for r in tail if r.get(key) is not None and not math.isnan(r[key])]
        return round(float(np.mean(vals)), 4) if vals else None

    summary = {"recipe": recipe.to_dict(), "steps": step, "finished": step >= recipe.steps,
               "stopped_early": stopped_early, "minutes": round(minutes, 2),
               "tokens": recipe.tokens_until(step), "trained_len": recipe.seq_len,
               "final_loss": last("avg_loss"), "final_needle_loss": last("avg_needle_loss"),
               "final_needle_token_acc": last("avg_needle_acc"), "n_params": n_params,
               "torch": torch.__version__, "threads": recipe.threads}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
