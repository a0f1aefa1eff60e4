"""One forward pass of the same random weights: diffeval vs transformers (sdpa, eager).

Each measurement runs in a fresh process so that peak memory (max RSS above the process's
baseline after loading) belongs to that forward alone. Prints time and peak memory, and the
ratios diffeval / transformers measured in this run.

    python benchmarks/bench_forward.py [--lengths 4096,16384] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[5]))
impl, directory, length, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = torch.randint(0, 8192, (1, length), generator=torch.Generator().manual_seed(0))
if impl == "diffeval":
    import diffeval
    model = diffeval.load(directory, backend="sdpa", require_tokenizer=False).model
else:
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation=impl).eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
with torch.no_grad():
    for _ in range(repeats):
        t = time.perf_counter()
        out = model(ids)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        times.append(time.perf_counter() - t)
        del out, logits
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": min(times), "peak_mb": (peak - base) / 1024}))
"""


def make_checkpoints(root: Path) -> dict[str, Path]:
    import torch
    import transformers as tf

    common = dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=65536)
    out = {}
    for name, (cfg_cls, model_cls) in {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "diffllama": (tf.DiffLlamaConfig, tf.DiffLlamaForCausalLM),
    }.items():
        torch.manual_seed(0)
        model = model_cls(cfg_cls(**common))
        model.save_pretrained(str(root / name))
        out[name] = root / name
    return out


def measure(impl: str, directory: Path, length: int, repeats: int, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, impl, str(directory), str(length), str(repeats), str(threads)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:60]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-eager-above", type=int, default=16384,
                        help="skip transformers eager above this length (its n x n maps)")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = make_checkpoints(Path(tmp))
        for name, directory in ckpts.items():
            for length in lengths:
                res = {}
                for impl in ("diffeval", "sdpa", "eager"):
                    if impl == "eager" and length > args.skip_eager_above:
                        res[impl] = {"error": "skipped"}
                        continue
                    res[impl] = measure(impl, directory, length, args.repeats, args.threads)
                    print(f"# {name} {length} {impl}: {res[impl]}", file=sys.stderr, flush=True)
                rows.append((name, length, res))
    header = (f"{'model':<10} {'tokens':>6} | {'diffeval s':>10} {'hf-sdpa s':>9} {'hf-eager s':>10} | "
              f"{'ours MB':>8} {'sdpa MB':>8} {'eager MB':>8} | {'t/sdpa':>6} {'t/eager':>7} {'m/sdpa':>6} {'m/eager':>7}")
    print(header)
    print("-" * len(header))

    def f(r, key, fmt):
        return format(r[key], fmt) if key in r else r.get("error", "?")[:9]

    def ratio(a, b, key):
        return f"{a[key] / b[key]:.2f}" if key in a and key in b and b[key] > 0 else "-"

    for name, length, r in rows:
        ours, sdpa, eager = r["diffeval"], r["sdpa"], r["eager"]
        print(f"{name:<10} {length:>6} | {f(ours, 'seconds', '10.2f'):>10} {f(sdpa, 'seconds', '9.2f'):>9} "
              f"{f(eager, 'seconds', '10.2f'):>10} | {f(ours, 'peak_mb', '8.0f'):>8} {f(sdpa, 'peak_mb', '8.0f'):>8} "
              f"{f(eager, 'peak_mb', '8.0f'):>8} | {ratio(ours, sdpa, 'seconds'):>6} {ratio(ours, eager, 'seconds'):>7} "
              f"{ratio(ours, sdpa, 'peak_mb'):>6} {ratio(ours, eager, 'peak_mb'):>7}")


if __name__ == "__main__":
    main()
