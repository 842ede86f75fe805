"""The captioner stage: one caption per real training image, on a Ray Data actor pool, into parquet shards.

The study captioned the real training images with gpt-4.1-nano and prompted `"{class}, {caption}"` from them
(`prompts.captions=captioner` with the `caption` prompt style). Artifact layout:
`<storage>/captions/<key>/data/part-NNNNN.parquet`, columns id (the real image's id, so a prompt traces back to
its image), class_id, label, caption; rows in the real train split's order.

The key is the spec alone: the real data's key, which images (`per_class`), the backend and model identity (for
the HTTP backend the model name, never the endpoint or the key), the instruction, the preprocessing, the
generation parameters and the shard size.

No image is captioned twice. Shards already stored are skipped (`map_shards`), and within a shard each batch of
`captioner.batch_size` captions is stored as soon as it is done, as a small JSON file under `progress/<shard>/`
of the artifact folder (shared storage: any node resumes it). A worker starting a shard reads those files and
asks only for the rest; captions that succeeded in a batch that failed are stored before the error is raised.
What a SIGKILL can cost is the one batch in flight. `progress/` is removed before the manifest is written.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from typing import Any, Callable

import pandas as pd

from synthray import storage
from synthray.artifacts import Artifact, BuildDir, DatasetRef, Store
from synthray.captioning.backends import CAPTIONERS, Secret, prepare_image
from synthray.registry import SynthrayError, error_line
from synthray.shards import Pool, map_shards, record_shards

log = logging.getLogger("synthray")
CAPTION_COLUMNS = ["id", "class_id", "label", "caption"]


def captioner_section(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.captioner, resolve=True)


def preprocess_identity(c: dict[str, Any]) -> dict[str, Any]:
    return {"min_side": int(c["min_side"]), "resample": "lanczos", "upscale": True, "format": "jpeg",
            "quality": int(c["jpeg_quality"]), "subsampling": "pillow-default"}


def captions_settings(cfg: Any) -> dict[str, Any]:
    """What a captions key records besides the real data: which images, the backend and its model, the
    instruction, the preprocessing and the shard size."""
    c = captioner_section(cfg)
    backend = CAPTIONERS.get(str(c["backend"]))
    return {"per_class": c["per_class"], "backend": str(c["backend"]), **backend.identity(c), "instruction": str(c["instruction"]),
            "preprocess": preprocess_identity(c), "shard_size": int(c["shard_size"])}


def captions_artifact(cfg: Any, real: Any = None) -> Artifact:
    """The captions of the real train images that `cfg.captioner` describes (not built)."""
    from synthray.graph.planner import captions_spec, real_spec

    return captions_spec(cfg, real_spec(cfg)).artifact(Store.from_cfg(cfg))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_captioner(cfg: Any) -> None:
    """Before launch: one line for a bad `captioner` setting. The API key is needed only when the captions are
    not already in storage (a complete artifact is reused without a single request)."""
    from synthray.data.real import real_artifact
    from synthray.devices import check_device_name
    from synthray.models import Models

    c = captioner_section(cfg)
    backend = CAPTIONERS.get(str(c["backend"]))
    if not isinstance(c.get("instruction"), str) or not c["instruction"].strip():
        raise SynthrayError("captioner.instruction is empty; it is the text sent with every image")
    if c.get("per_class") is not None and not _whole(c["per_class"]):
        raise SynthrayError(f"captioner.per_class must be a whole number >= 1 or null (every image), got {c['per_class']!r}")
    for key in ("min_side", "shard_size", "batch_size", "num_actors"):
        if not _whole(c.get(key)):
            raise SynthrayError(f"captioner.{key} must be a whole number >= 1, got {c.get(key)!r}")
    if not _whole(c.get("jpeg_quality")) or c["jpeg_quality"] > 100:
        raise SynthrayError(f"captioner.jpeg_quality must be in 1..100, got {c.get('jpeg_quality')!r}")
    if c.get("max_tokens") is not None and not _whole(c["max_tokens"]):
        raise SynthrayError(f"captioner.max_tokens must be a whole number >= 1 or null, got {c['max_tokens']!r}")
    check_device_name("captioner.device", c.get("device"))
    need_key = not captions_artifact(cfg, real_artifact(cfg)).is_complete()
    backend.check(c, Models.from_cfg(cfg), need_key)


def select_images(train: pd.DataFrame, per_class: int | None) -> pd.DataFrame:
    """The first `per_class` rows of each class in the split's order (all rows when None)."""
    if per_class is None:
        return train.reset_index(drop=True)
    return train.groupby("class_id", sort=False, group_keys=False).head(int(per_class)).reset_index(drop=True)


def _pool(c: dict[str, Any]) -> tuple[Pool, int]:
    """The actor pool and its largest size (which the rate limit is shared by). HTTP actors need no GPU."""
    size = max(int(c["num_actors"]), int(c.get("max_actors") or 0))
    if c["backend"] == "openai":
        return Pool("cpu", cpus=float(c.get("cpus_per_actor", 1)), actors=int(c["num_actors"]), max_actors=c.get("max_actors")), size
    return Pool.from_cfg(c), size


def _caption_worker(c: dict[str, Any], train_uri: str, selected: list[str], progress_uri: str, models: Any, secret: Secret,
                    pool_size: int, device: str) -> Callable[[dict], dict]:
    """Runs inside each actor: build the backend once, read the train images once (keeping the `selected` ones),
    then caption shard tasks."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from synthray.devices import check_device
    from synthray.images import read_shard, shard_files

    backend = CAPTIONERS.get(c["backend"])(c, str(c["instruction"]), models, check_device(device), secret, pool_size)
    index: dict[str, int] = {}
    column: list[Any] = []

    def image(row_id: str) -> bytes:
        if not column:  # the chosen train images, read once per actor (shard by shard) and kept as one Arrow column
            wanted = pa.array(selected, pa.string())
            table = pa.concat_tables([t.filter(pc.is_in(t.column("id"), value_set=wanted))
                                      for t in (read_shard(f, ["id", "image"]) for f in shard_files(train_uri))])
            column.append(table.column("image"))
            index.update((v, i) for i, v in enumerate(table.column("id").to_pylist()))
        return column[0][index[row_id]].as_py()

    def work(task: dict[str, Any]) -> dict[str, list]:
        folder = storage.join(progress_uri, task["name"].rsplit(".", 1)[0])
        done: dict[str, str] = {}
        for rel in storage.list_files(folder):
            done.update(json.loads(storage.read_bytes(storage.join(folder, rel))))
        todo = [i for i in task["ids"] if i not in done]
        if done:
            log.info("caption %s: %d of %d captions stored by an interrupted run", task["name"], len(task["ids"]) - len(todo), len(task["ids"]))
        size = int(c["batch_size"])
        for start in range(0, len(todo), size):
            ids = todo[start:start + size]
            jpegs = [prepare_image(image(i), int(c["min_side"]), int(c["jpeg_quality"])) for i in ids]
            results = backend(jpegs)
            failed = [(i, r) for i, r in zip(ids, results) if isinstance(r, Exception) or not r]
            kept = {i: r for i, r in zip(ids, results) if isinstance(r, str) and r}
            if kept:  # stored before any error below: a rerun never asks for these again
                storage.write_bytes(storage.join(folder, f"{uuid.uuid4().hex}.json"), json.dumps(kept).encode())
                done.update(kept)
            if failed:
                row_id, err = failed[0]
                why = err if isinstance(err, Exception) else "the model returned an empty caption"
                raise SynthrayError(f"captioner: image {row_id}: {why} ({len(failed)} of {len(ids)} in its batch failed; "
                                    f"{len(done)} captions of {task['name']} are stored and will not be asked for again)")
        return {"id": task["ids"], "class_id": task["class_ids"], "label": task["labels"],
                "caption": [done[i] for i in task["ids"]]}

    return work


def caption(cfg: Any, real: Artifact | None = None) -> Artifact:
    """Build (or reuse) the captions artifact of the real train images (`real`: the built real data, or built here)."""
    import os

    from synthray.data.real import real_data
    from synthray.images import read_images
    from synthray.models import Models

    check_captioner(cfg)
    real = real if real is not None else real_data(cfg)
    art = captions_artifact(cfg, real)
    c = captioner_section(cfg)

    def make(out: BuildDir) -> dict[str, Any]:
        train_uri = DatasetRef(real, "train").uri
        chosen = select_images(read_images(train_uri, columns=["id", "class_id", "label"]), c["per_class"])
        size = int(c["shard_size"])
        tasks = [{"name": f"part-{i:05d}.parquet", "rows": len(part), "ids": part["id"].tolist(),
                  "class_ids": part["class_id"].tolist(), "labels": [int(v) for v in part["label"]]}
                 for i, part in enumerate(chosen.iloc[s:s + size] for s in range(0, len(chosen), size))]
        secret = Secret(os.environ.get(str(c["openai"]["api_key_env"])) if c["backend"] == "openai" else None)
        pool, pool_size = _pool(c)
        progress = f"{out.uri}/progress"
        factory = functools.partial(_caption_worker, c, train_uri, chosen["id"].tolist(), progress, Models.from_cfg(cfg),
                                    secret, pool_size, pool.device)
        try:
            shards = map_shards(tasks, factory, f"{out.uri}/data", what=f"caption {art.label}", pool=pool)
        except Exception as err:
            line = error_line(err, "SynthrayError")
            if line:  # a worker's one line, out of Ray Data's wrapping
                raise SynthrayError(line) from None
            raise
        record_shards(out, "data", shards)
        storage.delete(progress)  # every shard is stored: the per-batch files have done their job
        table = read_images(f"{out.uri}/data", columns=["class_id", "caption"])
        return {"rows": len(table), "per_class": {k: int(v) for k, v in table["class_id"].value_counts(sort=False).items()},
                "backend": c["backend"], "model": art.spec["model"], "timing": shards}

    return art.build(make)


def read_captions(cfg: Any) -> pd.DataFrame:
    """The captions table (columns `CAPTION_COLUMNS`) of the complete captions artifact `cfg` names."""
    from synthray.data.real import real_artifact
    from synthray.images import read_images

    art = captions_artifact(cfg, real_artifact(cfg))
    if not art.is_complete():
        raise SynthrayError(f"prompts.captions=captioner: the captions {art.ref} are not built yet; a sweep builds them "
                            "before generation, or run `synthray caption` with the same overrides")
    return read_images(art.file("data"), columns=CAPTION_COLUMNS)


def captioned_prompt_table(cfg: Any, generator: str, style: str, real: Artifact) -> pd.DataFrame:
    """Inside a trial: build (or reuse) the captions, then the prompt table made from them."""
    from synthray.generation.stage import build_prompt_table

    caption(cfg, real)
    return build_prompt_table(cfg, generator, style)


def caption_command(overrides: list[str]) -> str:
    """`synthray caption [overrides]`: build or reuse the captions; one line with their URI and row count."""
    from synthray.config import compose
    from synthray.data.real import check_source
    from synthray.storage import check_storage
    from synthray.sweep.runner import init_ray

    cfg = compose(overrides)
    check_storage(cfg.storage)
    check_source(cfg)
    check_captioner(cfg)
    init_ray(cfg)
    art = caption(cfg)
    return f"captions: {art.file('data')} ({art.meta()['rows']} rows, {art.spec['backend']})"
