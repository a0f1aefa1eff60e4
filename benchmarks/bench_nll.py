"""Long-sequence NLL: `diffeval nll` vs transformers' forward with `labels=` on the same random
Llama weights with a 32k vocabulary, and the whole `diffeval nll` command at 64K tokens on a
tiny model.

Each measurement runs in a fresh process; peak memory is the process's max RSS above its
baseline after loading the weights (so the weights themselves are not counted), plus the
whole-process peak for the end-to-end command. transformers' loss materialises the full
(n x vocab) logits; diffeval computes the NLL in position chunks.

    python benchmarks/bench_nll.py [--len 16k] [--threads 2] [--long 64k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VOCAB = 32000

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
impl, directory, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = torch.randint(0, 32000, (1, length + 1), generator=torch.Generator().manual_seed(0))
if impl == "diffeval":
    import diffeval
    from diffeval.engine import Engine, TokenNLL
    model = diffeval.load(directory, backend="sdpa").model
else:
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with torch.no_grad():
    if impl == "diffeval":
        got = {}
        for i, out in Engine(model).run([[TokenNLL(tuple(ids[0].tolist()))]]):
            got.setdefault(i, out[0])
        loss = float(got[0].mean())
    else:
        loss = float(model(ids, labels=ids).loss)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": (peak - base) / 1024, "loss": loss}))
"""


def make_llama(directory: Path, max_positions: int) -> None:
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max_positions,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)


def child(impl: str, directory: Path, length: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, impl, str(directory), str(length), str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def command(argv: list[str]) -> dict:
    """Wall time and whole-process peak RSS of a diffeval command in a fresh process."""
    code = ("import resource, sys, time; from diffeval.cli import main; t = time.perf_counter(); "
            "rc = 0\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code or 0\n"
            "import json; print(json.dumps({'seconds': time.perf_counter() - t, 'rc': rc, "
            "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from diffeval.specs import token_count

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--len", default="16k")
    ap.add_argument("--long", default="64k")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    length, long = token_count(args.len), token_count(args.long)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "llama"
        make_llama(directory, length + 256)
        ours = child("diffeval", directory, length, args.threads)
        theirs = child("transformers", directory, length, args.threads)
        print(f"\nNLL of {length} tokens, random Llama (4 layers, d_model 256, vocab {VOCAB}), "
              f"{args.threads} thread(s), fresh process each")
        print(f"{'implementation':<34} {'seconds':>8} {'peak MB':>9} {'mean NLL':>9}")
        print(f"{'diffeval (TokenNLL, chunked)':<34} {ours['seconds']:>8.2f} {ours['peak_mb']:>9.0f} {ours['loss']:>9.4f}")
        print(f"{'transformers forward(labels=)':<34} {theirs['seconds']:>8.2f} {theirs['peak_mb']:>9.0f} {theirs['loss']:>9.4f}")
        print(f"{'ratio diffeval / transformers':<34} {ours['seconds'] / theirs['seconds']:>8.3f} "
              f"{ours['peak_mb'] / theirs['peak_mb']:>9.3f}")
        out = Path(tmp) / "run"
        cmd = command(["nll", "--ckpt", "zoo:transformer-tiny", "--len", str(long), "--docs", "1",
                       "--allow-beyond-max-positions", "--device", "cpu", "--out", str(out)])
        print(f"\n`diffeval nll --ckpt zoo:transformer-tiny --len {args.long} --docs 1` (whole command, fresh process)")
        print(f"{'tokens':>8} {'seconds':>8} {'peak RSS MB':>12} {'exit':>5}")
        print(f"{long:>8} {cmd['seconds']:>8.1f} {cmd['peak_mb']:>12.0f} {cmd['rc']:>5}")


if __name__ == "__main__":
    main()
