"""Prefix reuse in `icl`: 100 test queries over one demonstration block of about 16K tokens
on a random tiny model (byte tokenizer), scored by constrained choice over the 6 labels:
with prefix reuse (the block prefilled once, every query and label branching from it) vs
re-encoding every prompt. Prints prefilled tokens, wall time and the ratios, and checks that
both give the same scores.

    python benchmarks/bench_icl.py [--len 16k] [--queries 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    import diffeval
    from diffeval.engine import Engine
    from diffeval.models import Decoder, ModelConfig
    from diffeval.probes import icl
    from diffeval.specs import token_count
    from diffeval.run import RunOptions, model_context

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--len", default="16k")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    length = token_count(args.len)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ModelConfig(family="transformer", vocab_size=259, d_model=128, n_layers=2, n_heads=4, d_ff=256,
                          max_seq_len=length + 512)
        model = Decoder(cfg)
        model.init_weights(0)
        diffeval.save(model, Path(tmp) / "m")
        loaded = diffeval.load(str(Path(tmp) / "m"))
        probe_cfg = icl.config({"lengths": str(length), "n_test": args.queries, "permutations": 1})
        ctx = model_context("m", loaded, RunOptions(progress=False))
        queries = icl.PROBE.generate(probe_cfg, ctx)
        work = [icl.PROBE.requests(probe_cfg, q, ctx) for q in queries]
        rows = {}
        for reuse in (True, False):
            got = {}
            engine = Engine(loaded.model, reuse=reuse)
            start = time.perf_counter()
            for i, out in engine.run(work):
                got.__setitem__(i, [s.logprob for s in out[0]])
            rows[reuse] = (engine.counters.prefilled_tokens, time.perf_counter() - start, got)
    (a_tok, a_s, a_got), (b_tok, b_s, b_got) = rows[True], rows[False]
    worst = max(abs(x - y) for i in a_got for x, y in zip(a_got[i], b_got[i]))
    print(f"\nICL choice scoring: {len(queries)} queries x 6 labels after one block of {queries[0].block_tokens} "
          f"tokens ({queries[0].shots} demonstrations), {args.threads} thread(s)")
    print(f"{'mode':<12} {'prefilled tokens':>17} {'wall s':>8}")
    print(f"{'reuse':<12} {a_tok:>17} {a_s:>8.2f}")
    print(f"{'re-encode':<12} {b_tok:>17} {b_s:>8.2f}")
    print(f"{'ratio':<12} {b_tok / a_tok:>16.1f}x {b_s / a_s:>7.1f}x   (re-encode / reuse)")
    print(f"largest difference between the two modes' log-likelihoods: {worst:.2e}")


if __name__ == "__main__":
    main()
