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
from collections.abc import Callable
from typing import Any

import pandas as pd

from synthray.core import storage
from synthray.core.artifacts import Artifact, BuildDir, DatasetRef
from synthray.core.registry import SynthrayError, error_line
from synthray.core.shards import Pool, map_shards, record_shards
from synthray.prompts.backends import CAPTIONERS, Secret, prepare_image

log = logging.getLogger("synthray")
CAPTION_COLUMNS = ["id", "class_id", "label", "caption"]


def select_images(train: pd.DataFrame, per_class: int | None) -> pd.DataFrame:
    """The first `per_class` rows of each class in the split's order (all rows when None)."""
    if per_class is None:
        return train.reset_index(drop=True)
    return train.groupby("class_id", sort=False, group_keys=False).head(int(per_class)).reset_index(drop=True)


def _pool(c: dict[str, Any]) -> tuple[Pool, int]:
    """The actor pool and its largest size (which the rate limit is shared by). HTTP actors need no GPU."""
    size = max(int(c["num_actors"]), int(c.get("max_actors") or 0))
    if CAPTIONERS.get(c["backend"]).remote:
        return Pool("cpu", cpus=float(c.get("cpus_per_actor", 1)), actors=int(c["num_actors"]), max_actors=c.get("max_actors")), size
    return Pool.from_cfg(c), size


def _caption_worker(c: dict[str, Any], train_uri: str, selected: list[str], progress_uri: str, models: Any, secret: Secret,
                    pool_size: int, device: str) -> Callable[[dict], dict]:
    """Runs inside each actor: build the backend once, read the train images once (keeping the `selected` ones),
    then caption shard tasks."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from synthray.core.devices import check_device
    from synthray.core.images import read_shard, shard_files

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
            log.info("caption %s: %d of %d captions stored by an interrupted run", task["name"], len(task["ids"]) - len(todo),
                     len(task["ids"]))
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


def build_captions(spec: Any, real: Artifact, models: Any) -> Artifact:
    """The captioner stage: build (or reuse) the captions `spec` (a `CaptionsSpec`) of `real`'s train images."""
    import os

    from synthray.core.images import read_images

    art = spec.artifact(models.store)
    c = spec.section

    def make(out: BuildDir) -> dict[str, Any]:
        train_uri = DatasetRef(real, "train").uri
        chosen = select_images(read_images(train_uri, columns=["id", "class_id", "label"]), c["per_class"])
        size = int(c["shard_size"])
        tasks = [{"name": f"part-{i:05d}.parquet", "rows": len(part), "ids": part["id"].tolist(),
                  "class_ids": part["class_id"].tolist(), "labels": [int(v) for v in part["label"]]}
                 for i, part in enumerate(chosen.iloc[s:s + size] for s in range(0, len(chosen), size))]
        key_env = CAPTIONERS.get(c["backend"]).api_key_env(c)
        secret = Secret(os.environ.get(key_env) if key_env else None)
        pool, pool_size = _pool(c)
        progress = f"{out.uri}/progress"
        factory = functools.partial(_caption_worker, c, train_uri, chosen["id"].tolist(), progress, models,
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


