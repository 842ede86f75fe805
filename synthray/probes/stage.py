"""The probe stage: a view of a dataset artifact with one probe applied to every image.

Views mirror their source's layout (`data/`, or `train/`, `control/`, `test/`) and are artifacts of their own,
shared by every architecture. Identity probes (rgb, texture) reuse their source without copying. The stage
dispatches through the probe registry: a probe with a `worker` runs its model on an actor pool placed by its own
config (`probes.<name>.device`, `gpus_per_actor`, `num_actors`), any other maps its per-image transform on CPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from synthray.artifacts import Artifact, BuildDir, DatasetRef, Store, without_legacy
from synthray.images import decode_array, encode, read_shard, shard_files, shard_rows
from synthray.models import Models, check_model, model_identity
from synthray.probes.transforms import PROBES, Probe
from synthray.registry import SynthrayError
from synthray.shards import Pool, map_shards, record_shards

# Keys of `probes.<name>` that say how or where a probe runs, not what it computes.
EXECUTION_KEYS = ("recipe", "device", "gpus_per_actor", "cpus_per_actor", "num_actors", "max_actors")


@dataclass(frozen=True)
class ProbeSetup:
    """One probe as a trial uses it, built once: the record, its transform parameters, the part of them that
    identifies its views, where it runs, and the recipe changes it implies."""

    probe: Probe
    params: dict[str, Any]
    identity: dict[str, Any]
    pool: Pool
    recipe: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.probe.name


def probe_setup(cfg: Any, name: str) -> ProbeSetup:
    from omegaconf import OmegaConf

    probe = PROBES.get(name)
    section = OmegaConf.to_container(cfg.probes.get(name) or OmegaConf.create({}), resolve=True)
    params = {k: v for k, v in section.items() if k not in EXECUTION_KEYS}
    identity = without_legacy(params, probe.legacy)
    pool = Pool("cpu", actors=2)
    if probe.worker is not None:  # a model: its identity (hub revision, tiny version) and the numerics of its device
        identity["model"] = model_identity(str(params["model"]))
        pool = Pool.from_cfg(section)
        identity["device"] = pool.device
    return ProbeSetup(probe, params, identity, pool, section.get("recipe"))



def probe_cfg(cfg: Any, setup: ProbeSetup) -> Any:
    """`cfg` with the probe's recipe changes merged in (texture: 128 px random patches, flips, random test crops)."""
    from omegaconf import OmegaConf

    if not setup.recipe:
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.recipe = OmegaConf.merge(out.recipe, setup.recipe)
    return out


def check_probe(cfg: Any, name: str, archs: list[str]) -> None:
    """Before launch: the probe's name, the architectures it admits, and a model-based probe's weights."""
    from synthray.devices import check_device_name

    setup = probe_setup(cfg, name)
    if setup.probe.check is not None:
        setup.probe.check(name, setup.params)
    other = [a for a in archs if setup.probe.archs is not None and a not in setup.probe.archs]
    if other:
        raise SynthrayError(
            f"probe '{name}' trains only {'/'.join(setup.probe.archs)} (their receptive field is the probe), but grid.arch "
            f"has {', '.join(other)}; run {name} as its own sweep: grid.probe=[{name}] grid.arch=[{setup.probe.archs[0]}]")
    if setup.probe.worker is not None:
        check_device_name(f"probes.{name}.device", setup.pool.device)
        check_model(Models.from_cfg(cfg), str(setup.params["model"]), "depth", f"probes.{name}.model")


def _transform_worker(probe: Probe, params: dict[str, Any]) -> Callable[[dict], dict]:
    from PIL import Image

    def work(task: dict[str, Any]) -> dict[str, list]:
        columns = read_shard(task["src"]).to_pydict()
        columns["image"] = [encode(Image.fromarray(probe(decode_array(b), **params)), "png") for b in columns["image"]]
        return columns

    return work


def view(store: Store, models: Models, setup: ProbeSetup, source: Artifact, splits: Any) -> dict[str, DatasetRef]:
    """`splits` of `source` seen through the probe, {split: DatasetRef}, building the view artifact if needed.
    `splits`: the planned {split: Split} (`graph.planner.view_spec`), or split names to plan here."""
    if setup.probe.identity:
        return {split: DatasetRef(source, split) for split in splits}
    if not isinstance(splits, dict):
        splits = {split: DatasetRef(source, split) for split in splits}
        spec = {"probe": setup.name, "params": setup.identity, "source": source.ref, "subdirs": list(splits)}
        art = Artifact(store, "views", spec, label=f"{setup.name} view of {source.label}")
    else:
        art = next(iter(splits.values())).spec.artifact(store)

    def make(out: BuildDir) -> dict[str, Any]:
        if setup.probe.worker is not None:
            factory = functools.partial(setup.probe.worker, setup.params, models)
        else:
            factory = functools.partial(_transform_worker, setup.probe, setup.params)
        for split in splits:
            tasks = [{"name": f.rsplit("/", 1)[1], "src": f, "rows": shard_rows(f)} for f in shard_files(source.file(split))]
            done = map_shards(tasks, factory, out.uri + "/" + split, what=f"probe {setup.name} {source.ref}/{split}", pool=setup.pool)
            record_shards(out, split, done)
        return {"source": source.ref}

    art.build(make)
    return {split: DatasetRef(art, split) for split in splits}
