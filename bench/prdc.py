"""GPU benchmark of exact PRDC: synthray's chunked torch `prdc` at scale, and side by side with the `prdc` package.

  (a) `synthray.metrics.prdc.prdc`, k=5, on 100k real x 100k synthetic random 768-d features made on the GPU:
      seconds and peak GPU memory (torch.cuda.max_memory_allocated, inputs included). Target: < 30 s on one H100.
      Both sets are drawn from one Gaussian (a perfect generator), so density ~1 and coverage ~1 - 2^-k.
  (b) at a size the reference can hold (--ref-size, default 10k x 10k, float64 features on the host): the
      reference `prdc.compute_prdc` (sklearn, CPU, three whole distance matrices) against ours (float64, transfer
      to the device included), same inputs; seconds of both, their ratio, and the max |difference| of the four
      metrics, which must be <= 1e-6 (exit status 1 otherwise). Ours in its default dtype is compared as well.

  python bench/prdc.py                        # (a) 100k x 100k x 768 in float32, (b) at 10k x 10k
  python bench/prdc.py --dtype float64        # (a) in float64 (exact mode; FP64 tensor cores on an H100)
  python bench/prdc.py --ref-size 20000       # a larger side-by-side
  python bench/prdc.py --tiny                 # CPU smoke run of the same code path (times mean nothing)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthray.metrics.prdc import METRICS, prdc

TOLERANCE = 1e-6


def timed(fn, device: torch.device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def at_scale(n: int, m: int, dim: int, k: int, chunk: int, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
    """(a): ours on random features generated where they are used (no host transfer in the timing)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    real = torch.randn(n, dim, generator=gen, device=device, dtype=dtype)
    fake = torch.randn(m, dim, generator=gen, device=device, dtype=dtype)
    prdc(real[:2000], fake[:2000], k=k, chunk=chunk, device=device, dtype=dtype)  # warm-up: CUDA context, cuBLAS
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out, seconds = timed(lambda: prdc(real, fake, k=k, chunk=chunk, device=device, dtype=dtype), device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    inputs = (real.numel() + fake.numel()) * real.element_size() / 2**30
    return {"seconds": round(seconds, 3), "peak_gib": None if peak is None else round(peak, 3),
            "inputs_gib": round(inputs, 3), "metrics": out}


def reference_prdc():
    """`prdc.compute_prdc`: this script is also named prdc.py and its folder comes first on sys.path, so drop the
    folder before importing, or `import prdc` would find the script itself."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    from prdc import compute_prdc

    return compute_prdc


def side_by_side(n: int, dim: int, k: int, chunk: int, device: torch.device, seed: int) -> dict:
    """(b): reference and ours on the same float64 host arrays."""
    compute_prdc = reference_prdc()
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        ref, ref_s = timed(lambda: compute_prdc(real_features=real, fake_features=fake, nearest_k=k), device)
    ref = {name: float(v) for name, v in ref.items()}
    ours, ours_s = timed(lambda: prdc(real, fake, k=k, chunk=chunk, device=device, dtype=torch.float64), device)
    default = prdc(real, fake, k=k, chunk=chunk, device=device)  # float32 on cuda, float64 on cpu
    diff = max(abs(ours[name] - ref[name]) for name in METRICS)
    return {"n": n, "reference_seconds": round(ref_s, 3), "ours_seconds": round(ours_s, 3),
            "ratio_reference_over_ours": round(ref_s / ours_s, 2), "max_abs_diff": diff, "agree": diff <= TOLERANCE,
            "max_abs_diff_default_dtype": max(abs(default[name] - ref[name]) for name in METRICS),
            "reference": ref, "ours": ours}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=int, help="real features in (a) (default 100000; --tiny 3000)")
    p.add_argument("--fake", type=int, help="synthetic features in (a) (default 100000; --tiny 3000)")
    p.add_argument("--dim", type=int, help="feature width (default 768; --tiny 64)")
    p.add_argument("--ref-size", type=int, help="real and fake count in (b) (default 10000; --tiny 1000)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="(a)'s dtype (default float32 on cuda, float64 on cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="small sizes on the CPU (smoke run)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    if not args.tiny and not torch.cuda.is_available():
        p.error("no GPU here: use --tiny for the CPU smoke run")
    device = torch.device("cpu" if args.tiny else "cuda")
    n = args.real or (3000 if args.tiny else 100_000)
    m = args.fake or (3000 if args.tiny else 100_000)
    dim = args.dim or (64 if args.tiny else 768)
    ref_n = args.ref_size or (1000 if args.tiny else 10_000)
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cuda" else "float64"))

    a = at_scale(n, m, dim, args.k, args.chunk, dtype, device, args.seed)
    b = side_by_side(ref_n, dim, args.k, args.chunk, device, args.seed)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "real": n, "fake": m,
              "dim": dim, "k": args.k, "chunk": args.chunk, "dtype": str(dtype).removeprefix("torch."),
              "at_scale": a, "side_by_side": b}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    peak = "n/a (cpu)" if a["peak_gib"] is None else f"{a['peak_gib']:.2f} GiB"
    print(f"(a) ours {n}x{m}x{dim} k={args.k} {result['dtype']}: {a['seconds']:.2f} s, peak {peak} (target < 30 s) | "
          f"(b) {ref_n}x{ref_n}: reference {b['reference_seconds']:.2f} s, ours {b['ours_seconds']:.2f} s, "
          f"ratio {b['ratio_reference_over_ours']:.1f}x, max |diff| {b['max_abs_diff']:.1e} "
          f"({'agree' if b['agree'] else 'MISMATCH'}; default dtype {b['max_abs_diff_default_dtype']:.1e})")
    if not b["agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
