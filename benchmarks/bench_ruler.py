"""RULER suite costs on a random model of SmolLM2-135M's shape (Llama: 30 layers, d_model 576,
9 query / 3 key-value heads of 64, MLP 1536, vocabulary 49152, tied embeddings), saved as a
Hugging Face directory with the zoo's BPE tokenizer (ids below its vocabulary; the rest of
the embedding rows are never used).

1. Sample generation alone: `--gen-samples` samples of every synthetic task at `--len`
   (tokenizing and fitting to the exact length; no model runs), ms per sample per task.
2. The whole synthetic suite at `--len`, `--samples` per task, greedy with RULER's budgets
   (`--decode ruler`: the whole budget, no newline stop): `diffeval ruler` as a fresh process
   (load, generate, prefill with prefix reuse, decode `--batch-size` prompts together, score,
   write figures) vs a transformers `generate` loop over the same prompt ids (what RULER's
   Hugging Face path does: one prompt at a time, SDPA attention, the same budgets), same
   weights, same threads. Prefilled tokens side by side.

    python benchmarks/bench_ruler.py [--len 4k] [--samples 50] [--gen-samples 500] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def make_model(directory: Path, max_len: int) -> None:
    import transformers as tf

    import diffeval

    zoo = Path(diffeval.__file__).parent / "zoo"
    special = json.loads((zoo / "tokenizer_config.json").read_text())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(zoo / "tokenizer.json"))
    config = tf.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=max(8192, max_len),
                            tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                            bos_token_id=tok.token_to_id(special["bos_token"]),
                            eos_token_id=tok.token_to_id(special["eos_token"]))
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(zoo / name, directory / name)


@contextmanager
def smollm2_shaped(length: str):
    """Two threads, and a temporary directory holding the model for `length` (e.g. "4k") ->
    (model directory, the temporary folder, the length in tokens)."""
    from diffeval.specs import parse_lengths

    torch.set_num_threads(2)
    tokens = parse_lengths(length)[0]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "smollm2-135m-shape"
        make_model(directory, tokens)
        yield directory, Path(tmp), tokens


def _context(directory: Path):
    from diffeval.checkpoints import load
    from diffeval.run import RunOptions, model_context

    return model_context("bench", load(str(directory)), RunOptions(device="cpu", progress=False, decode="ruler"))


def generation_table(directory: Path, length: int, n: int) -> None:
    from diffeval.probes import ruler as P
    from diffeval.probes import ruler_tasks as T

    ctx = _context(directory)
    print(f"\n1. sample generation alone: {n} samples per task at {length} tokens (no model)")
    print(f"{'task':<17} {'ms/sample':>10} {'s total':>8}")
    total = 0.0
    for name in T.SYNTHETIC:
        cfg = P.PROBE.config({"lengths": str(length), "samples": n, "tasks": name})
        t = time.perf_counter()
        P.PROBE.generate(cfg, ctx)
        dt = time.perf_counter() - t
        total += dt
        print(f"{name:<17} {1000 * dt / n:>10.1f} {dt:>8.1f}", flush=True)
    print(f"{'all 11 tasks':<17} {1000 * total / (n * len(T.SYNTHETIC)):>10.1f} {total:>8.1f}")


def diffeval_suite(directory: Path, length: int, samples: int, batch: int, out: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "diffeval", "ruler", "--ckpt", str(directory), "--len", str(length),
           "--samples", str(samples), "--decode", "ruler", "--batch-size", str(batch), "--device", "cpu",
           "--dtype", "float32", "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(proc.returncode)
    return wall, json.loads((out / "results.json").read_text())


def transformers_loop(directory: Path, out: Path) -> tuple[float, int, int]:
    """Greedy `generate` over the run's prompts (its samples.jsonl holds their hashes; the ids
    are regenerated here, the same way) -> (seconds, prompt tokens, generated tokens)."""
    from diffeval.probes import ruler as P
    from diffeval.requests import ids_sha256

    results = json.loads((out / "results.json").read_text())
    params = results["task"]["params"]
    ctx = _context(directory)
    samples = P.PROBE.generate(P.PROBE.config({k: params[k] for k in ("lengths", "samples", "tasks", "seed")}), ctx)
    recorded = {json.loads(line)["id"]: json.loads(line)["prompt_sha256"][0]
                for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()}
    assert all(recorded[s.id] == ids_sha256(s.prompt) for s in samples), "prompts differ from the run's"
    model = plain_model(directory)
    prompt_tokens = generated = 0
    t = time.perf_counter()
    for s in samples:
        prompt_tokens += len(s.prompt)
        generated += plain_generate(model, s.prompt, s.budget)
    return time.perf_counter() - t, prompt_tokens, generated


def plain_model(directory: Path):
    """The directory's model in transformers alone (SDPA attention, float32)."""
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="sdpa",
                                                   dtype=torch.float32).eval()


@torch.no_grad()
def plain_generate(model, prompt, budget: int) -> int:
    """transformers' greedy `generate` of up to `budget` tokens after `prompt` -> tokens generated."""
    eos = model.config.eos_token_id
    ids = torch.tensor([list(prompt)])
    got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos)
    return got.shape[1] - ids.shape[1]


def suite_table(directory: Path, length: int, samples: int, batch: int, tmp: Path) -> None:
    out = tmp / "run"
    wall, results = diffeval_suite(directory, length, samples, batch, out)
    ours = next(iter(results["timing"]["models"].values()))
    hf_s, hf_prompt, hf_gen = transformers_loop(directory, out)
    tasks = len(results["task"]["params"]["tasks"])
    print(f"\n2. synthetic suite at {length} tokens, {samples} samples x {tasks} tasks ({samples * tasks} prompts), "
          "--decode ruler")
    print(f"{'':<34} {'wall s':>8} {'prefilled tokens':>17} {'generated':>10}")
    print(f"{'diffeval ruler (whole command)':<34} {wall:>8.1f} {ours.get('prefilled_tokens', 0):>17} "
          f"{ours.get('generated_tokens', 0):>10}")
    print(f"{'transformers generate loop':<34} {hf_s:>8.1f} {hf_prompt:>17} {hf_gen:>10}")
    print(f"{'ratio diffeval / transformers':<34} {wall / hf_s:>8.3f} "
          f"{ours.get('prefilled_tokens', 0) / hf_prompt:>17.3f}")
    print(f"(diffeval phases, s: {json.dumps(results['timing']['phases'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--len", default="4k")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--gen-samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-suite", action="store_true")
    args = parser.parse_args()
    with smollm2_shaped(args.len) as (directory, tmp, length):
        if not args.skip_generation:
            generation_table(directory, length, args.gen_samples)
        if not args.skip_suite:
            suite_table(directory, length, args.samples, args.batch_size, tmp)


if __name__ == "__main__":
    main()
