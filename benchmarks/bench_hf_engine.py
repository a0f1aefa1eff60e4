"""`--engine hf` vs `--engine native` vs plain transformers calls, on a random model of
SmolLM2-135M's shape (bench_ruler.make_model: a Hugging Face Llama directory with the zoo's
tokenizer), same weights, same threads, float32 on the CPU:

1. a needle grid at `--len` (`--depths` x `--samples` prompts, greedy) — diffeval's two engines
   vs a transformers `generate` loop over the same prompt ids and budgets (one prompt at a time;
   it has no newline stop, so it may generate more);
2. ICL with `--test` queries over one demonstration block at `--len` (choice mode: every label
   scored) — the two engines vs a transformers forward loop over (prompt + label) sequences, one
   forward per candidate (what a log-likelihood harness does without prefix reuse). That loop
   runs `--test` x labels full-length forwards (600 at 2K: hours on two CPU cores), so it is
   timed on the first `--plain-queries` queries and its wall time scaled to all of them (said
   in the table); its prefilled tokens are counted over all.

Wall seconds are the evaluation alone (model loading and sample generation excluded, the same
for all three); prefilled tokens are the tokens run through the model before decoding.

    python benchmarks/bench_hf_engine.py [--len 2k] [--depths 0,25,50,75,100] [--samples 2] [--test 100]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_ruler import plain_generate, plain_model, smollm2_shaped

from diffeval.requests import Generate


def _probe_run(name: str, params: dict, directory: Path, out: Path, engine: str) -> dict:
    from diffeval.probes import get_probe
    from diffeval.run import RunOptions, run_probe

    probe = get_probe(name)
    opts = RunOptions(device="cpu", progress=False, engine=engine)
    results = run_probe(probe, probe.config(params), [str(directory)], out, opts)
    return next(iter(results["timing"]["models"].values()))


def _requests(name: str, params: dict, directory: Path) -> list:
    """The run's requests, made again the same way (same prompt ids)."""
    from diffeval.checkpoints import load
    from diffeval.probes import get_probe
    from diffeval.probes.base import Generated
    from diffeval.run import RunOptions, model_context

    probe = get_probe(name)
    cfg = probe.config(params)
    ctx = model_context("bench", load(str(directory)), RunOptions(device="cpu", progress=False))
    samples = probe.generate(cfg, ctx)
    samples = samples.samples if isinstance(samples, Generated) else samples
    return [r for s in samples for r in probe.requests(cfg, s, ctx)]


def _plain_loop(directory: Path, reqs: list) -> tuple[float, int, int]:
    """transformers alone over the requests -> (seconds, prefilled tokens, generated tokens)."""
    model = plain_model(directory)
    prefilled = generated = 0
    t = time.perf_counter()
    with torch.no_grad():
        for r in reqs:
            if isinstance(r, Generate):
                generated += plain_generate(model, r.prompt, r.max_new_tokens)
                prefilled += len(r.prompt)
                continue
            for cand in r.candidates:  # Choice: one forward over prompt + candidate, log-probs of the candidate
                ids = torch.tensor([r.prompt + cand])
                logp = torch.log_softmax(model(ids).logits[0, len(r.prompt) - 1:-1].float(), -1)
                float(logp.gather(-1, torch.tensor(cand)[:, None]).sum())
                prefilled += ids.shape[1]
    return time.perf_counter() - t, prefilled, generated


def table(title: str, name: str, params: dict, directory: Path, tmp: Path, plain_requests: int = 0) -> None:
    rows = []
    for engine in ("native", "hf"):
        t = _probe_run(name, params, directory, tmp / f"{name}-{engine}", engine)
        rows.append((f"diffeval --engine {engine}", t["phases"]["prefill"] + t["phases"]["decode"]
                     + t["phases"].get("score", 0.0), t["prefilled_tokens"], t["generated_tokens"]))
    reqs = _requests(name, params, directory)
    timed = reqs[:plain_requests] if 0 < plain_requests < len(reqs) else reqs
    wall, _, generated = _plain_loop(directory, timed)
    scale = len(reqs) / len(timed)
    prefilled = sum(len(r.prompt) if isinstance(r, Generate) else sum(len(r.prompt) + len(c) for c in r.candidates)
                    for r in reqs)
    label = "transformers loop" if scale == 1 else f"transformers loop (x{scale:g})"
    rows.append((label, wall * scale, prefilled, round(generated * scale)))
    print(f"\n{title} ({len(reqs)} requests)")
    if scale != 1:
        print(f"(transformers loop timed on the first {len(timed)} requests, wall time scaled by {scale:g})")
    print(f"{'':<26} {'wall s':>8} {'prefilled':>10} {'generated':>10} {'wall / plain':>13} {'prefilled / plain':>18}")
    plain = rows[-1]
    for label, wall, prefilled, gen in rows:
        print(f"{label:<26} {wall:>8.2f} {prefilled:>10} {gen:>10} {wall / plain[1]:>13.3f} "
              f"{prefilled / plain[2]:>18.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--len", default="2k")
    parser.add_argument("--depths", default="0,25,50,75,100")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--plain-queries", type=int, default=10)
    args = parser.parse_args()
    with smollm2_shaped(args.len) as (directory, tmp, length):
        table(f"1. needle grid at {length} tokens", "needle",
              {"lengths": [length], "depths": [int(d) for d in args.depths.split(",")], "samples": args.samples},
              directory, tmp)
        table(f"2. ICL: {args.test} queries over one block at {length} tokens", "icl",
              {"lengths": str(length), "n_test": args.test, "permutations": 1, "arrangements": "random"},
              directory, tmp, plain_requests=args.plain_queries)


if __name__ == "__main__":
    main()
