"""Throughput of the generation stage: the batch size that fits free GPU memory (`generation.batch_size=auto`), and
the arithmetic of the GPU's idle share that `bench/generation.py --profile` reports.

Both are pure functions of numbers, so CPU tests check them; the measuring (a probe batch, the torch profiler)
happens where a GPU is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from synthray.core.registry import SynthrayError

AUTO = "auto"
AUTO_FALLBACK = 8  # `auto` without CUDA (CPU runs, tests): config.yaml's default batch
AUTO_CAP = 64  # past this, a bigger batch buys little on one GPU and delays the first shard
HEADROOM = 0.15  # of the available memory, kept free for allocator fragmentation and compiled/graph pools
PROBE_IMAGES = 2


def batch_size_setting(value: Any) -> int | str:
    """`generation.batch_size`: a whole number >= 1, or `auto`; anything else is one line."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SynthrayError(f"generation.batch_size must be a whole number >= 1 or auto, got {value!r}")
    return int(value)


def overlap_setting(generation: Any) -> bool:
    """`generation.overlap` (default on): a batch's encoding runs while the next batch is generated."""
    value = generation.get("overlap", True)
    if not isinstance(value, bool):
        raise SynthrayError(f"generation.overlap must be true or false, got {value!r}")
    return value


def batch_ladder(cap: int = AUTO_CAP) -> list[int]:
    """Candidate batches: powers of two up to 8, then multiples of 8 (tensor-core friendly shapes), up to `cap`."""
    small = [n for n in (1, 2, 4) if n <= cap]
    return small + list(range(8, cap + 1, 8))


def choose_batch(available_bytes: float, per_image_bytes: float, *, headroom: float = HEADROOM,
                 cap: int = AUTO_CAP, shard: int | None = None) -> int:
    """The largest batch of `batch_ladder(cap)` whose activations (`per_image_bytes` each, from a probe) fit in
    `available_bytes` less `headroom`; at least 1, so a model that barely fits still runs one image at a time.

    With `shard` (rows per shard), the divisors of it up to `cap` instead (for 128: the powers of two): a compiled
    denoiser is specialised per batch shape, and a ragged last batch in every shard would compile (and, with CUDA
    graphs, record) once more.
    """
    ladder = [n for n in range(1, min(cap, shard) + 1) if shard % n == 0] if shard else batch_ladder(cap)
    budget = float(available_bytes) * (1.0 - headroom)
    if per_image_bytes <= 0:  # a probe that allocated nothing measured nothing: stay at the smallest batch
        return 1
    return max((n for n in ladder if n * per_image_bytes <= budget), default=1)


def available_gpu_bytes(free: int, total: int, reserved: int, allocated: int, share: float = 1.0) -> int:
    """GPU memory this actor may fill: what the driver reports free plus what torch's allocator holds unused; with a
    fractional GPU (`gpus_per_actor` < 1) no more than this actor's share, so two actors on one GPU do not race
    for the same memory."""
    own = free + max(0, reserved - allocated)
    return int(min(own, total * min(1.0, share) - allocated)) if share < 1.0 else int(own)


def busy_time(intervals: Iterable[tuple[float, float]], start: float | None = None, end: float | None = None) -> float:
    """Length of the union of `(begin, end)` intervals, clipped to [start, end] when given. Concurrent kernels on
    several streams overlap; counting each once is what "the GPU was busy" means."""
    total, reach = 0.0, None
    for a, b in sorted((max(a, start) if start is not None else a, min(b, end) if end is not None else b)
                       for a, b in intervals):
        if b <= a:
            continue
        if reach is None or a >= reach:
            total += b - a
            reach = b
        elif b > reach:
            total += b - reach
            reach = b
    return total


def idle_share(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """1 - busy / wall of the window [start, end]: the fraction of the window in which no kernel ran."""
    if end <= start:
        raise ValueError(f"empty window [{start}, {end}]")
    return 1.0 - busy_time(intervals, start, end) / (end - start)


def kernel_intervals(trace: dict[str, Any]) -> list[tuple[float, float]]:
    """The (begin, end) of every GPU kernel in a torch profiler chrome trace (`export_chrome_trace`), in µs.
    Copies and memsets are left out: they run on copy engines while the compute units may be idle."""
    return [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in trace.get("traceEvents", [])
            if e.get("cat") == "kernel" and e.get("ph") == "X"]
