"""Turn a finished training run into a zoo model: copy the checkpoint into diffeval/zoo/NAME/,
measure it with the needle probe (the same runner `diffeval needle` uses), and write
zoo.json (metadata `diffeval zoo` shows) and NAME.md (the model card). The zoo models share
one tokenizer (diffeval/zoo/tokenizer.json + tokenizer_config.json); a model trained with
another keeps its own copy in its folder, which the loader finds first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from diffeval.errors import UsageError

CHECKPOINT_FILES = ("config.json", "model.safetensors")

# The measurements behind the zoo's scores: `diffeval needle --ckpt zoo:NAME --len L
# --depths 0:100:5 --samples 20 --device cpu` (+ `--needles 4 --queries 2` for multi).
SCORE_GRIDS: dict[str, dict[str, Any]] = {
    "needle_single": {"n_needles": 1, "n_queries": 1, "haystack": "noise", "needle_kind": "city"},
    "needle_multi": {"n_needles": 4, "n_queries": 2, "haystack": "noise", "needle_kind": "city"},
    "needle_essay": {"n_needles": 1, "n_queries": 1, "haystack": "essay", "needle_kind": "city"},
    "needle_kv_number": {"n_needles": 1, "n_queries": 1, "haystack": "noise", "needle_kind": "kv-number"},
}


def copy_checkpoint(run_dir: Path, zoo_dir: Path) -> None:
    """Copy the native checkpoint files of `run_dir` into `zoo_dir` (created or replaced). Its
    tokenizer becomes the zoo's shared one when there is none yet, is not copied when it is the
    shared one byte for byte, and is kept in `zoo_dir` otherwise."""
    missing = [f for f in CHECKPOINT_FILES if not (run_dir / f).is_file()]
    if missing:
        raise UsageError(f"{run_dir}: not a finished run (missing {missing[0]})")
    zoo_dir.mkdir(parents=True, exist_ok=True)
    for f in CHECKPOINT_FILES:
        shutil.copyfile(run_dir / f, zoo_dir / f)
    from diffeval.checkpoints import TOKENIZER_FILES

    def read(folder: Path) -> dict[str, bytes]:
        return {f: (folder / f).read_bytes() for f in TOKENIZER_FILES if (folder / f).is_file()}

    mine, shared = read(run_dir), read(zoo_dir.parent)
    for f in TOKENIZER_FILES:  # a republished model drops the copy of its own it had
        (zoo_dir / f).unlink(missing_ok=True)
    if not mine or mine == shared:
        return
    target = zoo_dir if shared else zoo_dir.parent
    for f, data in mine.items():
        (target / f).write_bytes(data)


def measure(spec: str, length: int, out: Path, samples: int = 20, seed: int = 0) -> dict[str, dict]:
    """Needle scores of `spec` at `length` over 5 depths: {grid name: metrics}."""
    from diffeval.probes.needle import PROBE, NeedleConfig
    from diffeval.run import RunOptions, run_probe

    scores = {}
    for name, grid in SCORE_GRIDS.items():
        cfg = NeedleConfig(lengths=(length,), depths=(0.0, 25.0, 50.0, 75.0, 100.0), samples=samples,
                           seed=seed, **grid)
        res = run_probe(PROBE, cfg, [spec], out / name, RunOptions(device="cpu", progress=False))
        m = next(iter(res["metrics"].values()))
        by_depth = {k.split("=", 1)[1]: v["value"] for k, v in m.items() if k.startswith("accuracy@depth=")}
        scores[name] = {"accuracy": m["accuracy"]["value"], "ci95": m["accuracy"]["ci95"], "n": m["accuracy"]["n"],
                        "by_depth": by_depth, "length": length, "samples": samples, **grid}
    return scores


INIT_NOTES = {
    "normal": "Plain seeded normal initialisation.",
    "induction": """\
From the usual random initialisation, neither copying nor the needle task left chance level
within 1,000+ steps on this CPU (the step budget of a 45-minute run). This model starts
instead from a planted induction circuit (`init: induction`, `diffeval/train/circuit_init.py`):
half of the residual stream carries the token embedding, the other half a copy of the previous
token written by previous-token heads (a position-only pattern from the fast rotary pairs);
induction heads match the current token against that copy on the slow rotary pairs (RoPE
theta 1e6) and copy the token that followed back into the embedding half, which the tied
unembedding reads. Training then adapts every weight; nothing is frozen. With the word-level
tokenizer's " CITY is" token, answering a city needle is one induction step per value chunk.""",
}


def _fmt_scores(scores: dict[str, dict]) -> str:
    rows = ["| grid | haystack | needle kind | N / R | accuracy | 95% CI | n | by depth (0, 25, 50, 75, 100 %) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, s in scores.items():
        depth = ", ".join(f"{v:.2f}" for v in s["by_depth"].values())
        rows.append(f"| {name} | {s['haystack']} | {s['needle_kind']} | {s['n_needles']} / {s['n_queries']} | {s['accuracy']:.3f} | "
                    f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] | {s['n']} | {depth} |")
    return "\n".join(rows)


def write_card(name: str, zoo_dir: Path, run_dir: Path, scores: dict[str, dict], notes: str = "") -> dict:
    """Write zoo.json and NAME.md for a zoo model. Returns the zoo.json dict."""
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((zoo_dir / "config.json").read_text())
    recipe = summary["recipe"]
    card = {
        "name": name, "family": config["family"], "n_params": summary["n_params"],
        "n_layers": config["n_layers"], "n_heads": config["n_heads"], "d_model": config["d_model"],
        "d_head": config["d_head"], "d_ff": config["d_ff"], "vocab_size": config["vocab_size"],
        "trained_len": summary["trained_len"], "max_seq_len": config["max_seq_len"],
        "steps": summary["steps"], "tokens": summary["tokens"], "minutes": summary["minutes"],
        "finished": summary["finished"], "final_loss": summary["final_loss"],
        "final_needle_loss": summary["final_needle_loss"], "recipe": recipe["name"], "seed": recipe["seed"],
        "scores": scores,
    }
    (zoo_dir / "zoo.json").write_text(json.dumps(card, indent=2) + "\n")
    stages = ", ".join(f"{s['steps']} steps x {s['batch_size']} x {s['seq_len']} tokens" for s in recipe["stages"])
    length = summary["trained_len"]
    tokenizer = ("`tokenizer.json` (its own)" if (zoo_dir / "tokenizer.json").exists() else
                 "`diffeval/zoo/tokenizer.json` (one file the zoo models share)")
    text = f"""# zoo:{name}

A tiny {config['family']} reference model trained by diffeval on its own synthetic corpus
(`diffeval/train/`), on a shared 2-core CPU with one torch thread. It exists so that the probes
have a real model to run on without downloads, and so that CI has fixed scores; it is not a
language model of any use beyond the probes' formats.

## Architecture

| family | parameters | layers x heads | d_model | d_head | d_ff | vocab | trained length | position limit |
|---|---|---|---|---|---|---|---|---|
| {config['family']} | {summary['n_params']:,} | {config['n_layers']} x {config['n_heads']} | {config['d_model']} | {config['d_head']} | {config['d_ff']} | {config['vocab_size']} | {length} | {config['max_seq_len']} |

Tokenizer: {tokenizer}, word level, built from the corpus vocabulary
(`diffeval/train/tokenizer.py`): " CITY is" is one token (so finding a city needle is a
one-token match), digits come in chunks of up to three, any other ASCII character is its own
token. Text outside ASCII becomes `<unk>`.

## Training

- recipe: `diffeval/train/recipes/{recipe['name']}.yaml`, seed {recipe['seed']}
  (`diffeval train --recipe {recipe['name']} --out DIR`)
- stages: {stages}
- AdamW (betas {recipe['betas']}, weight decay {recipe['weight_decay']}), peak lr {recipe['lr']},
  {recipe['warmup_steps']} warm-up steps, cosine to {recipe['min_lr_ratio']} x peak, gradient clip {recipe['grad_clip']},
  bf16 autocast {recipe['bf16']}, answer tokens weighted x{recipe['answer_weight']}, {recipe['lm_sample']:.0%} of other positions in the loss
- steps run: {summary['steps']} ({'finished' if summary['finished'] else 'stopped early'}), {summary['tokens']:,} tokens,
  {summary['minutes']:.1f} minutes
- final loss (non-answer tokens, mean of the last 50 steps): {summary['final_loss']};
  needle-answer token loss: {summary['final_needle_loss']}

## Measured scores

`diffeval needle --ckpt zoo:{name} --len {length} --depths 0:100:5 --samples {next(iter(scores.values()))['samples']} --device cpu`
with `--needles 4 --queries 2` (multi), `--haystack essay`, `--needle-kind kv-number` for the other rows:

{_fmt_scores(scores)}

## How it learns retrieval in minutes

{INIT_NOTES[recipe.get('init', 'normal')]}
{notes}
"""
    (zoo_dir / f"{name}.md").write_text(text)
    return card


def publish(name: str, run_dir: Path, zoo_root: Path, work: Path, samples: int = 20, notes: str = "") -> dict:
    """Copy, measure and document one zoo model. Returns its zoo.json dict."""
    zoo_dir = zoo_root / name
    copy_checkpoint(run_dir, zoo_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = measure(f"zoo:{name}", summary["trained_len"], work / name, samples=samples)
    return write_card(name, zoo_dir, run_dir, scores, notes)
