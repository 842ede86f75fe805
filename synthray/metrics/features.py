"""The features stage: a fixed sample of a dataset folder embedded by a feature encoder, stored as an artifact.

Model encoders (CLIP, DINOv2, Inception) run as a Ray Data actor pool over the dataset's shards (one GPU each on
a cluster), so every probe and architecture of a sweep reuses one embedding per (encoder, dataset). `pixels` (a
16 x 16 downsample) needs no model and serves the embedded default.

Artifact layout: `<storage>/features/<key>/data/part-*.parquet` with columns id, label, feature (list<float32>).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from synthray.core.artifacts import Artifact, BuildDir, DatasetRef
from synthray.core.images import decode_array, read_images, read_shard, shard_files
from synthray.core.models import Models

PIXELS = "pixels"  # 16 px thumbnails as features: the encoder without a model



def check_metric_settings(m: Any) -> None:
    """`metrics.prdc_k`, `max_samples`, `distance` and `equal_counts`, each named in one line when wrong."""
    from synthray.core.registry import SynthrayError
    from synthray.metrics.prdc import DISTANCES

    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(m.prdc_k):
        raise SynthrayError(f"metrics.prdc_k must be a positive int, got {m.prdc_k!r}")
    if m.max_samples is not None and not (positive_int(m.max_samples) and m.max_samples > m.prdc_k):
        raise SynthrayError(f"metrics.max_samples must be null (every row) or an int above metrics.prdc_k={m.prdc_k}, "
                            f"got {m.max_samples!r}")
    if m.get("distance", "euclidean") not in DISTANCES:
        raise SynthrayError(f"metrics.distance must be one of {', '.join(DISTANCES)}, got {m.distance!r}")
    if not isinstance(m.get("equal_counts", False), bool):
        raise SynthrayError(f"metrics.equal_counts must be true or false, got {m.equal_counts!r}")


def sample_ids(folder: str, max_samples: int | None, seed: int, usable_only: bool = True) -> list[str]:
    """Up to `max_samples` usable row ids (None: all; `usable_only` False: flagged rows too), a fixed random subset,
    so every metric sees the same rows."""
    table = read_images(folder, columns=["id"], usable_only=usable_only).sort_values("id", kind="stable")
    if max_samples is not None and len(table) > max_samples:
        table = table.sample(n=max_samples, random_state=seed)
    return sorted(table["id"].tolist())


def pixel_features(images: list[np.ndarray], size: int = 16) -> np.ndarray:
    """(N, size*size*3) float32 in [0, 1]: each image downsampled (bicubic)."""
    from PIL import Image

    if not images:
        return np.zeros((0, size * size * 3), dtype=np.float32)
    small = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
    return np.stack(small).reshape(len(images), -1).astype(np.float32) / 255.0


def _encoder(name: str, model_path: str | None) -> Callable[[list[np.ndarray]], np.ndarray]:
    if name == PIXELS:
        return pixel_features
    from synthray.metrics.encoders import FEATURE_MODELS

    return FEATURE_MODELS.get(name)(model_path)


def _read_sample(task: dict[str, Any], extra: tuple[str, ...] = ()) -> tuple[dict[str, list], list[np.ndarray]]:
    """The sampled rows of one shard: their id, label (and `extra` columns), and decoded images."""
    wanted = set(task["ids"])
    columns = read_shard(task["src"], columns=["id", "image", "label", *extra]).to_pydict()
    keep = [i for i, row_id in enumerate(columns["id"]) if row_id in wanted]
    rows = {c: [columns[c][i] for i in keep] for c in ("id", "label", *extra)}
    return rows, [decode_array(columns["image"][i]) for i in keep]


def _feature_worker(names: dict[str, str | None], models: Models) -> Callable[[dict], dict]:
    """Runs once per actor: resolve and load every encoder on this node, then embed the sampled rows of each shard
    with all of them (one pass over the images, one actor pool per dataset however many encoders there are)."""
    encoders = {name: _encoder(name, models.locate(m, "encoder") if m else None) for name, m in names.items()}

    def work(task: dict[str, Any]) -> dict[str, list]:
        rows, images = _read_sample(task)
        for name, encode in encoders.items():
            rows[f"feature_{name}"] = [f.astype(np.float32) for f in encode(images)]
        return rows

    return work


def _clipscore_worker(names: dict[str, str], models: Models) -> Callable[[dict], dict]:
    """Runs once per actor: load CLIP (`names["clip"]`), then score the sampled rows of each shard against
    their prompts."""
    from synthray.metrics.clipscore import ClipScorer

    score = ClipScorer(models.locate(names["clip"], "encoder"))

    def work(task: dict[str, Any]) -> dict[str, list]:
        rows, images = _read_sample(task, ("prompt",))
        rows["clipscore"] = [float(v) for v in score(images, rows.pop("prompt"))]
        return rows

    return work


def _sampled_stage(planned: Any, dataset: DatasetRef, names: dict[str, str | None], worker: Callable[..., Callable],
                   models: Models) -> Artifact:
    """Build (once) the artifact of `planned` (a `SampledSpec`) holding `worker(names, models)` applied to the
    sampled rows of `dataset`, on an actor pool (placed by `metrics.device` when a model is involved)."""
    from synthray.core.shards import Pool, map_shards, placements, record_shards

    art = planned.artifact(models.store)
    spec, label = planned.settings, art.label

    def make(out: BuildDir) -> dict[str, Any]:
        ids = set(sample_ids(dataset.uri, spec["max_samples"], int(spec["seed"]), spec.get("bad_images") != "keep"))
        tasks = []
        for f in shard_files(dataset.uri):
            shard_ids = [i for i in read_shard(f, columns=["id"]).column("id").to_pylist() if i in ids]
            if shard_ids:
                tasks.append({"name": f.rsplit("/", 1)[1], "src": f, "rows": len(shard_ids), "ids": shard_ids})
        pool = Pool.from_cfg(planned.pool, planned.resources().label_selector) if any(names.values()) else Pool("cpu")
        done = map_shards(tasks, functools.partial(worker, names, models), out.uri + "/data", what=label, pool=pool)
        record_shards(out, "data", done)
        return {"rows": len(ids), "placement": placements(done)}

    return art.build(make)


def build_features(spec: Any, dataset: DatasetRef, models: Models) -> Artifact:
    """The features stage: build (or reuse) the feature sets of `spec` (a `SampledSpec`) on the split `dataset`."""
    return _sampled_stage(spec, dataset, spec.settings["encoders"], _feature_worker, models)


def build_clipscores(spec: Any, dataset: DatasetRef, models: Models) -> Artifact:
    """The CLIPScore stage: build (or reuse) the per-image CLIPScores of `spec` (a `ClipscoreSpec`) on `dataset`."""
    return _sampled_stage(spec, dataset, {"clip": spec.settings["clipscore"]}, _clipscore_worker, models)


def _rows(art: Artifact) -> Any:
    import pandas as pd

    return pd.concat([read_shard(f).to_pandas() for f in shard_files(art.file("data"))]).sort_values("id", kind="stable")


def feature_sets(art: Artifact) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """encoder name -> (features (N, D) float32, labels (N,)) of a built features artifact, rows by id."""
    table = _rows(art)
    labels = table["label"].to_numpy()
    return {name: (np.stack(table[f"feature_{name}"].to_numpy()).astype(np.float32), labels)
            for name in art.spec["encoders"]}


def mean_clipscore(art: Artifact) -> float:
    """Mean CLIPScore (0..100) of a built CLIPScore artifact's images against their own prompts."""
    return float(_rows(art)["clipscore"].mean())


def features(spec: Any, dataset: DatasetRef, models: Models) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """encoder name -> (features (N, D) float32, labels (N,)) of the sampled rows of `dataset`, for every encoder
    of `spec` (a `SampledSpec`), built once per dataset."""
    return feature_sets(build_features(spec, dataset, models))
