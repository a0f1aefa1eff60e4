"""The GPU suite: diffeval against transformers and against the hardware, in one prepared run
that writes a JSON and prints ratio tables. Random weights of Llama-3-8B's shape (32 layers,
d_model 4096, 32 query / 8 key-value heads of 128, d_ff 14336, vocab 128256) and of a
DiffLlama of the same size (16 differential heads), bfloat16 on CUDA:

1. attention alone, DIFF V1 at the DiffLlama shape: the fused Triton kernel vs the padded
   SDPA path (both maps as 2H heads, q/k zero-padded to 2d) vs two SDPA calls (one per map,
   value width 2d), prefill at --prefill lengths and --queries queries after --keys cached
   keys; achieved TFLOP/s counting only the useful work, 2 maps x (QK^T + AV) with value
   width 2d = 6 n_q n_k d per differential head (halved for the causal part);
2. prefill tokens/s at --model-lengths: diffeval vs transformers (sdpa, logits of the last
   position only) on the same weights, Llama and DiffLlama;
3. decode ms/token after --decode-contexts tokens of context: diffeval's engine vs
   transformers' `generate` (its default dynamic cache, and its static cache with the forward
   compiled, mode reduce-overhead), and the memory-bandwidth bound (weights + KV bytes read per
   token over the copy rate measured in this run);
4. a needle grid (--needle-len x 5 depths x 2 samples) end to end: `diffeval needle` vs a
   transformers `generate` loop over the same prompt ids.

Targets (from the issue this suite answers) are printed beside each table.

    python benchmarks/gpu_suite.py --json gpu_suite.json          # on one GPU (sized for 8 minutes; untimed)
    python benchmarks/gpu_suite.py --smoke                        # tiny shapes on the CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

TARGETS = {
    "attention": "DIFF fused >= 1.3x padded SDPA at 16K-64K prefill, >= 50% of the bf16 matrix rate in useful FLOPs",
    "prefill": "Llama shape >= 1.0x transformers sdpa tokens/s; DiffLlama shape >= 1.2x transformers DiffLlama",
    "decode": "<= 1.3x the bandwidth bound per token at 4K, >= 2x transformers' default generate",
    "needle": ">= 3x the transformers generate loop end to end",
}


@dataclass(frozen=True)
class Shape:
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    d_head: int
    d_ff: int
    vocab: int


FULL = Shape(32, 4096, 32, 8, 128, 14336, 128256)
SMOKE = Shape(2, 128, 4, 2, 32, 256, 4096)


class Clock:
    """Wall time of a call, synchronising the device before and after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def best(self, fn, repeats: int = 3) -> float:
        """Seconds: the best of `repeats` calls after one warm-up."""
        fn()
        times = []
        for _ in range(repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return min(times)


def matmul_rate(clock: Clock, dtype: torch.dtype, n: int) -> float:
    """Measured dense matrix rate (TFLOP/s) of an n x n x n product in `dtype`."""
    a = torch.randn(n, n, device=clock.device, dtype=dtype)
    b = torch.randn(n, n, device=clock.device, dtype=dtype)
    s = clock.best(lambda: a @ b)
    return 2 * n**3 / s / 1e12


def copy_rate(clock: Clock, n_bytes: int) -> float:
    """Measured device memory copy rate (GB/s): bytes read + written over time."""
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=clock.device)
    dst = torch.empty_like(src)
    s = clock.best(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / s / 1e9


# --- 1. attention alone -----------------------------------------------------------------------


def two_calls(q, k, v, lam, scale):
    """DIFF as two SDPA calls, one per map, each over the value width 2d (no padding)."""
    from diffeval.kernels.common import diff_values, expand_kv

    H = q.shape[1] // 2
    kk = expand_kv(k, 2 * H)
    vv = diff_values(v, H)
    causal = q.shape[2] == k.shape[2]
    if not causal:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(q.shape[2], k.shape[2])
    a1 = F.scaled_dot_product_attention(q[:, :H], kk[:, :H], vv, is_causal=causal, scale=scale,
                                        attn_mask=None if causal else mask)
    a2 = F.scaled_dot_product_attention(q[:, H:], kk[:, H:], vv, is_causal=causal, scale=scale,
                                        attn_mask=None if causal else mask)
    return a1 - lam * a2


def attention_section(shape: Shape, clock: Clock, dtype, prefill: list[int], decode: list[tuple[int, int]],
                      peak: float) -> list[dict]:
    from diffeval.kernels import resolve_backend

    H, d, n_kv = shape.heads // 2, shape.d_head, shape.kv_heads
    paths = {"padded sdpa": resolve_backend("sdpa", clock.device).diff_attend}
    if clock.device.type == "cuda":
        try:
            paths["fused triton"] = resolve_backend("triton", clock.device).diff_attend
        except Exception as exc:  # the table says why the row is missing
            print(f"  triton backend unavailable: {exc}")
    paths["two sdpa calls"] = lambda q, k, v, lam, scale: two_calls(q, k, v, lam, scale)
    rows = []
    for n_q, n_k in [(n, n) for n in prefill] + decode:
        g = torch.Generator(device=clock.device).manual_seed(n_k)
        q = torch.randn(1, 2 * H, n_q, d, device=clock.device, dtype=dtype, generator=g)
        k = torch.randn(1, n_kv, n_k, d, device=clock.device, dtype=dtype, generator=g)
        v = torch.randn(1, n_kv, n_k, d, device=clock.device, dtype=dtype, generator=g)
        lam = torch.tensor(0.5, device=clock.device)
        prefix = n_k - n_q
        useful = H * 6 * n_q * (prefix + n_q / 2) * d  # causal: each query sees prefix + its half
        row = {"queries": n_q, "keys": n_k, "useful_gflop": useful / 1e9}
        ref = None
        for name, fn in paths.items():
            with torch.no_grad():
                s = clock.best(lambda: fn(q, k, v, lam, scale=d**-0.5))
                out = fn(q, k, v, lam, scale=d**-0.5).float()
            ref = out if ref is None else ref
            row[name] = {"ms": 1e3 * s, "tflops": useful / s / 1e12, "max_diff": float((out - ref).abs().max())}
        row["peak_share"] = {n: row[n]["tflops"] / peak for n in paths}
        rows.append(row)
    names = list(paths)
    print(f"\n1. DIFF attention, {H} differential heads x {d}, {n_kv} kv heads, {dtype} "
          f"(matrix rate measured: {peak:.0f} TFLOP/s)   target: {TARGETS['attention']}")
    print(f"{'queries':>8} {'keys':>7} | " + " | ".join(f"{n:>14} ms  TF/s" for n in names)
          + " | " + " ".join(f"{n} / padded" for n in names if n != "padded sdpa"))
    for r in rows:
        cells = " | ".join(f"{r[n]['ms']:>17.2f} {r[n]['tflops']:>5.3g}" for n in names)
        ratios = " ".join(f"{r['padded sdpa']['ms'] / r[n]['ms']:>{len(n) + 9}.2f}x"
                          for n in names if n != "padded sdpa")
        print(f"{r['queries']:>8} {r['keys']:>7} | {cells} | {ratios}")
    return rows


# --- checkpoints ------------------------------------------------------------------------------


def make_checkpoint(kind: str, shape: Shape, directory: Path, dtype, max_len: int) -> Path:
    """A random `kind` (llama | diffllama) Hugging Face directory with the zoo's tokenizer."""
    import transformers as tf

    import diffeval

    config_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                             "diffllama": (tf.DiffLlamaConfig, tf.DiffLlamaForCausalLM)}[kind]
    zoo = Path(diffeval.__file__).parent / "zoo"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(zoo / "tokenizer.json"))
    special = json.loads((zoo / "tokenizer_config.json").read_text())
    config = config_cls(vocab_size=shape.vocab, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
                        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                        num_key_value_heads=shape.kv_heads, head_dim=shape.d_head, max_position_embeddings=max_len,
                        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                        bos_token_id=tok.token_to_id(special["bos_token"]),
                        eos_token_id=tok.token_to_id(special["eos_token"]))
    torch.manual_seed(0)
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif "lambda" in name:
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(zoo / name, directory / name)
    return directory


def theirs(directory: Path, device, dtype):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="sdpa",
                                                   dtype=dtype).to(device).eval()


def ours(directory: Path, device, dtype):
    import diffeval

    return diffeval.load(str(directory), device=str(device), dtype=dtype, allow_beyond_memory=True)


# --- 2. prefill ---------------------------------------------------------------------------------


def _prefill_rows(kind: str, directory: Path, clock: Clock, dtype, lengths: list[int]) -> list[dict]:
    a, b = ours(directory, clock.device, dtype).model, theirs(directory, clock.device, dtype)
    rows = []
    for n in lengths:
        ids = torch.randint(0, 3000, (1, n), generator=torch.Generator().manual_seed(n)).to(clock.device)
        with torch.no_grad():
            s_ours = clock.best(lambda: a(ids, logits="last"), repeats=2)
            s_theirs = clock.best(lambda: b(ids, logits_to_keep=1), repeats=2)
            diff = float((a(ids, logits="last")[0, -1].float() - b(ids, logits_to_keep=1).logits[0, -1].float())
                         .abs().max())
        rows.append({"model": kind, "tokens": n, "ours_tok_s": n / s_ours, "theirs_tok_s": n / s_theirs,
                     "ratio": s_theirs / s_ours, "max_logit_diff": diff})
    return rows


def prefill_section(dirs: dict, clock: Clock, dtype, lengths: list[int]) -> list[dict]:
    rows = []
    for kind, directory in dirs.items():
        rows += _prefill_rows(kind, directory, clock, dtype, lengths)
        if clock.device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n2. prefill tokens/s (logits of the last position)   target: {TARGETS['prefill']}")
    print(f"{'model':>10} {'tokens':>7} | {'diffeval':>10} {'transformers':>12} | {'ratio':>6} | max |dlogit|")
    for r in rows:
        print(f"{r['model']:>10} {r['tokens']:>7} | {r['ours_tok_s']:>10.0f} {r['theirs_tok_s']:>12.0f} | "
              f"{r['ratio']:>5.2f}x | {r['max_logit_diff']:.2e}")
    return rows


# --- 3. decode ------------------------------------------------------------------------------------


def _generate_ms(model, ids, new: int, clock: Clock, **kw) -> float:
    """ms per generated token of transformers' generate: (time for `new` - time for 1) / (new - 1)."""
    eos = None  # never stop early: every call generates exactly its budget

    def run(n):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, eos_token_id=eos, pad_token_id=0, **kw)

    with torch.no_grad():
        t_new = clock.best(lambda: run(new), repeats=2)
        t_one = clock.best(lambda: run(1), repeats=2)
    return 1e3 * (t_new - t_one) / (new - 1)


def _ours_ms(loaded, prompt: list[int], new: int, clock: Clock) -> float:
    from diffeval.engine import Engine, Generate

    def run():
        engine = Engine(loaded.model, stop_ids=frozenset())
        list(engine.run([[Generate(tuple(prompt), new, None)]]))
        return engine.counters

    run()
    best = min((run() for _ in range(2)), key=lambda c: c.decode_seconds)
    return 1e3 * best.decode_seconds / max(1, best.generated_tokens - 1)


def decode_section(directory: Path, shape: Shape, clock: Clock, dtype, contexts: list[int], new: int,
                   rate_gb_s: float, compile_static: bool) -> list[dict]:
    loaded = ours(directory, clock.device, dtype)
    model = theirs(directory, clock.device, dtype)
    size = torch.empty((), dtype=dtype).element_size()
    weights = sum(p.numel() for p in loaded.model.parameters()) * size
    rows = []
    for n in contexts:
        prompt = torch.randint(0, 3000, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        ids = torch.tensor([prompt], device=clock.device)
        kv = 2 * shape.layers * shape.kv_heads * shape.d_head * (n + new // 2) * size
        bound = 1e3 * (weights + kv) / (rate_gb_s * 1e9)
        row = {"context": n, "bound_ms": bound, "ours_ms": _ours_ms(loaded, prompt, new, clock),
               "generate_ms": _generate_ms(model, ids, new, clock)}
        if compile_static:
            try:
                compiled = theirs(directory, clock.device, dtype)
                compiled.forward = torch.compile(compiled.forward, mode="reduce-overhead", fullgraph=True)
                row["static_compiled_ms"] = _generate_ms(compiled, ids, new, clock, cache_implementation="static")
            except Exception as exc:  # recorded, not hidden
                row["static_compiled_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
    print(f"\n3. decode ms/token ({new} tokens; bound: weights + KV over {rate_gb_s:.0f} GB/s measured)   "
          f"target: {TARGETS['decode']}")
    print(f"{'context':>8} | {'bound':>7} {'diffeval':>9} {'generate':>9} {'static+compile':>15} | "
          f"{'ours/bound':>10} {'generate/ours':>13}")
    for r in rows:
        static = f"{r['static_compiled_ms']:>15.2f}" if "static_compiled_ms" in r else f"{'-':>15}"
        print(f"{r['context']:>8} | {r['bound_ms']:>7.2f} {r['ours_ms']:>9.2f} {r['generate_ms']:>9.2f} {static} | "
              f"{r['ours_ms'] / r['bound_ms']:>9.2f}x {r['generate_ms'] / r['ours_ms']:>12.2f}x")
        if "static_compiled_error" in r:
            print(f"           static cache + compile failed: {r['static_compiled_error']}")
    return rows


# --- 4. needle grid end to end ---------------------------------------------------------------------


def needle_section(directory: Path, clock: Clock, dtype, length: int, tmp: Path) -> dict:
    from diffeval.checkpoints import load
    from diffeval.probes import get_probe
    from diffeval.probes.base import Generated
    from diffeval.requests import Generate
    from diffeval.run import RunOptions, model_context, run_probe

    probe = get_probe("needle")
    params = {"lengths": [length], "depths": [0, 25, 50, 75, 100], "samples": 2}
    opts = RunOptions(device=str(clock.device), dtype=dtype, progress=False, allow_beyond_max_positions=True)
    clock.sync()
    t = time.perf_counter()
    results = run_probe(probe, probe.config(params), [str(directory)], tmp / "needle", opts)
    ours_s = time.perf_counter() - t
    timing = next(iter(results["timing"]["models"].values()))
    ctx = model_context("bench", load(str(directory), device=str(clock.device), dtype=dtype), opts)
    samples = probe.generate(probe.config(params), ctx)
    samples = samples.samples if isinstance(samples, Generated) else samples
    reqs = [r for s in samples for r in probe.requests(probe.config(params), s, ctx) if isinstance(r, Generate)]
    model = theirs(directory, clock.device, dtype)
    clock.sync()
    t = time.perf_counter()
    generated = 0
    with torch.no_grad():
        for r in reqs:
            ids = torch.tensor([list(r.prompt)], device=clock.device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=r.max_new_tokens,
                                 do_sample=False, pad_token_id=0)
            generated += out.shape[1] - ids.shape[1]
    clock.sync()
    theirs_s = time.perf_counter() - t
    row = {"length": length, "prompts": len(reqs), "ours_s": ours_s, "ours_engine_s": timing["wall_seconds"],
           "ours_prefilled": timing["prefilled_tokens"], "theirs_s": theirs_s,
           "theirs_prefilled": sum(len(r.prompt) for r in reqs), "theirs_generated": generated,
           "ratio": theirs_s / ours_s}
    print(f"\n4. needle grid {length} x 5 depths x 2 samples, end to end   target: {TARGETS['needle']}")
    print(f"   diffeval needle {ours_s:.1f} s (engine {timing['wall_seconds']:.1f} s, prefilled "
          f"{timing['prefilled_tokens']:,}) vs transformers generate loop {theirs_s:.1f} s (prefilled "
          f"{row['theirs_prefilled']:,}): {row['ratio']:.2f}x")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (float32): the script runs")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--sections", default="attention,prefill,decode,needle")
    parser.add_argument("--prefill", default="4096,16384,65536", help="attention prefill lengths")
    parser.add_argument("--queries", default="256,2048", help="queries after cached keys")
    parser.add_argument("--keys", default="16384,65536", help="cached keys for --queries")
    parser.add_argument("--model-lengths", default="4096,16384,65536")
    parser.add_argument("--decode-contexts", default="4096,32768")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--needle-len", type=int, default=16384)
    parser.add_argument("--no-compile", action="store_true", help="skip transformers' static cache + compile")
    args = parser.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    if args.smoke:
        device, dtype, shape = torch.device("cpu"), torch.float32, SMOKE
        args.prefill, args.queries, args.keys = "128,256", "16", "256"
        args.model_lengths, args.decode_contexts, args.needle_len, args.new_tokens = "128", "128", 512, 8
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("the full suite needs a CUDA device (--smoke runs tiny shapes on the CPU)")
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, FULL
    clock = Clock(device)
    sections = set(args.sections.split(","))
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
                    "shape": shape.__dict__, "targets": TARGETS, "torch": torch.__version__}
    report["matmul_tflops"] = matmul_rate(clock, dtype, 8192 if device.type == "cuda" else 256)
    report["copy_gb_s"] = copy_rate(clock, (2 << 30) if device.type == "cuda" else (32 << 20))
    print(f"{report['device']}: matrix rate {report['matmul_tflops']:.1f} TFLOP/s ({dtype}), copy "
          f"{report['copy_gb_s']:.0f} GB/s")
    if "attention" in sections:
        decode_shapes = [(q, k) for k in ints(args.keys) for q in ints(args.queries)]
        report["attention"] = attention_section(shape, clock, dtype, ints(args.prefill), decode_shapes,
                                                report["matmul_tflops"])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        need = max(ints(args.model_lengths) + ints(args.decode_contexts) + [args.needle_len]) + 1024
        dirs = {}
        if sections & {"prefill", "decode", "needle"}:
            dirs["llama"] = make_checkpoint("llama", shape, tmp / "llama", dtype, need)
        if "prefill" in sections:
            dirs["diffllama"] = make_checkpoint("diffllama", shape, tmp / "diffllama", dtype, need)
            report["prefill"] = prefill_section(dirs, clock, dtype, ints(args.model_lengths))
        if "decode" in sections:
            report["decode"] = decode_section(dirs["llama"], shape, clock, dtype, ints(args.decode_contexts),
                                              args.new_tokens, report["copy_gb_s"],
                                              compile_static=not args.no_compile and device.type == "cuda")
        if "needle" in sections:
            report["needle"] = needle_section(dirs["llama"], clock, dtype, args.needle_len, tmp)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
