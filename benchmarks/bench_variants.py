"""Attention with learnable sinks (gpt-oss) and sliding windows: diffeval's `sdpa` backend
against transformers' own gpt-oss attention (its eager path, the one that implements sinks
without a kernel from the hub) on the same weights and inputs, side by side in one run.
Time per layer forward (best of --repeats) and the peak memory the call adds, at each
length, for a full-attention layer and a sliding-window layer. Shapes of gpt-oss-20b's
attention (64 query / 8 key-value heads of size 64, window 128) scaled down by --scale.

    python benchmarks/bench_variants.py [--lengths 2048,8192] [--threads 2] [--scale 8]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import threading
import time

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """This process's resident set in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_during(fn) -> tuple[float, float]:
    """(seconds, peak RSS in MB above the start) of one call; RSS sampled every 2 ms."""
    gc.collect()
    base = rss()
    peak, done = [base], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    return elapsed, (peak[0] - base) / 2**20


def best(fn, repeats: int) -> tuple[float, float]:
    fn()
    runs = [peak_rss_during(fn) for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,8192")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=int, default=8, help="divide gpt-oss-20b's head counts by this")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers as tf

    from diffeval.kernels import resolve_backend
    from diffeval.models.config import ModelConfig
    from diffeval.models.decoder import Decoder
    from diffeval.models.inspect import ForwardContext
    from diffeval.models.sinks import SinkAttention

    H, Hkv, d, W = 64 // args.scale, 8 // args.scale, 64, 128
    C = H * d
    config = tf.GptOssConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=d,
                             num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                             sliding_window=W, intermediate_size=64, num_local_experts=2, num_experts_per_tok=1,
                             vocab_size=64, rope_parameters={"rope_type": "default", "rope_theta": 150000.0})
    config._attn_implementation = "eager"
    cfg = ModelConfig(family="sinks", vocab_size=64, d_model=C, n_layers=2, n_heads=H, n_kv_heads=Hkv, d_head=d,
                      d_ff=64, qkv_bias=True, o_bias=True, sliding_window=W,
                      layer_types=["sliding_attention", "full_attention"], rope={"theta": 150000.0})
    rotary = Decoder(cfg).rotary
    hf_rotary = tf.models.gpt_oss.modeling_gpt_oss.GptOssRotaryEmbedding(config)
    masks = tf.masking_utils
    print(f"sinks attention, {H} query / {Hkv} kv heads x {d}, window {W}; {args.threads} threads, float32")
    print(f"{'layer':>8} {'T':>6} | {'transformers ms':>15} {'MB':>7} | {'diffeval ms':>11} {'MB':>7} | "
          f"{'time ratio':>10} {'memory ratio':>12} | max |diff|")
    for T in [int(x) for x in args.lengths.split(",")]:
        x = torch.randn(1, T, C, generator=torch.Generator().manual_seed(0))
        pos = torch.arange(T)[None]
        cos_h, sin_h = hf_rotary(x, pos)
        cos, sin = rotary.cos_sin(torch.arange(T), x.dtype)
        import inspect

        cache_arg = "cache" if "cache" in inspect.signature(masks.create_causal_mask).parameters else "past_key_values"
        kwargs = dict(config=config, inputs_embeds=x, attention_mask=None, position_ids=pos, **{cache_arg: None})
        hf_masks = {"sliding_attention": masks.create_sliding_window_causal_mask(**kwargs),
                    "full_attention": masks.create_causal_mask(**kwargs)}
        for i, kind in enumerate(("sliding_attention", "full_attention")):
            theirs = tf.models.gpt_oss.modeling_gpt_oss.GptOssAttention(config, i).eval()
            with torch.no_grad():
                theirs.sinks.normal_(0, 1)
            ours = SinkAttention(cfg, i).eval()
            ours.load_state_dict(theirs.state_dict())
            ctx = ForwardContext(resolve_backend("sdpa"), None, None, None, 2)
            with torch.no_grad():
                a = theirs(x, (cos_h, sin_h), hf_masks[kind])[0]
                b = ours(x, cos, sin, None, ctx)
                t_hf, m_hf = best(lambda: theirs(x, (cos_h, sin_h), hf_masks[kind]), args.repeats)
                t_us, m_us = best(lambda: ours(x, cos, sin, None, ctx), args.repeats)
            name = "sliding" if kind == "sliding_attention" else "full"
            print(f"{name:>8} {T:>6} | {1e3 * t_hf:>15.1f} {m_hf:>7.0f} | {1e3 * t_us:>11.1f} {m_us:>7.0f} | "
                  f"{t_hf / t_us:>9.1f}x {m_hf / max(m_us, 1.0):>11.1f}x | {(a - b).abs().max().item():.1e}")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
