"""Run a per-shard function over a Ray Data actor pool: the executor of every dataset-producing stage.

A stage describes its output as a list of shard tasks (each a JSON-able dict with a `name`). Shards already on
disk are skipped, so an interrupted stage resumes; each worker writes its shard to a temporary name and renames
it, so a shard on disk is always complete. Because the content of a shard depends only on its task, the
output is the same whatever the number of actors or blocks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synthray.images import write_table

log = logging.getLogger("synthray")


class _ShardWorker:
    """Ray Data callable class: builds the stage's worker once per actor (model loading), then maps shards."""

    def __init__(self, factory: Callable[[], Callable[[dict], dict]], out_dir: str):
        self.work = factory()
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        names, rows, seconds = [], [], []
        for payload in batch["task"]:
            task = json.loads(payload)
            start = time.perf_counter()
            columns = self.work(task)
            rows.append(write_table(self.out_dir / task["name"], columns))
            names.append(task["name"])
            seconds.append(time.perf_counter() - start)
        return {"name": names, "rows": rows, "seconds": seconds}


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def map_shards(
    tasks: list[dict[str, Any]],
    factory: Callable[[], Callable[[dict], dict]],
    out_dir: Path,
    *,
    what: str,
    num_actors: int = 1,
    max_actors: int | None = None,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
) -> list[dict[str, Any]]:
    """Write every missing shard of `tasks` to `out_dir`, logging rows done, rows/s and ETA.

    `factory()` runs once inside each actor and returns `work(task) -> columns`. The pool starts with `num_actors`
    and may grow to `max_actors` on an autoscaling cluster. Returns one record per shard written now:
    name, rows, seconds (inside the worker) and done_at (seconds since the stage started, as seen by the driver).
    """
    import ray

    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not (out_dir / t["name"]).exists()]
    if len(todo) < len(tasks):
        log.info("%s: %d of %d shards already on disk, resuming", what, len(tasks) - len(todo), len(tasks))
    if not todo:
        return []
    total_rows = sum(int(t.get("rows", 0)) for t in todo)
    # One block per shard so that every actor gets work even for a small table.
    ds = ray.data.from_items([{"task": json.dumps(t)} for t in todo], override_num_blocks=len(todo))
    pool = max(1, min(num_actors, len(todo)))
    most = max(pool, min(max_actors or pool, len(todo)))
    ds = ds.map_batches(
        _ShardWorker,
        fn_constructor_kwargs={"factory": factory, "out_dir": str(out_dir)},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=pool, max_size=most),
        num_gpus=num_gpus or None,
        num_cpus=num_cpus,
    )
    done: list[dict[str, Any]] = []
    rows_done, start = 0, time.perf_counter()
    for row in ds.iter_rows():
        elapsed = time.perf_counter() - start
        done.append({"name": row["name"], "rows": int(row["rows"]), "seconds": float(row["seconds"]), "done_at": elapsed})
        rows_done += int(row["rows"])
        rate = rows_done / elapsed if elapsed > 0 else 0.0
        eta = (total_rows - rows_done) / rate if rate > 0 and total_rows else 0.0
        log.info("%s: shard %d/%d, %d/%d rows, %.1f rows/s, ETA %.0f s", what, len(done), len(todo), rows_done, total_rows, rate, eta)
    return done
