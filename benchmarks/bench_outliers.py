"""Outliers probe costs on a random model (4 layers, d_model 256, byte tokenizer), CPU.

1. One --len sequence through the model: the plain fast path, the statistics pass (reference
   attention + ActivationStats), the 16-bit identity hook, and the 4-bit quantization hook;
   wall time and tokens/s of each.
2. `diffeval outliers --metric nll` for --tokens N and 4N in fresh processes: wall time and
   peak RSS (memory must not grow with N).

    python benchmarks/bench_outliers.py [--len 2k] [--tokens 16k] [--family diff] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUN_CLI = (
    "import sys, resource; from diffeval.cli import app, main; "
    "from diffeval.commands.outliers import outliers; "
    "app.command('outliers')(outliers) if not any(c.name == 'outliers' for c in app.registered_commands) else None; "
    "code = 0\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code or 0\n"
    "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); sys.exit(code)"
)


def make_model(directory: Path, family: str, max_len: int) -> None:
    import diffeval
    from diffeval.models import Decoder, ModelConfig

    heads = 2 if family == "diff" else 4
    cfg = ModelConfig(family=family, vocab_size=259, d_model=256, n_layers=4, n_heads=heads, d_ff=688,
                      max_seq_len=max_len)
    model = Decoder(cfg)
    model.init_weights(0)
    diffeval.save(model, directory)


def _timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def pass_table(directory: Path, length: int) -> None:
    import diffeval
    from diffeval.probes.activations import OutlierStats, quant_hook

    loaded = diffeval.load(str(directory), backend="sdpa")
    model = loaded.model
    ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(0))

    def stats_pass():
        stats = OutlierStats(model.cfg.n_layers)
        stats.begin_forward()
        model.token_nll(ids, stats=stats, logit_hook=quant_hook(16))
        stats.end_forward()

    rows = [("plain (sdpa)", lambda: model.token_nll(ids)),
            ("statistics + 16-bit", stats_pass),
            ("16-bit hook", lambda: model.token_nll(ids, logit_hook=quant_hook(16))),
            ("4-bit hook", lambda: model.token_nll(ids, logit_hook=quant_hook(4)))]
    print(f"\none {length}-token sequence, {loaded.info.family}, {torch.get_num_threads()} thread(s)")
    print(f"{'pass':<22} {'wall s':>8} {'tokens/s':>10}")
    for name, fn in rows:
        wall = _timed(fn)
        print(f"{name:<22} {wall:>8.3f} {length / wall:>10.0f}")


def memory_table(directory: Path, length: str, tokens: int, threads: int) -> None:
    print(f"\n`diffeval outliers --len {length} --quant-bits 16,4` in a fresh process, {threads} thread(s)")
    print(f"{'tokens':>8} {'wall s':>8} {'peak RSS MB':>12}")
    for n in (tokens, 4 * tokens):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-c", RUN_CLI, "outliers", "--ckpt", str(directory), "--tokens", str(n),
                   "--len", length, "--quant-bits", "16,4", "--device", "cpu", "--out", out]
            start = time.perf_counter()
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        peak = next(float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_MB"))
        print(f"{n:>8} {wall:>8.1f} {peak:>12.0f}")


def main() -> None:
    from diffeval.specs import parse_lengths, parse_tokens

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--len", default="2k")
    ap.add_argument("--tokens", default="16k")
    ap.add_argument("--family", default="diff", choices=("transformer", "sha", "diff"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    length = parse_lengths(args.len)[0]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / args.family
        make_model(directory, args.family, max(length, 2048))
        pass_table(directory, length)
        memory_table(directory, args.len, parse_tokens(args.tokens), args.threads)


if __name__ == "__main__":
    main()
