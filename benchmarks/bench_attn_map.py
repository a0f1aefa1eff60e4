"""Capturing attention rows at long context: `diffeval attn-map` vs transformers eager with
output_attentions (which materialises every n x n map), on the same random tiny weights.

Each measurement runs in a fresh process; peak memory is the child's max RSS.

    python benchmarks/bench_attn_map.py [--lengths 16384,32768] [--eager-lengths 16384]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

EAGER = r"""
import sys, time, torch, transformers
torch.set_num_threads(2)
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
ids = torch.randint(0, 250, (1, int(sys.argv[2])), generator=torch.Generator().manual_seed(0))
t = time.perf_counter()
with torch.no_grad():
    out = model(ids, output_attentions=True, logits_to_keep=1)
print("seconds", time.perf_counter() - t, "maps", len(out.attentions), tuple(out.attentions[0].shape))
"""


CAPTURE = r"""
import sys, time, torch, diffeval
from diffeval.models import Capture
from diffeval.probes.attention import query_positions
from diffeval.probes.needle import NeedleConfig, generate
torch.set_num_threads(2)
loaded = diffeval.load(sys.argv[1])
sample = generate(NeedleConfig(lengths=(int(sys.argv[2]),), depths=(50.0,), samples=1), loaded.tokenizer)[0]
cap = Capture(query_positions(sample, "answer", loaded.tokenizer))
t = time.perf_counter()
with torch.no_grad():
    loaded.model(torch.tensor([sample.prompts[0]]), logits="none", capture=cap)
print("seconds", time.perf_counter() - t)
"""


def make_checkpoint(root: Path, layers: int, heads: int, d_model: int) -> tuple[Path, Path]:
    """The same random weights as a Hugging Face Llama directory and a diffeval directory."""
    import torch
    import transformers as tf

    import diffeval

    cfg = tf.LlamaConfig(vocab_size=259, hidden_size=d_model, intermediate_size=d_model * 8 // 3 // 8 * 8,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=65536)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(str(root / "hf"))
    loaded = diffeval.load(str(root / "hf"), require_tokenizer=False)
    diffeval.save(loaded.model, root / "native")  # byte tokenizer for the needle prompts
    return root / "hf", root / "native"


WRAPPER = ("import resource,subprocess,sys,time;t=time.perf_counter();"
           "p=subprocess.run(sys.argv[1:], capture_output=True, text=True);"
           "w=[l.split()[1] for l in p.stdout.splitlines() if l.startswith('seconds')] or ['nan'];"
           "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, p.returncode, w[-1])")


def measure(cmd: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds (whole process: imports, loading and the work), peak RSS (MB) , the forward's own seconds when the script prints them, and a failure note of `cmd`, run in its own watcher process
    (children's max RSS is cumulative, so every command gets a fresh watcher)."""
    res = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True).stdout.split()
    return float(res[0]), float(res[3]), float(res[1]), "" if res[2] == "0" else f"exit {res[2]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16384,32768")
    parser.add_argument("--eager-lengths", default="16384")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    args = parser.parse_args()
    print(f"Llama weights: {args.layers} layers, {args.heads} heads, d_model {args.d_model}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, native = make_checkpoint(Path(tmp), args.layers, args.heads, args.d_model)
        for n in [int(x) for x in args.lengths.split(",")]:
            cmd = [sys.executable, "-m", "diffeval", "attn-map", "--ckpt", str(native), "--len", str(n),
                   "--depths", "50", "--samples", "1", "--device", "cpu", "--out", str(Path(tmp) / f"run{n}")]
            rows.append(("diffeval attn-map (whole command)", n, *measure(cmd)))
        for n in [int(x) for x in args.lengths.split(",")]:
            cmd = [sys.executable, "-c", CAPTURE, str(native), str(n)]
            rows.append(("diffeval forward + capture (script)", n, *measure(cmd)))
        for n in [int(x) for x in args.eager_lengths.split(",")]:
            cmd = [sys.executable, "-c", EAGER, str(hf), str(n)]
            rows.append(("transformers eager output_attentions", n, *measure(cmd)))
    print(f"{'what':<38} {'tokens':>7} {'process s':>10} {'forward s':>10} {'peak MB':>9}  note")
    for what, n, wall, fwd, peak, note in rows:
        print(f"{what:<38} {n:>7} {wall:>10.1f} {fwd:>10.2f} {peak:>9.0f}  {note}")
    peer = {n: (w, f, p) for what, n, w, f, p, note in rows if what.startswith("transformers") and not note}
    for what, n, w, f, p, note in rows:
        if what.startswith("diffeval") and n in peer and not note:
            fw = f"forward {f / peer[n][1]:.3f}x, " if f == f else ""
            print(f"{what} / transformers eager at {n}: process time {w / peer[n][0]:.3f}x, {fw}"
                  f"memory {p / peer[n][2]:.3f}x")


if __name__ == "__main__":
    main()
