"""DIFF V2 forward at long context on the CPU, against DIFF V1 and a Transformer of the same
size (d_model, layers, d_ff; the Transformer's H heads of size d = d_model / H, DIFF V1's H/2
differential heads of the same d with 2d values, DIFF V2's 2H query heads of size d sharing
the Transformer's H key/value heads).

Each measurement runs in a fresh process, so that its peak memory (max RSS above the process's
baseline after building the model) belongs to that forward alone. The forward projects only
the last position to the vocabulary (logits="last"), so attention and MLP dominate. Prints
time (best of --repeats) and peak memory side by side, with ratios to the Transformer.

    python benchmarks/bench_diff2.py [--lengths 16384] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from diffeval.models import Decoder, ModelConfig
torch.set_num_threads(int(sys.argv[4]))
cfg = ModelConfig(**json.loads(sys.argv[1]))
length, repeats = int(sys.argv[2]), int(sys.argv[3])
model = Decoder(cfg, backend="sdpa")
model.init_weights(0)
model.eval()
ids = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
with torch.no_grad():
    for _ in range(repeats):
        t = time.perf_counter()
        model(ids, logits="last")
        times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": min(times), "peak_mb": (peak - base) / 1024, "n_params": cfg.n_params()}))
"""


def configs(d_model: int, heads: int, layers: int, max_len: int) -> dict[str, dict]:
    """Three models of one size: transformer, diff (V1) and diff2 (V2)."""
    common = dict(vocab_size=8192, d_model=d_model, n_layers=layers, d_ff=d_model * 8 // 3 // 8 * 8,
                  max_seq_len=max_len)
    d = d_model // heads
    return {
        "transformer": dict(common, family="transformer", n_heads=heads, d_head=d),
        "diff (V1)": dict(common, family="diff", n_heads=heads // 2, d_head=d),
        "diff2 (V2)": dict(common, family="diff2", n_heads=heads, n_kv_heads=heads, d_head=d),
    }


def measure(cfg: dict, length: int, repeats: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(length), str(repeats), str(threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:60]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16384")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4, help="Transformer heads (DIFF V1 has half)")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    for length in lengths:
        for name, cfg in configs(args.d_model, args.heads, args.layers, max(lengths)).items():
            res = measure(cfg, length, args.repeats, args.threads)
            print(f"# {name} {length}: {res}", file=sys.stderr, flush=True)
            rows.append((length, name, res))
    header = f"{'tokens':>6}  {'model':<12} {'params':>9} | {'seconds':>8} {'peak MB':>8} | {'t/transf':>8} {'m/transf':>8}"
    print(f"CPU forward, {args.layers} layers, d_model {args.d_model}, {args.threads} threads, best of {args.repeats}")
    print(header)
    print("-" * len(header))
    for length, name, r in rows:
        base = next(x for L, n, x in rows if L == length and n == "transformer")
        if "error" in r:
            print(f"{length:>6}  {name:<12} {'':>9} | {r['error']}")
            continue
        ratio_t = f"{r['seconds'] / base['seconds']:.2f}" if "seconds" in base else "-"
        ratio_m = f"{r['peak_mb'] / base['peak_mb']:.2f}" if base.get("peak_mb", 0) > 0 else "-"
        print(f"{length:>6}  {name:<12} {r['n_params']:>9,} | {r['seconds']:>8.2f} {r['peak_mb']:>8.0f} | "
              f"{ratio_t:>8} {ratio_m:>8}")


if __name__ == "__main__":
    main()
