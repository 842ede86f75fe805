"""Run a per-shard function over a Ray Data actor pool: the executor of every dataset-producing stage.

A stage describes its output as a list of shard tasks (each a JSON-able dict with a `name`). Shards already in
storage are skipped, so an interrupted stage resumes; each worker writes its shard as one whole file (an object
PUT), so a shard that exists is complete. Because the content of a shard depends only on its task, the output is
the same whatever the number of actors or blocks. Where the pool runs (GPUs and CPUs per actor, how many actors) is
the stage's configuration: an autoscaling cluster that starts with no GPU node sees the demand and adds one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from synthray.core import progress, storage
from synthray.core.images import write_table

log = logging.getLogger("synthray")

# A CPU stage of at most this many rows runs in the calling process. On 2 cores an actor's start (a process that
# imports torch and loads its model) took 7-14 s against 0.1-2 s of work for 300 digits (bench/overhead.py).
INLINE_ROWS = 2048


class _ShardWorker:
    """Ray Data callable class: builds the stage's worker once per actor (model loading), then maps shards."""

    def __init__(self, factory: Callable[[], Callable[[dict], dict]], out_dir: str, device: str):
        from synthray.core.devices import check_device
        from synthray.core.placement import where_am_i

        check_device(device)
        self.work = factory()
        self.out_dir = out_dir
        self.where = json.dumps(where_am_i(), sort_keys=True)  # the artifact's meta records where its shards ran

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"name": [], "rows": [], "seconds": [], "size": [], "sha256": [], "where": []}
        for payload in batch["task"]:
            task = json.loads(payload)
            start = time.perf_counter()
            written = write_table(storage.join(self.out_dir, task["name"]), self.work(task))
            for key in ("rows", "size", "sha256"):
                out[key].append(written[key])
            out["name"].append(task["name"])
            out["seconds"].append(time.perf_counter() - start)
            out["where"].append(self.where)
        return out


def map_shards(
    tasks: list[dict[str, Any]],
    factory: Callable[[], Callable[[dict], dict]],
    out_dir: str,
    *,
    what: str,
    pool: Pool,
) -> list[dict[str, Any]]:
    """Write every missing shard of `tasks` to the folder URI `out_dir`, logging rows done, rows/s and ETA.

    `factory()` runs once inside each actor and returns `work(task) -> columns`. The pool starts with
    `pool.actors` and may grow to `pool.max_actors`. Returns one record per shard written now: name, rows, size
    and sha256 (its manifest entry), seconds (inside the worker) and done_at (seconds since the stage started).
    """
    import ray

    present = set(storage.list_files(out_dir))
    todo = [t for t in tasks if t["name"] not in present]
    if len(todo) < len(tasks):
        log.info("%s: %d of %d shards already in storage, resuming", what, len(tasks) - len(todo), len(tasks))
    if not todo:
        return []
    total_rows = sum(int(t.get("rows", 0)) for t in todo)
    if pool.runs_inline(total_rows):
        return _map_inline(todo, factory, out_dir, what, pool, total_rows)
    # One block per shard so that every actor gets work even for a small table.
    ds = ray.data.from_items([{"task": json.dumps(t)} for t in todo], override_num_blocks=len(todo))
    least = max(1, min(pool.actors, len(todo)))
    most = max(least, min(pool.max_actors or least, len(todo)))
    ds = ds.map_batches(
        _ShardWorker,
        fn_constructor_kwargs={"factory": factory, "out_dir": out_dir, "device": pool.device},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=least, max_size=most),
        num_gpus=pool.gpus or None,
        num_cpus=pool.cpus,
        **({"label_selector": pool.selector} if pool.selector else {}),
    )
    return _collect(ds.iter_rows(), what, len(todo), total_rows)


def _map_inline(todo: list[dict[str, Any]], factory: Callable[[], Callable[[dict], dict]], out_dir: str, what: str,
                pool: Pool, total_rows: int) -> list[dict[str, Any]]:
    """The same worker, shard by shard, in this process: a small CPU stage that an actor would mostly spend
    starting (a new process importing torch, then the model load: seconds, for under a second of work)."""

    def rows() -> Iterator[dict[str, Any]]:
        worker = _ShardWorker(factory, out_dir, pool.device)
        for task in todo:
            out = worker({"task": np.array([json.dumps(task)])})
            yield {k: v[0] for k, v in out.items()}

    return _collect(rows(), what, len(todo), total_rows)


def _collect(rows: Iterable[dict[str, Any]], what: str, shards: int, total_rows: int) -> list[dict[str, Any]]:
    """The shard records as they come, with a log line (rows done, rows/s, ETA) and a progress report each."""
    done: list[dict[str, Any]] = []
    rows_done, start = 0, time.perf_counter()
    for row in rows:
        elapsed = time.perf_counter() - start
        done.append({"name": row["name"], "rows": int(row["rows"]), "size": int(row["size"]), "sha256": str(row["sha256"]),
                     "seconds": float(row["seconds"]), "done_at": elapsed, "where": json.loads(str(row["where"]))})
        rows_done += int(row["rows"])
        rate = rows_done / elapsed if elapsed > 0 else 0.0
        eta = (total_rows - rows_done) / rate if rate > 0 and total_rows else 0.0
        log.info("%s: shard %d/%d, %d/%d rows, %.1f rows/s, ETA %.0f s", what, len(done), shards, rows_done, total_rows, rate, eta)
        progress.advance(rows_done, total_rows or None)
    return done


class Pool:
    """Where an actor pool runs, from configuration alone: `device` (cpu | gpu), GPUs and CPUs per actor, and
    how many actors (`actors` to start, growing to `max_actors`). Never read off the cluster as it is right now.

    A small stage on CPU (at most `inline_rows` rows; the stage's tasks say how many) runs in the calling process
    instead: the same worker and bytes, without an actor's start. `inline_rows=0` always starts the pool."""

    def __init__(self, device: str = "cpu", gpus: float = 1.0, cpus: float = 1.0, actors: int = 1, max_actors: int | None = None,
                 inline_rows: int = INLINE_ROWS, selector: dict[str, str] | None = None):
        self.device = device
        self.selector = selector if device == "gpu" else None  # Ray's label_selector: which GPU nodes fit
        self.gpus = float(gpus) if device == "gpu" else 0.0
        self.cpus = float(cpus)
        self.actors = int(actors)
        self.max_actors = max_actors
        self.inline_rows = int(inline_rows)

    def placed(self, selector: dict[str, str] | None) -> Pool:
        """This pool, its GPU actors restricted to nodes whose labels satisfy `selector`."""
        return Pool(self.device, self.gpus, self.cpus, self.actors, self.max_actors, self.inline_rows, selector)

    def runs_inline(self, rows: int) -> bool:
        """Whether a stage of `rows` rows runs in this process (a CPU stage whose tasks count their rows)."""
        return self.device == "cpu" and 0 < rows <= self.inline_rows

    @classmethod
    def from_cfg(cls, section: Any, selector: dict[str, str] | None = None) -> Pool:
        """From a config section or dict with `device`, `gpus_per_actor`, `cpus_per_actor`, `num_actors` and
        `max_actors` (each optional: cpu, 1 GPU, 1 CPU, 1 actor, no growth); `selector`: the stage spec's
        `resources().label_selector`, where its GPU units may run."""
        return cls(str(section.get("device", "cpu")), float(section.get("gpus_per_actor", 1)),
                   float(section.get("cpus_per_actor", 1)), int(section.get("num_actors", 1)), section.get("max_actors"),
                   int(section.get("inline_rows", INLINE_ROWS)), selector)


def placements(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct nodes (id, labels, GPU model) the shard records `done` ran on, for an artifact's meta."""
    seen = {json.dumps(d.get("where"), sort_keys=True) for d in done if d.get("where")}
    return [json.loads(w) for w in sorted(seen)]


def record_shards(out: Any, folder: str, done: list[dict[str, Any]]) -> None:
    """Record the manifest entries of the shards `map_shards` wrote under `folder` (relative to the artifact)."""
    for shard in done:
        out.record(f"{folder}/{shard['name']}", {"size": shard["size"], "sha256": shard["sha256"]})
