"""One process vs `torchrun --nproc-per-node 2` on the CPU, the same needle grid, side by side.

A random model (4 layers, d_model 256, byte tokenizer) runs `diffeval needle` over
--len x 5 depths x --samples haystacks: once as a single process with 2 threads, once as 2
ranks (gloo) with 1 thread each, and, for scale, as one process with 1 thread; each in a
fresh process and output folder, the three interleaved --repeat times, best time kept. Printed:
the wall time of the whole command (start-up, model load and sample generation included),
the wall time inside the run (results.json `timing.wall_seconds`), the slowest rank's engine
time, and the samples per rank. On 2 cores expect less than 2x: the ranks share the cores
that the single process's 2 threads used, and each rank pays start-up and generation.

    python benchmarks/bench_torchrun.py [--len 2k] [--samples 2] [--family transformer] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_outliers import make_model  # the same random 4 x 256 model (benchmarks/ is on sys.path)


def run(cmd: list[str], threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--len", default="2k", help="prompt length (diffeval --len syntax)")
    ap.add_argument("--samples", type=int, default=2, help="haystacks per length (5 depths each)")
    ap.add_argument("--family", default="transformer", choices=("transformer", "diff", "sha"))
    ap.add_argument("--repeat", type=int, default=2, help="rounds; the best time of each setting is kept")
    args = ap.parse_args()
    from diffeval.specs import parse_lengths

    longest = max(parse_lengths(args.len))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root / "model", args.family, longest + 64)
        grid = ["needle", "--ckpt", str(root / "model"), "--len", args.len, "--depths", "0,25,50,75,100",
                "--samples", str(args.samples), "--device", "cpu", "--max-new-tokens", "8"]
        settings = (("1 process", 1, 2), ("torchrun x2", 2, 1), ("1 process", 1, 1))
        best: dict[int, tuple] = {}
        for rnd in range(args.repeat):
            for k, (label, nproc, threads) in enumerate(settings):
                out = root / f"run{rnd}-{k}"
                launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc)] if nproc > 1 else []
                wall = run([sys.executable, *launcher, "-m", "diffeval", *grid, "--out", str(out)], threads)
                timing = json.loads((out / "results.json").read_text())["timing"]
                ranks = timing["ranks"]
                row = (label, threads, wall, timing["wall_seconds"], max(r["wall_seconds"] for r in ranks),
                       "/".join(str(r["samples"]) for r in ranks))
                best[k] = min(best.get(k, row), row, key=lambda r: r[2])
        rows = [best[k] for k in range(len(settings))]
    n = args.samples * 5
    print(f"\ndiffeval needle, {args.family} 4 x 256, --len {args.len} x 5 depths x {args.samples} samples "
          f"({n} samples), CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"best of {args.repeat}")
    print(f"{'run':<12} {'threads/rank':>12} {'command s':>10} {'in run s':>9} {'engine s':>9} {'samples/rank':>13}")
    for label, threads, wall, inside, engine, per in rows:
        print(f"{label:<12} {threads:>12} {wall:>10.1f} {inside:>9.1f} {engine:>9.1f} {per:>13}")
    two = rows[1]
    for one in (rows[0], rows[2]):
        label = f"x2 vs 1 process, {one[1]} thr"
        print(f"{label:<25} {one[2] / two[2]:>10.2f} {one[3] / two[3]:>9.2f} {one[4] / two[4]:>9.2f}")


if __name__ == "__main__":
    main()
