"""The probe stage: a view of a dataset artifact with one probe transform applied to every image.

Views mirror their source's layout (`data/`, or `train/`, `holdout/`, `test/`) and are artifacts of their own,
shared by every architecture. `rgb` is the identity and reuses its source without copying.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from synthray.artifacts import Artifact
from synthray.images import decode_array, encode, shard_files
from synthray.probes.transforms import PROBES
from synthray.shards import map_shards


def probe_params(cfg: Any, probe: str) -> dict[str, Any]:
    PROBES.get(probe)
    return dict(cfg.probes.get(probe) or {})


def _probe_worker(probe: str, params: dict[str, Any]) -> Callable[[dict], dict]:
    import pyarrow.parquet as pq
    from PIL import Image

    fn = PROBES.get(probe)

    def work(task: dict[str, Any]) -> dict[str, list]:
        columns = pq.read_table(task["src"]).to_pydict()
        columns["image"] = [encode(Image.fromarray(fn(decode_array(b), **params)), "png") for b in columns["image"]]
        return columns

    return work


def view(cfg: Any, probe: str, source: Artifact, subdirs: tuple[str, ...]) -> Path:
    """Return the folder whose `subdirs` hold `source` seen through `probe`, building it if needed.

    The folder's path relative to the storage root (`<kind>/<key>`) identifies the view for later stages.
    """
    params = probe_params(cfg, probe)
    if probe == "rgb":
        return source.path
    spec = {"probe": probe, "params": params, "source": f"{source.kind}/{source.key}", "subdirs": list(subdirs)}
    art = Artifact(cfg.storage, "views", spec, label=f"{probe} view of {source.label}")

    def make(workdir: Path) -> dict[str, Any]:
        factory = functools.partial(_probe_worker, probe, params)
        for sub in subdirs:
            tasks = [{"name": f.name, "src": str(f)} for f in shard_files(source.path / sub)]
            map_shards(tasks, factory, workdir / sub, what=f"probe {probe} {source.kind}/{sub}", num_actors=2)
        return {"source": spec["source"]}

    return art.build(make)
