"""Differential attention on a CUDA GPU: the fused Triton kernel vs the SDPA path (both maps
as 2H padded heads) vs the reference path, same inputs, side by side; time per call and
peak memory, with ratios. Needs a CUDA device and the triton package.

    python benchmarks/bench_triton.py [--lengths 2048,8192,32768] [--heads 16] [--d-head 64] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse

import torch


def timed(fn, repeats: int = 5) -> tuple[float, float]:
    """(median ms, peak MB) of fn() on the current CUDA device."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,8192,32768")
    parser.add_argument("--heads", type=int, default=16, help="differential heads H (2H query maps)")
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reference-max", type=int, default=8192, help="skip the reference path above this length")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    from diffeval.kernels import resolve_backend

    dtype = getattr(torch, args.dtype)
    H, d = args.heads, args.d_head
    n_kv = args.kv_heads or 2 * H
    backends = {name: resolve_backend(name, "cuda") for name in ("triton", "sdpa", "reference")}
    lam = torch.tensor(0.5, device="cuda")
    print(f"{'tokens':>7} {'triton ms':>10} {'sdpa ms':>9} {'ref ms':>9} {'triton MB':>10} {'sdpa MB':>9} "
          f"{'t/sdpa':>7} {'max |triton - sdpa|':>20}")
    for n in [int(x) for x in args.lengths.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(n)
        q = torch.randn(1, 2 * H, n, d, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(1, n_kv, n, d, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(1, n_kv, n, d, device="cuda", dtype=dtype, generator=g)
        res = {}
        for name, be in backends.items():
            if name == "reference" and n > args.reference_max:
                continue
            res[name] = timed(lambda: be.diff_attend(q, k, v, lam, scale=d**-0.5))
        err = (backends["triton"].diff_attend(q, k, v, lam, scale=d**-0.5).float()
               - backends["sdpa"].diff_attend(q, k, v, lam, scale=d**-0.5).float()).abs().max().item()
        ref_ms = f"{res['reference'][0]:9.2f}" if "reference" in res else f"{'-':>9}"
        print(f"{n:>7} {res['triton'][0]:>10.2f} {res['sdpa'][0]:>9.2f} {ref_ms} {res['triton'][1]:>10.0f} "
              f"{res['sdpa'][1]:>9.0f} {res['triton'][0] / res['sdpa'][0]:>7.2f} {err:>20.2e}")


if __name__ == "__main__":
    main()
