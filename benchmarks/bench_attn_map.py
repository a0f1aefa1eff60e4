"""Capturing attention rows at long context: `diffeval attn-map` vs transformers eager with
output_attentions (which materialises every n x n map), on the same random tiny weights.

Each measurement runs in a fresh process; peak memory is the child's max RSS.

    python benchmarks/bench_attn_map.py [--lengths 16384,32768] [--eager-lengths 16384]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
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


def make_checkpoint(root: Path) -> tuple[Path, Path]:
    """The same random weights as a Hugging Face Llama directory and a diffeval directory."""
    import torch
    import transformers as tf

    import diffeval

    cfg = tf.LlamaConfig(vocab_size=259, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=65536)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(str(root / "hf"))
    loaded = diffeval.load(str(root / "hf"), require_tokenizer=False)
    diffeval.save(loaded.model, root / "native")  # byte tokenizer for the needle prompts
    return root / "hf", root / "native"


def child(cmd: list[str]) -> tuple[float, float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        return wall, peak, (proc.stderr.strip().splitlines() or ["killed"])[-1][:50]
    return wall, peak, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16384,32768")
    parser.add_argument("--eager-lengths", default="16384")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, native = make_checkpoint(Path(tmp))
        for n in [int(x) for x in args.lengths.split(",")]:
            out = Path(tmp) / f"run{n}"
            cmd = [sys.executable, "-m", "diffeval", "attn-map", "--ckpt", str(native), "--len", str(n),
                   "--depths", "50", "--samples", "1", "--device", "cpu", "--out", str(out)]
            # max RSS of children is cumulative over children: measure each in its own python
            wrapper = [sys.executable, "-c",
                       "import resource,subprocess,sys,time;t=time.perf_counter();"
                       "r=subprocess.run(sys.argv[1:]).returncode;"
                       "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, r)",
                       *cmd]
            res = subprocess.run(wrapper, capture_output=True, text=True).stdout.split()
            rows.append(("diffeval attn-map (whole command)", n, float(res[0]), float(res[1]), "" if res[2] == "0" else "failed"))
        for n in [int(x) for x in args.eager_lengths.split(",")]:
            wrapper = [sys.executable, "-c",
                       "import resource,subprocess,sys,time;t=time.perf_counter();"
                       "r=subprocess.run(sys.argv[1:], capture_output=True).returncode;"
                       "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, r)",
                       sys.executable, "-c", EAGER, str(hf), str(n)]
            res = subprocess.run(wrapper, capture_output=True, text=True).stdout.split()
            rows.append(("transformers eager output_attentions", n, float(res[0]), float(res[1]),
                         "" if res[2] == "0" else f"exit {res[2]}"))
    print(f"{'what':<38} {'tokens':>7} {'wall s':>8} {'peak MB':>9}  note")
    for what, n, wall, peak, note in rows:
        print(f"{what:<38} {n:>7} {wall:>8.1f} {peak:>9.0f}  {note}")
    ours = {n: (w, p) for what, n, w, p, _ in rows if what.startswith("diffeval")}
    for what, n, w, p, note in rows:
        if what.startswith("transformers") and n in ours and not note:
            print(f"ratio at {n}: time {ours[n][0] / w:.3f}x, memory {ours[n][1] / p:.3f}x (diffeval / transformers)")


if __name__ == "__main__":
    main()
