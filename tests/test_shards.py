"""`map_shards`, the executor of every dataset-producing stage: a small CPU stage runs in the calling process, a
larger or GPU one on a Ray Data actor pool, and both write the same bytes."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from PIL import Image

from synthray.core.images import encode, read_shard, shard_rows, write_table
from synthray.core.shards import Pool, map_shards
from synthray.probes.stage import _transform_worker
from synthray.probes.transforms import PROBES


def _source(folder, shards: int = 3, rows: int = 5) -> list[str]:
    rng = np.random.default_rng(0)
    uris = []
    for s in range(shards):
        images = [encode(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))) for _ in range(rows)]
        uri = str(folder / f"part-{s:05d}.parquet")
        write_table(uri, {"id": [f"{s}-{i}" for i in range(rows)], "label": [i % 3 for i in range(rows)], "image": images})
        uris.append(uri)
    return uris


def test_pool_decides_from_configuration_and_size_alone():
    assert Pool("cpu").runs_inline(300) and not Pool("cpu").runs_inline(100_000)
    assert not Pool("gpu").runs_inline(10)  # the calling process (a trial) holds no GPU
    assert not Pool("cpu", inline_rows=0).runs_inline(10) and not Pool("cpu").runs_inline(0)  # 0: rows unknown
    assert Pool.from_cfg({"device": "cpu", "inline_rows": 0}).inline_rows == 0


@pytest.mark.slow
def test_inline_and_pool_write_the_same_bytes(ray_cluster, tmp_path):
    (tmp_path / "src").mkdir()
    tasks = [{"name": u.rsplit("/", 1)[1], "src": u, "rows": shard_rows(u)} for u in _source(tmp_path / "src")]
    assert [t["rows"] for t in tasks] == [5, 5, 5]
    lowpass = functools.partial(_transform_worker, PROBES.get("lowpass"), {"cutoff": 0.2})
    inline = map_shards(tasks, lowpass, str(tmp_path / "inline"), what="lowpass", pool=Pool("cpu"))
    pooled = map_shards(tasks, lowpass, str(tmp_path / "pooled"), what="lowpass", pool=Pool("cpu", actors=2, inline_rows=0))
    digest = lambda records: sorted((r["name"], r["sha256"], r["rows"]) for r in records)  # noqa: E731
    assert digest(inline) == digest(pooled) and len(inline) == 3

    # Where each ran: the caller's own process, or actors of the pool. (Defined here: a test module's global
    # would be pickled by reference, and the actors cannot import this module.)
    def _where(task: dict) -> dict:
        import os

        return {"id": [task["name"]], "pid": [os.getpid()]}

    here = map_shards(tasks, lambda: _where, str(tmp_path / "here"), what="where", pool=Pool("cpu"))
    away = map_shards(tasks, lambda: _where, str(tmp_path / "away"), what="where", pool=Pool("cpu", inline_rows=0))
    pids = lambda folder: {read_shard(str(tmp_path / folder / t["name"])).column("pid")[0].as_py() for t in tasks}  # noqa: E731
    assert pids("here") == {os.getpid()} and os.getpid() not in pids("away")
    assert len(here) == len(away) == 3
