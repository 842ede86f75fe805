"""An opt-in `torch.profiler` summary of a few steady training steps: where a step's time goes.

`bench/training.py --profile` sets `SYNTHRAY_PROFILE` (a JSON file) before Ray starts, so every worker inherits it;
rank 0 of the loop then profiles steps `first` .. `first + count - 1` of one epoch (`SYNTHRAY_PROFILE_STEPS`,
"epoch,first,count", epoch from 1; default 2,3,5: after the first epoch's warm-up and the iterator's start) and
writes `summarise`'s dict there. Unset, nothing here runs. The same summary is made of the bench's plain loop, so
the two print side by side:
- the top kernels by time (CUDA kernels on a GPU; CPU ops by self time without one);
- the gaps between them: the device idle between kernels (on CPU: host time outside any aten op, i.e. Python);
- the time in host-to-device copies (kernels `Memcpy HtoD`, pageable or pinned; `cudaMemcpyAsync` calls; `aten::copy_`)
  and in synchronisation (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaEventSynchronize`, `aten::item`).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

ENV, STEPS_ENV = "SYNTHRAY_PROFILE", "SYNTHRAY_PROFILE_STEPS"
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::item",
         "aten::_local_scalar_dense")


def activities(device: torch.device) -> list[Any]:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepProfile:
    """Profiles steps `first` .. `first + count - 1` (0-based, in the epoch) of epoch `epoch` (1-based)."""

    def __init__(self, path: str, epoch: int = 2, first: int = 3, count: int = 5) -> None:
        self.path, self.epoch, self.first, self.count = path, epoch, first, count
        self.prof: Any = None
        self.started, self.steps = 0.0, 0

    @classmethod
    def from_env(cls, rank: int) -> StepProfile | None:
        """The profile `SYNTHRAY_PROFILE` asks for, on rank 0; else None (the loop then does nothing extra)."""
        path = os.environ.get(ENV)
        if not path or rank != 0:
            return None
        epoch, first, count = (int(v) for v in os.environ.get(STEPS_ENV, "2,3,5").split(","))
        return cls(path, epoch, first, count)

    def before(self, epoch: int, index: int, device: torch.device) -> None:
        """Before step `index` of 0-based `epoch`: starts the profiler at the first profiled step."""
        if self.prof is None and epoch + 1 == self.epoch and index == self.first:
            _sync(device)  # the previous steps' queued kernels are not these steps'
            self.prof = torch.profiler.profile(activities=activities(device))
            self.prof.__enter__()
            self.started = time.perf_counter()

    def after(self, epoch: int, index: int, device: torch.device) -> None:
        """After step `index`: stops and writes the summary after the last profiled step."""
        if self.prof is not None and epoch + 1 == self.epoch:
            self.steps += 1
            if index == self.first + self.count - 1:
                self.close(device)

    def close(self, device: torch.device) -> None:
        """Stops a profile still running (an epoch shorter than asked) and writes what it has."""
        if self.prof is None or self.path is None:
            return
        _sync(device)
        wall = time.perf_counter() - self.started
        self.prof.__exit__(None, None, None)
        summary = summarise(self.prof, self.steps, wall, device)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(self.path + ".tmp", self.path)
        self.prof, self.path = None, None


def profile_steps(step: Callable[[], None], count: int, device: torch.device) -> dict[str, Any]:
    """`summarise` of `count` calls of `step` (the bench's plain loop), after the queued work has run."""
    _sync(device)
    with torch.profiler.profile(activities=activities(device)) as prof:
        started = time.perf_counter()
        for _ in range(count):
            step()
        _sync(device)
        wall = time.perf_counter() - started
    return summarise(prof, count, wall, device)


def _union(intervals: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """(busy time covered by the intervals, the gaps between them), in the intervals' unit."""
    busy, gaps, end = 0.0, [], None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            if end is not None:
                gaps.append(start - end)
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, gaps


def _outer_aten(e: Any) -> bool:
    """An aten op not called by another aten op (backward's ops sit under autograd's non-aten events)."""
    if not e.name.startswith("aten::"):
        return False
    parent = e.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def _table(groups: dict[str, list[float]], steps: int, top: int) -> list[dict[str, Any]]:
    rows = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [{"name": name[:90], "ms_per_step": round(sum(t) / 1e3 / steps, 4), "calls_per_step": round(len(t) / steps, 2)}
            for name, t in rows]


def summarise(prof: Any, steps: int, wall_s: float, device: torch.device, top: int = 12) -> dict[str, Any]:
    """A profile of `steps` steps -> per-step milliseconds: top kernels (or CPU ops), gaps, H2D copies, syncs."""
    from torch.autograd import DeviceType

    steps = max(steps, 1)
    events = list(prof.events())
    on_gpu = device.type == "cuda"
    host = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type != DeviceType.CPU]
    groups: dict[str, list[float]] = defaultdict(list)
    if on_gpu:
        for e in kernels:
            groups[e.name].append(e.time_range.end - e.time_range.start)
        spans = [(e.time_range.start, e.time_range.end) for e in kernels]
    else:
        for e in host:
            if e.name.startswith("aten::"):
                groups[e.name].append(e.self_cpu_time_total)
        spans = [(e.time_range.start, e.time_range.end) for e in host if _outer_aten(e)]
    busy, gaps = _union(spans)
    span = (max(s for _, s in spans) - min(s for s, _ in spans)) if spans else 0.0

    def total(names: tuple[str, ...] | str, among: list[Any]) -> dict[str, float]:
        hits = [e for e in among if (e.name.startswith(names) if isinstance(names, str) else e.name in names)]
        return {"ms_per_step": round(sum(e.time_range.end - e.time_range.start for e in hits) / 1e3 / steps, 4),
                "calls_per_step": round(len(hits) / steps, 2)}

    return {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu", "steps": steps,
        "wall_ms_per_step": round(1e3 * wall_s / steps, 3),
        "top": _table(groups, steps, top), "top_of": "CUDA kernels" if on_gpu else "CPU aten ops (self time)",
        # GPU: the device idle between kernels; CPU: host time between top-level aten ops (Python, the RNG draws).
        "gaps": {"of": "between kernels" if on_gpu else "between outer aten ops",
                 "busy_ms_per_step": round(busy / 1e3 / steps, 4), "idle_ms_per_step": round((span - busy) / 1e3 / steps, 4),
                 "idle_share": round(1 - busy / span, 4) if span else None, "gaps_per_step": round(len(gaps) / steps, 2),
                 "largest_ms": [round(g / 1e3, 4) for g in sorted(gaps, reverse=True)[:5]]},
        "h2d": {"memcpy_htod_pageable": total("Memcpy HtoD (Pageable", kernels),
                "memcpy_htod_pinned": total("Memcpy HtoD (Pinned", kernels),
                "cudaMemcpyAsync": total(("cudaMemcpyAsync",), host),
                "aten::copy_": total(("aten::copy_",), host)},
        "sync": {name: total((name,), host) for name in SYNCS},
        "aten_ops_per_step": round(sum(1 for e in host if _outer_aten(e)) / steps, 1),
    }


def format_summary(label: str, s: dict[str, Any]) -> list[str]:
    """The printed lines of one summary."""
    g = s["gaps"]
    lines = [f"{label}: {s['steps']} steps on {s['device']}, {s['wall_ms_per_step']:.2f} ms/step wall, "
             f"{s['aten_ops_per_step']:.0f} outer aten ops/step",
             f"{label}: top {s['top_of']} (ms/step, calls/step):"]
    lines += [f"    {r['ms_per_step']:9.3f}  {r['calls_per_step']:7.1f}  {r['name']}" for r in s["top"]]
    share = "-" if g["idle_share"] is None else f"{100 * g['idle_share']:.1f} %"
    lines.append(f"{label}: gaps {g['of']}: busy {g['busy_ms_per_step']:.3f} ms/step, idle {g['idle_ms_per_step']:.3f} "
                 f"ms/step ({share}), {g['gaps_per_step']:.0f} gaps/step, largest {g['largest_ms']} ms")
    lines.append(f"{label}: H2D copies: " + ", ".join(f"{k} {v['ms_per_step']:.3f} ms x {v['calls_per_step']:.1f}"
                                                    for k, v in s["h2d"].items()))
    lines.append(f"{label}: syncs: " + ", ".join(f"{k} {v['ms_per_step']:.3f} ms x {v['calls_per_step']:.1f}"
                                               for k, v in s["sync"].items()))
    return lines
