"""Needle probe costs on a random tiny model (4 layers, d_model 256, byte tokenizer).

1. Prefix reuse: a 5-depth x R=2 grid at --len tokens, prefilled tokens and wall time with
   the engine's prefix reuse vs re-encoding every prompt from scratch (same prompts, same run).
2. `diffeval needle --len 64k --depths 50 --samples 1` on CPU: wall time and peak RSS of the
   whole command (a fresh process).

    python benchmarks/bench_needle.py [--len 4k] [--long 64k] [--family transformer]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_model(directory: Path, family: str) -> None:
    import diffeval
    from diffeval.models import Decoder, ModelConfig

    heads = 2 if family == "diff" else 4
    cfg = ModelConfig(family=family, vocab_size=259, d_model=256, n_layers=4, n_heads=heads, d_ff=688,
                      max_seq_len=65536 + 256)
    model = Decoder(cfg)
    model.init_weights(0)
    diffeval.save(model, directory)


def reuse_table(directory: Path, length: int) -> None:
    import diffeval
    from diffeval.engine import Engine, Generate
    from diffeval.probes.needle import NeedleConfig, generate

    loaded = diffeval.load(str(directory))
    cfg = NeedleConfig(lengths=(length,), depths=(0.0, 25.0, 50.0, 75.0, 100.0), n_needles=2, n_queries=2, samples=2)
    samples = generate(cfg, loaded.tokenizer)
    prompts = [p for s in samples for p in s.prompts]
    rows = []
    for reuse in (True, False):
        engine = Engine(loaded.model, decode=loaded.tokenizer.decode, reuse=reuse)
        list(engine.run([[Generate(tuple(p), 10)] for p in prompts]))
        rows.append((reuse, engine.counters))
    (_, a), (_, b) = rows
    print(f"\nprefix reuse, {len(samples) // 5} haystacks x 5 depths x R=2 at {length} tokens ({len(prompts)} prompts)")
    print(f"{'mode':<12} {'prefilled tokens':>17} {'wall s':>8}")
    print(f"{'reuse':<12} {a.prefilled_tokens:>17} {a.seconds:>8.2f}")
    print(f"{'re-encode':<12} {b.prefilled_tokens:>17} {b.seconds:>8.2f}")
    print(f"{'ratio':<12} {a.prefilled_tokens / b.prefilled_tokens:>17.3f} {a.seconds / b.seconds:>8.3f}")


def long_run(directory: Path, length: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "diffeval", "needle", "--ckpt", str(directory), "--len", length,
               "--depths", "50", "--samples", "1", "--device", "cpu", "--out", out]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            raise SystemExit(proc.returncode)
    print(f"\n`diffeval needle --len {length} --depths 50 --samples 1` (CPU, whole command)")
    print(f"{'wall s':>8} {'peak RSS MB':>12}")
    print(f"{wall:>8.1f} {peak:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--len", default="4k")
    parser.add_argument("--long", default="64k")
    parser.add_argument("--family", default="transformer", choices=["transformer", "sha", "diff"])
    args = parser.parse_args()
    from diffeval.specs import parse_lengths

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / args.family
        make_model(directory, args.family)
        reuse_table(directory, parse_lengths(args.len)[0])
        long_run(directory, args.long)


if __name__ == "__main__":
    main()
