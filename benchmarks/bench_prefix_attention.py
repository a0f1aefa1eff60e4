"""Attention for queries that continue a cached prefix, path by path, on the CPU or a CUDA GPU:
the same Tq queries after P cached keys through the explicit-mask call (the path before),
each path `sdpa` now takes, and (for DIFF on CUDA) the Triton kernel; plus a fresh causal call
over Tq tokens for scale. Time per call (best of --repeats) and its ratio to the mask call.
Shapes of SmolLM2-135M (9 query / 3 key-value heads of size 64) unless told otherwise.

    python benchmarks/bench_prefix_attention.py [--device cpu] [--threads 2] [--dtype float32]
        [--shapes 256@2048,256@16384,2048@2048] [--heads 9] [--kv-heads 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def mask_call(q, k, v, scale):
    """The explicit boolean bottom-right mask, built in the call (the path before)."""
    Tq, Tk = q.shape[2], k.shape[2]
    keys = torch.arange(Tk, device=q.device)
    mask = keys[None, :] <= torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def paths(device: torch.device, diff: bool):
    from diffeval.kernels import sdpa

    out = {"mask (before)": mask_call, "sdpa backend (now)": None}
    if device.type == "cpu" and sdpa._flash_cpu() is not None:
        out["split, log-sum-exp"] = sdpa.split_attend
    if device.type == "cuda":
        out["lower-right bias"] = sdpa.lower_right_attend
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--shapes", default="256@2048,256@16384,2048@2048,2048@16384",
                        help="Tq@P: Tq new queries after P cached keys")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from diffeval.kernels.sdpa import SdpaBackend

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    H, Hkv, D = args.heads, args.kv_heads, args.d_head
    scale = D ** -0.5
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{args.threads} threads'}),"
          f" {dtype}, {H} query / {Hkv} key-value heads of {D}; ms per call, best of {args.repeats}")
    print(f"{'attention':<10} {'Tq':>6} {'P':>7} {'path':<22} {'ms':>9} {'vs first':>8} {'max |diff|':>11}")
    g = torch.Generator(device=device).manual_seed(0)
    for shape in args.shapes.split(","):
        Tq, P = (int(x) for x in shape.split("@"))
        Tk = Tq + P
        q = torch.randn(1, H, Tq, D, device=device, dtype=dtype, generator=g)
        k = torch.randn(1, Hkv, Tk, D, device=device, dtype=dtype, generator=g)
        v = torch.randn(1, Hkv, Tk, D, device=device, dtype=dtype, generator=g)
        fresh = best_ms(lambda: F.scaled_dot_product_attention(q, k[:, :, :Tq], v[:, :, :Tq], is_causal=True,
                                                               scale=scale, enable_gqa=Hkv != H), args.repeats, device)
        print(f"{'softmax':<10} {Tq:>6} {0:>7} {'fresh causal':<22} {fresh:>9.2f}")
        want = mask_call(q, k, v, scale).float()
        base = None
        backend = SdpaBackend()
        for name, fn in paths(device, diff=False).items():
            call = (lambda: backend.attend(q, k, v, scale=scale)) if fn is None else (lambda fn=fn: fn(q, k, v, scale))
            ms = best_ms(call, args.repeats, device)
            base = base or ms
            err = (call().float() - want).abs().max().item()
            print(f"{'softmax':<10} {Tq:>6} {P:>7} {name:<22} {ms:>9.2f} {base / ms:>7.2f}x {err:>11.1e}")
        if device.type == "cuda":
            diff_rows(q, k, v, scale, args.repeats, device, Tq, P)


def diff_rows(q, k, v, scale, repeats, device, Tq, P) -> None:
    """DIFF with H = heads // 2 differential heads: the sdpa path (2H padded heads), the Triton
    kernel, and the triton backend (which sends the shapes where SDPA was faster to SDPA)."""
    import importlib.util

    from diffeval.kernels.sdpa import SdpaBackend

    H2 = q.shape[1] - q.shape[1] % 2  # 2H query maps
    n_kv = max(n for n in range(1, k.shape[1] + 1) if H2 % n == 0)
    q, k, v = q[:, :H2], k[:, :n_kv], v[:, :n_kv]
    lam = torch.tensor(0.3, device=device)
    rows = [("sdpa, 2H padded heads", lambda: SdpaBackend().diff_attend(q, k, v, lam, scale=scale))]
    if importlib.util.find_spec("triton") is not None:
        from diffeval.kernels.triton_diff import TritonBackend, diff_attention

        rows.append(("triton kernel", lambda: diff_attention(q, k, v, 0.3, scale)))
        rows.append(("triton backend (now)", lambda: TritonBackend().diff_attend(q, k, v, lam, scale=scale)))
    want = rows[0][1]().float()
    base = None
    for name, fn in rows:
        ms = best_ms(fn, repeats, device)
        base = base or ms
        err = (fn().float() - want).abs().max().item()
        print(f"{'diff':<10} {Tq:>6} {P:>7} {name:<22} {ms:>9.2f} {base / ms:>7.2f}x {err:>11.1e}")


if __name__ == "__main__":
    main()
