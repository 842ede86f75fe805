"""The probe stage: a view of a dataset artifact with one probe applied to every image.

Views mirror their source's layout (`data/`, or `train/`, `control/`, `test/`) and are artifacts of their own,
shared by every architecture. Identity probes (rgb, texture) reuse their source without copying. The stage
dispatches through the probe registry: a probe with a `worker` runs its model on an actor pool placed by its own
config (`probes.<name>.device`, `gpus_per_actor`, `num_actors`), any other maps its per-image transform on CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synthray.core.artifacts import Artifact, BuildDir, DatasetRef, Store
from synthray.core.images import decode_array, encode, read_shard, shard_files, shard_rows
from synthray.core.models import Models
from synthray.core.shards import Pool, map_shards, placements, record_shards
from synthray.probes.transforms import Probe

# Keys of `probes.<name>` that say how or where a probe runs, not what it computes.
EXECUTION_KEYS = ("recipe", "device", "gpus_per_actor", "gpu_memory_gb", "cpus_per_actor", "num_actors", "max_actors")


@dataclass(frozen=True)
class ProbeSetup:
    """One probe as a trial uses it, built once: the record, its transform parameters, the part of them that
    identifies its views, where it runs, and the recipe changes it implies."""

    probe: Probe
    params: dict[str, Any]
    identity: dict[str, Any]
    pool: Pool
    recipe: dict[str, Any] | None
    memory_gb: float = 0.0   # GPU memory one actor of a model probe needs (placement)

    @property
    def name(self) -> str:
        return self.probe.name


def _transform_worker(probe: Probe, params: dict[str, Any]) -> Callable[[dict], dict]:
    from PIL import Image

    def work(task: dict[str, Any]) -> dict[str, list]:
        columns = read_shard(task["src"]).to_pydict()
        columns["image"] = [encode(Image.fromarray(probe(decode_array(b), **params)), "png") for b in columns["image"]]
        return columns

    return work


def view(store: Store, models: Models, setup: ProbeSetup, source: Artifact, splits: dict[str, Any]) -> dict[str, DatasetRef]:
    """The view stage: `splits` of the built `source` seen through the probe, {split: DatasetRef}, building the
    view artifact if needed. `splits`: the planned {split: Split} (`graph.planner.view_spec`); an identity probe's
    are its source's own splits, reused without copying."""
    if setup.probe.identity:
        return {split: DatasetRef(source, split) for split in splits}
    planned = next(iter(splits.values())).spec
    art = planned.artifact(store)
    pool = setup.pool.placed(planned.resources().label_selector)

    def make(out: BuildDir) -> dict[str, Any]:
        if setup.probe.worker is not None:
            factory = functools.partial(setup.probe.worker, setup.params, models)
        else:
            factory = functools.partial(_transform_worker, setup.probe, setup.params)
        nodes = []
        for split in splits:
            tasks = [{"name": f.rsplit("/", 1)[1], "src": f, "rows": shard_rows(f)} for f in shard_files(source.file(split))]
            done = map_shards(tasks, factory, out.uri + "/" + split, what=f"probe {setup.name} {source.ref}/{split}", pool=pool)
            record_shards(out, split, done)
            nodes += placements(done)
        return {"source": source.ref, "placement": nodes}

    art.build(make)
    return {split: DatasetRef(art, split) for split in splits}
