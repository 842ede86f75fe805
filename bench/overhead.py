"""Fixed overhead on CPU (issue 14, item 3): where the smoke experiment's time goes besides compute.

It measures, on whatever machine runs it (the figures mean most on a small CPU machine, where they hurt):
  - smoke cold: `synthray run storage=<fresh>` end to end, as a user runs it (imports and Ray start included);
  - smoke warm: the same command again on the same storage (everything is reused);
  - the start cost of each stage built by the cold run, from its sweep log (`<sweep>/logs/sweep.log`) and its
    artifacts' meta: stage wall time, time inside the shards, and what is neither (pool and actor start, commit);
  - the overhead per epoch of a tiny-cnn training on the smoke experiment's 300 real-holdout images, alone on
    the machine: the period between epoch starts (`started_at` in the model's history) minus the compute of an
    epoch, measured by the same steps in a plain loop in this process (one thread, like a Ray Train worker);
  - optionally `experiment=probes`, cold.
Each figure is printed next to its target: overhead <= 0.3 s per epoch, smoke cold <= 2 min, warm <= 15 s,
experiment=probes <= 5 min.

  python bench/overhead.py                    # smoke cold, warm, stage start costs, 30 epochs of tiny-cnn
  python bench/overhead.py --probes           # also experiment=probes, cold
  python bench/overhead.py --only epochs      # only the training figure (builds the 300 images if needed)
  python bench/overhead.py --only probes-floor  # experiment=probes' training compute alone, the floor under its time
  python bench/overhead.py --storage DIR      # keep everything under DIR (default: a temp folder, removed)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = {"epoch_overhead_s": 0.3, "smoke_cold_s": 120.0, "smoke_warm_s": 15.0, "probes_cold_s": 300.0}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# `(tune_trial pid=8344) [synthray] built synthetic 3680c261dd2bade9 (real-holdout, classname, 300 images) in 5.5 s`
EVENT = re.compile(r"pid=(\d+).*?\[synthray\] (building|built|reused) (\S+) ([0-9a-f]{16}) \((.*?)\)(?: in ([\d.]+) s)?$")
# `... [synthray] generate tiny-sd, classname, 300 images: shard 3/3, 300/300 rows, 11.2 rows/s, ETA 0 s`
SHARD = re.compile(r"pid=(\d+).*?\[synthray\] (.*): shard (\d+)/(\d+), (\d+)/(\d+) rows, ([\d.]+) rows/s")


def run_sweep_cli(storage: Path, *overrides: str) -> tuple[float, Path]:
    """Wall seconds of `synthray run storage=<storage> <overrides>` in a fresh process, and its sweep folder."""
    sweeps = storage / "sweeps"
    before = set(sweeps.iterdir()) if sweeps.exists() else set()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "synthray", "run", f"storage={storage}", *overrides],
                          check=False, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"synthray run {' '.join(overrides)} failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    new = sorted(set(sweeps.iterdir()) - before)
    return wall, new[-1]


def stage_costs(storage: Path, sweep: Path) -> list[dict[str, Any]]:
    """One row per artifact the sweep built, from its log line `built ... in X s` and its meta: `work_s`, the time
    inside shards (seconds in the actors) or epochs (the loop's training time); `start_s`, the wait before the
    first shard or epoch began (actor and pool start, model load; Ray Train start); `rest_s`, the remainder (gaps
    between epochs, the end of a Train run, commit). A pool whose meta keeps no shard timing gets `pool_s`:
    the time from its start to its last shard (rows / rate of its last log line)."""
    lines = [ANSI.sub("", line).rstrip() for line in (sweep / "logs" / "sweep.log").read_text(errors="replace").splitlines()]
    last_shard: dict[tuple[str, str], tuple[int, float]] = {}  # (pid, what) -> (rows done, rows/s) at its last shard
    rows = []
    for line in lines:
        shard = SHARD.search(line)
        if shard:
            last_shard[(shard.group(1), shard.group(2))] = (int(shard.group(5)), float(shard.group(7)))
            continue
        event = EVENT.search(line)
        if not event or event.group(2) != "built":
            continue
        pid, kind, key, label, wall = event.group(1), event.group(3), event.group(4), event.group(5), float(event.group(6))
        row: dict[str, Any] = {"stage": f"{kind} ({label})", "wall_s": wall}
        meta_file = storage / kind / key / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if meta.get("timing"):  # map_shards' records: seconds inside the actor, done_at since the pool began
            # done_at is when the driver got a shard, often all at the end: the start is the last one's time less
            # the work, which holds for the smoke's pools of one actor (shards one after another).
            row["work_s"] = sum(t["seconds"] for t in meta["timing"])
            row["start_s"] = max(t["done_at"] for t in meta["timing"]) - row["work_s"]
        elif kind == "models" and meta.get("history") and "started_at" in meta["history"][0]:
            epochs = training_figures(meta, wall, meta_file.stat().st_mtime)
            row["work_s"], row["start_s"] = epochs["compute_s"], epochs["start_s"]
        else:
            mine = [k for k in last_shard if k[0] == pid and label in k[1]]
            if mine:
                row["pool_s"] = sum(last_shard[k][0] / last_shard[k][1] for k in mine if last_shard[k][1] > 0)
                for k in mine:
                    del last_shard[k]
        if "work_s" in row:
            row["rest_s"] = wall - row["work_s"] - row["start_s"]
        rows.append(row)
    return rows


def training_figures(meta: dict[str, Any], wall: float, ended: float,
                     plain_epoch_s: float | None = None) -> dict[str, float]:
    """From a model's meta: start (stage start to the first epoch), the median epoch period (between epoch
    starts), the training seconds inside epochs as the loop measured them, and the overhead per epoch: the period
    minus `plain_epoch_s` (a plain loop's epoch) when given, else minus the loop's own training seconds."""
    history = meta["history"]
    starts = [h["started_at"] for h in history]
    loop_s = [meta["rows"] / h["images_per_s"] for h in history]  # images_per_s counts every worker's rows
    periods = [b - a for a, b in itertools.pairwise(starts)] or [ended - starts[0]]
    period = statistics.median(periods[1:] or periods)  # the first period holds Ray Data's first read
    compute = plain_epoch_s if plain_epoch_s is not None else statistics.median(loop_s)
    return {"start_s": starts[0] - (ended - wall), "period_s": period, "loop_epoch_s": statistics.median(loop_s),
            "compute_s": sum(loop_s), "overhead_s": period - compute, "epochs": len(history),
            "end_s": ended - starts[-1] - loop_s[-1]}


def plain_epoch_seconds(recipe: dict[str, Any], rows: int, num_classes: int, epochs: int = 5, arch: str = "tiny-cnn",
                        channels_last: bool = True) -> float:
    """Median seconds of one epoch of the recipe's steps (augmentation, forward, backward, clip, Adam) on `rows`
    random images of the recipe's load size, in this process on one thread (a Ray Train worker on one CPU gets
    one), in the memory layout synthray trains in: the compute that an epoch cannot do without."""
    import numpy as np
    import torch

    from synthray.training.augment import train_batch
    from synthray.training.loop import build_model
    from synthray.training.recipe import make_optimizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(arch, num_classes, channels_last=channels_last)
        optimizer = make_optimizer(model.parameters(), recipe)
        size, batch = int(recipe["load_size"]), int(recipe["batch_size"])
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (rows, size, size, 3), dtype=np.uint8))
        labels = torch.from_numpy(np.random.default_rng(1).integers(0, num_classes, rows))
        aug, times = np.random.default_rng(0), []
        for _ in range(epochs + 1):
            start = time.perf_counter()
            for s in range(0, rows, batch):
                x = train_batch(images[s:s + batch], recipe, aug)
                x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), labels[s:s + batch]).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(recipe["grad_clip"]))
                optimizer.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])  # the first pays the allocator's and kernels' warm-up
    finally:
        torch.set_num_threads(threads)


def measure_epochs(data_root: Path, model_root: Path, epochs: int, ray_train: bool = False) -> dict[str, Any]:
    """Train tiny-cnn for `epochs` on the smoke experiment's 300 real-holdout images (built under `data_root` if
    missing) into the fresh `model_root`, in a local Ray started here; returns the training figures. Runs in a
    process of its own (`--epochs-in`), so that Ray's lines stay out of the bench's output. By default the run
    trains in this process, as a sweep's trial does with so few rows; `ray_train`: in a Ray Train worker group
    (`training.inline_rows=0`), the path of larger and GPU runs."""
    from omegaconf import OmegaConf

    from synthray.config import compose
    from synthray.core.logs import setup_logging
    from synthray.graph.planner import train
    from synthray.graph.synthetic import generate_dataset
    from synthray.sweep.runner import start_local_ray
    from synthray.sweep.trial import plan_trials

    start_local_ray()
    setup_logging()
    data_cfg = compose([f"storage={data_root}"])
    trial = next(t for t in plan_trials(data_cfg) if t.point["generator"] == "real-holdout")
    data = generate_dataset(data_cfg, "real-holdout", "classname", trial.table)
    cfg = compose([f"storage={model_root}", f"recipe.epochs={epochs}"] + (["training.inline_rows=0"] if ray_train else []))
    start = time.perf_counter()
    art = train(cfg, "tiny-cnn", data, trial.num_classes, label="bench tiny-cnn")
    wall, ended = time.perf_counter() - start, time.time()
    meta = art.meta()
    plain = plain_epoch_seconds(OmegaConf.to_container(cfg.recipe, resolve=True), meta["rows"], trial.num_classes)
    figures = training_figures(meta, wall, ended, plain)
    figures.update(wall_s=wall, plain_epoch_s=plain, rows=meta["rows"], selection_rows=meta["selection_rows"])
    return figures


def probes_floor(root: Path, cores: int) -> dict[str, Any]:
    """experiment=probes' training compute alone, a floor no cut in overhead goes under: each distinct model of its
    plan (one per synthetic set and probe, one per probe on the real images) costs its epochs of a plain loop on its
    rows (`plain_epoch_seconds`, one thread); trials run side by side, so the sum is shared by `cores`. Evaluation
    and selection passes are left out, so the true floor is higher."""
    from omegaconf import OmegaConf

    from synthray.config import compose
    from synthray.graph.identity import numerics
    from synthray.graph.real import real_data
    from synthray.sweep.trial import plan_trials
    from synthray.training.trainer import split_counts

    cfg = compose([f"storage={root}", "experiment=probes"])
    trials = plan_trials(cfg)
    real = real_data(cfg)
    models: dict[tuple[str, str], Any] = {}
    for t in trials:
        models[(t.point["probe"], t.point["generator"])] = t
        models[(t.point["probe"], "real")] = t
    measured: dict[str, float] = {}
    total, rows_of = 0.0, {}
    for (_probe, source), t in sorted(models.items()):
        recipe = OmegaConf.to_container(t.cfg.recipe, resolve=True)
        fraction, seed = float(recipe["selection_fraction"]), int(recipe["seed"])
        if source not in rows_of:  # the synthetic controls hold prompts.n_per_class images per class
            rows_of[source] = (split_counts(real.file("train"), fraction, seed)[0] if source == "real"
                               else round(len(t.table) * (1 - fraction)))
        tag = json.dumps(recipe, sort_keys=True) + t.point["arch"]
        if tag not in measured:  # seconds per row: the probes share one recipe but texture's crop
            per = plain_epoch_seconds(recipe, 256, t.num_classes, epochs=2, arch=t.point["arch"],
                                      channels_last=numerics(t.cfg)["channels_last"])
            measured[tag] = per / 256
        total += measured[tag] * rows_of[source] * int(recipe["epochs"])
    return {"models": len(models), "compute_s": total, "floor_s": total / cores,
            "per_row_ms": sorted(round(v * 1000, 2) for v in measured.values())}


def verdict(value: float, target: float) -> str:
    return f"{'ok' if value <= target else 'OVER'} (target <= {target:g} s; load average {os.getloadavg()[0]:.1f})"


def run_epochs(data_root: Path, model_root: Path, epochs: int, ray_train: bool = False) -> dict[str, Any]:
    """`measure_epochs` in a fresh process, which prints the figures as one JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--epochs", str(epochs), "--epochs-in", str(data_root), str(model_root)]
                          + (["--ray-train"] if ray_train else []), check=False, capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith('{"')]  # Ray's own lines come and go around it
    if proc.returncode != 0 or not found:
        raise SystemExit(f"the training measurement failed (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", type=Path, help="root of everything (default: a temp folder, removed after)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the tiny-cnn training (the smoke recipe's)")
    parser.add_argument("--only", choices=["smoke", "epochs", "probes-floor"], help="run one part only")
    parser.add_argument("--probes", action="store_true", help="also time experiment=probes, cold (minutes)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--epochs-in", nargs=2, type=Path, metavar=("DATA", "MODELS"), help=argparse.SUPPRESS)
    parser.add_argument("--ray-train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the overhead is measured between epoch starts")
    if args.epochs_in:  # the child process of run_epochs
        print(json.dumps(measure_epochs(*args.epochs_in, args.epochs, args.ray_train)))
        return

    with tempfile.TemporaryDirectory(prefix="synthray-overhead-") as tmp:
        root = (args.storage or Path(tmp)).resolve()
        smoke, out = root / "smoke", {}
        if args.only in (None, "smoke"):
            if (smoke / "sweeps").exists():
                raise SystemExit(f"{smoke} holds sweeps already: give --storage a new folder for a cold run")
            cold, sweep = run_sweep_cli(smoke)
            out["smoke_cold_s"] = cold
            out["stages"] = stage_costs(smoke, sweep)
            print(f"smoke cold: {cold:.1f} s  {verdict(cold, TARGETS['smoke_cold_s'])}", flush=True)
            for row in out["stages"]:
                parts = ", ".join(f"{k.removesuffix('_s')} {row[k]:.1f}" for k in ("start_s", "work_s", "rest_s", "pool_s") if k in row)
                print(f"  {row['stage']}: {row['wall_s']:.1f} s" + (f" ({parts})" if parts else ""), flush=True)
            warm, _ = run_sweep_cli(smoke)
            out["smoke_warm_s"] = warm
            print(f"smoke warm: {warm:.1f} s  {verdict(warm, TARGETS['smoke_warm_s'])}", flush=True)
        if args.probes or args.only == "probes-floor":
            f = probes_floor(root / "probes", os.cpu_count() or 1)
            out["probes_floor"] = f
            print(f"experiment=probes training compute: {f['models']} models, "
                  f"{f['compute_s']:.0f} s on one core ({f['per_row_ms']} ms per image-step), so at least "
                  f"{f['floor_s']:.0f} s on {os.cpu_count()} cores  {verdict(f['floor_s'], TARGETS['probes_cold_s'])}", flush=True)
        if args.probes:
            probes, _ = run_sweep_cli(root / "probes", "experiment=probes")
            out["probes_cold_s"] = probes
            print(f"experiment=probes cold: {probes:.1f} s  {verdict(probes, TARGETS['probes_cold_s'])}", flush=True)
        if args.only in (None, "epochs"):
            # Both paths side by side: in the trial's process (what this run gets) and in a Ray Train worker group.
            # A fresh model root each time, so the model is trained, never reused; the images are shared.
            for path, ray_train in (("in-process", False), ("ray-train", True)):
                model_root = root / f"epochs-{path}-{time.strftime('%Y%m%d-%H%M%S')}"
                e = out[f"epochs_{path}"] = run_epochs(smoke, model_root, args.epochs, ray_train)
                print(f"tiny-cnn ({path}), {e['epochs']} epochs on {e['rows']} images (+{e['selection_rows']} selection "
                      f"rows): {e['wall_s']:.1f} s in all; start {e['start_s']:.1f} s, end {e['end_s']:.1f} s; "
                      f"epoch period {e['period_s']:.3f} s (median), loop's training time {e['loop_epoch_s']:.3f} s, "
                      f"plain compute {e['plain_epoch_s']:.3f} s", flush=True)
                print(f"  overhead per epoch: {e['overhead_s']:.3f} s  {verdict(e['overhead_s'], TARGETS['epoch_overhead_s'])}")
            ratio = out["epochs_ray-train"]["wall_s"] / out["epochs_in-process"]["wall_s"]
            print(f"training wall, Ray Train / in-process: {ratio:.2f}x")
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
