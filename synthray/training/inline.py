"""Training in the calling process (a sweep's trial) instead of a Ray Train worker group, for small CPU runs.

Ray Train starts a controller, a worker and a dataset-split coordinator for every training, each a new process that
imports torch: 6 s on an idle 2-core machine, 15 s under load (bench/RESULTS.md), against a few seconds of epochs
for the smoke experiment's 300 digits. A CPU run with one worker and at most `training.inline_rows` rows runs the
same loop (`loop.train_loop`) here instead, with what a one-CPU Ray Train worker has: world 1, rank 0, one torch
thread, the same materialised Ray Data datasets (iterated directly, not through a split coordinator: the same
blocks in the same order). So it gives the same weights, bit for bit (tests/test_training.py), and the same key.

Its epoch checkpoints go to the same run folder in storage as Ray Train's, as committed folders
`checkpoint_epoch-NNNN` (manifest last, the newest two kept), and a rerun resumes from the newest. A failure is
retried by Tune's trial retries (`tune.max_failures`), not by Ray Train's `training.max_failures`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthray.core import storage
from synthray.core.artifacts import MANIFEST, committed_files, read_checked, write_folder
from synthray.core.shards import INLINE_ROWS, Pool
from synthray.training.loop import rng_state, set_rng_state

PREFIX = "checkpoint_epoch-"


def runs_inline(training: Any, rows: int) -> bool:
    """Whether a training of `rows` rows (training plus selection) runs in this process: configuration alone
    (`training.device`, `num_workers`, `inline_rows`; 0 always starts Ray Train), never the cluster's state."""
    # The rule of the in-process CPU pools (`shards.Pool.runs_inline`), and one worker: DDP needs Ray Train's group.
    pool = Pool(str(training.device), inline_rows=int(training.get("inline_rows", INLINE_ROWS)))
    return int(training.num_workers) == 1 and pool.runs_inline(rows)


class InlineSession:
    """The loop's run in this process (see `loop.RayTrainSession` for the interface). Used as a context: inside it
    torch runs one thread, as a one-CPU Ray Train worker does (oneDNN's sums depend on the thread count), and the
    process's RNG state, which the loop seeds, is given back afterwards."""

    world, rank = 1, 0

    def __init__(self, datasets: dict[str, Any], run_uri: str, report_to_tune: bool = False) -> None:
        self.datasets, self.run_uri, self.report_to_tune = datasets, run_uri, report_to_tune
        self.device = torch.device("cpu")
        self.metrics: dict[str, Any] = {}  # the last epoch's report
        self._kept: list[str] | None = None  # the complete checkpoints in storage, oldest first; None: not listed yet
        self._rows: dict[str, Any] = {}  # per-epoch datasets' rows, held for `epoch_shard`

    def __enter__(self) -> InlineSession:
        self._threads, self._rng = torch.get_num_threads(), rng_state()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self._threads)
        set_rng_state(self._rng)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model  # already on the CPU; one worker: no DDP

    def dataset_shard(self, name: str) -> Any:
        return self.datasets[name].iterator()

    def epoch_shard(self, name: str, seed: int, epoch: int) -> Any:
        """The rows of `name` in epoch `epoch`'s permutation (`inputs.epoch_rows`' order), sorted here: in a Tune
        trial Ray Data's sort cannot run, since its shuffle tasks ask for memory the trial's one-CPU placement group
        does not have. The rows are few (an inline run), so they are held once and reordered each epoch."""
        import numpy as np
        import pyarrow as pa
        import ray
        import ray.data

        from synthray.training.inputs import ORDER, UID, epoch_keys_arrow

        if name not in self._rows:
            self._rows[name] = pa.concat_tables(ray.get(self.datasets[name].to_arrow_refs()))
        table = self._rows[name]
        order = epoch_keys_arrow(table.select([UID]), seed, epoch).column(ORDER).to_numpy()
        return ray.data.from_arrow(table.take(pa.array(np.argsort(order, kind="stable"))).drop_columns([UID])).iterator()

    def _committed(self) -> list[str]:
        """The run's complete checkpoints, oldest first: listed once (what a killed attempt left), then kept up to
        date by `report`, so an epoch costs no listing of storage."""
        if self._kept is None:
            self._kept = [d for d in storage.list_dirs(self.run_uri)
                          if d.startswith(PREFIX) and storage.exists(storage.join(self.run_uri, d, MANIFEST))]
        return self._kept

    @contextmanager
    def last_checkpoint(self) -> Iterator[str | None]:
        """A local folder with the newest complete checkpoint's files (each checked against its manifest), or None."""
        names = self._committed()
        if not names:
            yield None
            return
        uri = storage.join(self.run_uri, names[-1])
        with tempfile.TemporaryDirectory(prefix="synthray-checkpoint-") as tmp:
            files = committed_files(uri)[1]  # what its manifest lists, each read back against it
            yield str(storage.download_dir(uri, Path(tmp), files, read=read_checked))

    def report(self, metrics: dict[str, Any], folder: str) -> None:
        """Store the epoch's checkpoint (files, then the manifest), keep the newest two, tell Tune (in a trial)."""
        epoch = int(metrics["epoch"])
        name = f"{PREFIX}{epoch:04d}"
        kept = [d for d in self._committed() if d != name]
        write_folder(Path(folder), storage.join(self.run_uri, name), {"epoch": epoch})
        for old in kept[:-1]:
            storage.delete(storage.join(self.run_uri, old))
        self._kept = [*kept[-1:], name]
        self.metrics = dict(metrics)
        if self.report_to_tune:
            from ray import tune

            tune.report(dict(metrics))  # what Ray Train's TuneReportCallback forwards from rank 0
