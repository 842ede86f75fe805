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
from synthray.probes.transforms import IDENTITY_PROBES, PROBES
from synthray.shards import map_shards


def probe_params(cfg: Any, probe: str) -> dict[str, Any]:
    """The keyword arguments of the probe's transform (a `recipe` entry is for training, not the transform)."""
    PROBES.get(probe)
    return {k: v for k, v in dict(cfg.probes.get(probe) or {}).items() if k != "recipe"}


def probe_cfg(cfg: Any, probe: str) -> Any:
    """`cfg` with the probe's recipe changes merged in (texture: 128 px random patches, flips, random test crops)."""
    from omegaconf import OmegaConf

    changes = (cfg.probes.get(probe) or {}).get("recipe")
    if not changes:
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.recipe = OmegaConf.merge(out.recipe, changes)
    return out


def check_probe_model(cfg: Any, probe: str) -> None:
    """A model-based probe's weights must be at hand before anything launches (tiny twins are built later)."""
    if probe == "depth":
        from synthray.probes.depth import resolve_depth_model

        model = str(cfg.probes.depth.model)
        if not model.startswith("tiny:"):
            resolve_depth_model(cfg.storage, model, bool(cfg.hub.allow_download))


def check_probe_archs(probes: list[str], archs: list[str]) -> None:
    """The texture probe is BagNet's receptive field: a grid crossing it with other architectures is refused."""
    from synthray.probes.transforms import TEXTURE_ARCHS
    from synthray.registry import SynthrayError

    other = [a for a in archs if a not in TEXTURE_ARCHS]
    if "texture" in probes and other:
        raise SynthrayError(
            f"probe 'texture' trains only {'/'.join(TEXTURE_ARCHS)} (their receptive field is the probe), but grid.arch "
            f"has {', '.join(other)}; run texture as its own sweep: grid.probe=[texture] grid.arch=[bagnet9]")


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
    if probe in IDENTITY_PROBES:
        return source.path
    spec = {"probe": probe, "params": params, "source": f"{source.kind}/{source.key}", "subdirs": list(subdirs)}
    art = Artifact(cfg.storage, "views", spec, label=f"{probe} view of {source.label}")

    def make(workdir: Path) -> dict[str, Any]:
        actors, gpus = 2, 0.0
        if probe == "depth":  # a model: one GPU actor per GPU on a cluster, one CPU actor locally
            from synthray.probes.depth import depth_worker, resolve_depth_model
            from synthray.shards import cluster_gpus

            path = resolve_depth_model(cfg.storage, str(params["model"]), bool(cfg.hub.allow_download))
            factory = functools.partial(depth_worker, path, int(params.get("batch_size", 16)))
            gpus = 1.0 if cluster_gpus() > 0 else 0.0
            actors = max(1, int(cluster_gpus())) if gpus else 1
        else:
            factory = functools.partial(_probe_worker, probe, params)
        for sub in subdirs:
            tasks = [{"name": f.name, "src": str(f)} for f in shard_files(source.path / sub)]
            map_shards(tasks, factory, workdir / sub, what=f"probe {probe} {source.kind}/{sub}", num_actors=actors, num_gpus=gpus)
        return {"source": spec["source"]}

    return art.build(make)
