"""Real-model throughput on the CPU: diffeval vs transformers on a random Llama of SmolLM2-135M's
shape (30 layers, d_model 576, 9 query / 3 key-value heads, head size 64, d_ff 1536, vocab 49152,
tied embeddings, RoPE theta 100000), saved as a Hugging Face directory with a BPE tokenizer.

(a) Prefill tokens/s of a fresh prompt and of as many tokens continuing a cached prefix of that
    length: diffeval's model call, the engine (aligned 256-token chunks, as a run does), and
    transformers with its KV cache.
(b) A needle grid (5 depths x R=2 questions = 10 prompts): the whole `diffeval needle` command
    in a fresh process, with --batch-size 1 and 10, vs the loop a user writes with transformers
    (`generate` per prompt, greedy, same prompts regenerated through diffeval's Python API, same
    token budget): wall time and agreement of the scored answers.

    pip install -e ".[bench]"
    python benchmarks/bench_prefill.py [--len 2k] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0)


def make_checkpoint(directory: Path, max_positions: int) -> None:
    """Random weights in the model's shape, and a byte-level BPE trained on essay text."""
    import numpy as np
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from diffeval.probes.haystack import essay_sentence

    shape = dict(SHAPE)
    theta = shape.pop("rope_theta")
    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=max_positions, bos_token_id=0,
                                   eos_token_id=1, rope_parameters={"rope_type": "default", "rope_theta": theta})
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(directory))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = np.random.default_rng(0)
    tok.train_from_iterator([essay_sentence(rng) for _ in range(20000)], trainer)
    tok.save(str(directory / "tokenizer.json"))


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def prefill_table(directory: Path, length: int, repeats: int) -> None:
    import transformers

    import diffeval
    from diffeval.engine import Engine, Generate

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 4096, (1, 2 * length), generator=gen)  # (1, 2L)
    head, tail = ids[:, :length], ids[:, length:]
    ours = diffeval.load(str(directory)).model
    hf = transformers.LlamaForCausalLM.from_pretrained(str(directory), attn_implementation="sdpa").eval()

    def ours_fresh():
        ours(head, ours.new_cache(), logits="last")

    prefix = ours.new_cache()
    ours(head, prefix, logits="none")

    def ours_cached():
        ours(tail, prefix, logits="last")
        prefix.truncate(length)

    def engine(n_prompts: int):
        """A fresh engine prefilling n_prompts * length tokens as a run does (aligned 256-token
        chunks, then the last partial chunk with the first token decoded)."""
        prompt = tuple(ids[0, :n_prompts * length].tolist())
        return lambda: list(Engine(ours).run([[Generate(prompt, 1, None)]]))

    import inspect

    cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.no_grad():
        first = hf(head, use_cache=True, logits_to_keep=1)
        hf_prefix = getattr(first, "cache", None) or first.past_key_values

        def hf_fresh():
            hf(head, use_cache=True, logits_to_keep=1)

        def hf_cached():
            hf(tail, use_cache=True, logits_to_keep=1, **{cache_arg: copy.deepcopy(hf_prefix)})

        with torch.inference_mode():
            rows = [
                ("fresh", "diffeval model call", best_of(ours_fresh, repeats)),
                ("fresh", "diffeval engine (256-token chunks)", best_of(engine(1), repeats)),
                ("fresh", "transformers", best_of(hf_fresh, repeats)),
                ("after cached prefix", "diffeval model call", best_of(ours_cached, repeats)),
                ("after cached prefix", "transformers past_key_values", best_of(hf_cached, repeats)),
            ]
            both = best_of(engine(2), repeats)
    rows.insert(4, ("after cached prefix", "diffeval engine (256-token chunks)", both - rows[1][2]))
    ref = rows[2][2]
    print(f"\n(a) prefill of {length} tokens, fresh and after a cached {length}-token prefix "
          f"({torch.get_num_threads()} threads, best of {repeats})")
    print(f"{'prompt':<21} {'implementation':<36} {'s':>7} {'tokens/s':>9} {'vs transformers fresh':>22}")
    for what, impl, s in rows:
        print(f"{what:<21} {impl:<36} {s:>7.3f} {length / s:>9.0f} {ref / s:>21.2f}x")


def needle_table(directory: Path, length: int, threads: int) -> None:
    import transformers

    import diffeval
    from diffeval.probes.needle import NeedleConfig, answer_budget, generate, prediction_text

    argv = ["needle", "--ckpt", str(directory), "--len", str(length), "--depths", "0:100:5", "--needles", "2",
            "--queries", "2", "--samples", "1", "--device", "cpu"]
    ours = {batch: whole_command(argv + ["--batch-size", str(batch)], threads) for batch in (1, 10)}
    loaded = diffeval.load(str(directory))
    tok = loaded.tokenizer
    cfg = NeedleConfig(lengths=(length,), depths=(0.0, 25.0, 50.0, 75.0, 100.0), n_needles=2, n_queries=2,
                       samples=1)
    grid = generate(cfg, tok)
    budget = answer_budget(grid, tok)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(directory), attn_implementation="sdpa").eval()
    theirs, tokens = {}, 0
    t = time.perf_counter()
    with torch.inference_mode():
        for s in grid:
            for j, p in enumerate(s.prompts):
                out = hf.generate(torch.tensor([p]), max_new_tokens=budget, do_sample=False, pad_token_id=1)
                theirs[(s.id, j)] = prediction_text(tok, out[0, len(p):].tolist(), "default")
                tokens += len(p)
    hf_s = time.perf_counter() - t
    print(f"\n(b) needle grid: {len(theirs)} prompts of {length} tokens (5 depths x N=2, R=2), {threads} threads; "
          f"the transformers loop timed without its model load, diffeval as a whole command in a fresh process")
    print(f"{'implementation':<44} {'wall s':>8} {'speed-up':>9} {'prefilled':>10} {'same answers':>13}")
    print(f"{'transformers generate loop (no reuse)':<44} {hf_s:>8.1f} {1:>8.2f}x {tokens:>10} {'':>13}")
    for batch, (seconds, results, predictions) in ours.items():
        per_model = next(iter(results["timing"]["models"].values()))
        agree = sum(predictions[key] == answer for key, answer in theirs.items())
        name = f"diffeval needle --batch-size {batch}"
        print(f"{name:<44} {seconds:>8.1f} {hf_s / seconds:>8.2f}x {per_model['prefilled_tokens']:>10} "
              f"{agree:>8}/{len(theirs)}")
        print("    phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in results["timing"]["phases"].items())
              + f"; prefill {per_model['prefill_tokens_per_s']:.0f} tokens/s")


def whole_command(argv: list[str], threads: int) -> tuple[float, dict, dict]:
    """(wall seconds, results.json, {(sample id, question): prediction}) of a diffeval command."""
    with tempfile.TemporaryDirectory() as out:
        code = ("import sys, time, torch; torch.set_num_threads(int(sys.argv[1])); t = time.perf_counter()\n"
                "from diffeval.cli import main\ntry:\n    main(sys.argv[2:])\nexcept SystemExit as e:\n"
                "    assert not e.code, e.code\nprint(time.perf_counter() - t)")
        proc = subprocess.run([sys.executable, "-c", code, str(threads), *argv, "--out", out],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        results = json.loads((Path(out) / "results.json").read_text())
        rows = [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]
    predictions = {(r["id"], j): text for r in rows for j, text in enumerate(r["prediction"])}
    return float(proc.stdout.strip().splitlines()[-1]), results, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--len", default="2k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=["a", "b"], default=None)
    args = parser.parse_args()
    from diffeval.specs import token_count

    length = token_count(args.len)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "smollm2-shape"
        make_checkpoint(directory, max_positions=max(8192, 2 * length))
        if args.skip != "a":
            prefill_table(directory, length, args.repeats)
        if args.skip != "b":
            needle_table(directory, length, args.threads)


if __name__ == "__main__":
    main()
