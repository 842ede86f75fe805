"""The label stage: pseudo-labels for every image of one dataset split whose class is labelled.

The artifact mirrors its source's shards, one labels shard per image shard (same name), so a reader joins them
shard by shard on `id`. Each row: the image's `id`, `label`, and the segmenter's columns (`labels.segmenter`):
`boxes` (N, 4) xyxy pixels, `scores` (N,), `masks` (N 1-bit PNGs), `n`, `height`, `width`. Rows of classes that
are not labelled are left out, and a shard with none of them is still written (empty, typed), so every source shard
has its labels shard and an interrupted stage resumes where it stopped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from synthray.core.artifacts import Artifact, BuildDir, DatasetRef, Store
from synthray.core.images import read_shard, shard_files, shard_rows
from synthray.core.models import Models
from synthray.core.shards import Pool, map_shards, placements, record_shards

SPLIT = "data"  # the labels artifact's one folder, whatever the source split was called


def _label_worker(spec: dict[str, Any], model: str, models: Models) -> Callable[[dict], Any]:
    """In the actor: the segmenter loaded once, then one labels table per source shard."""
    import pyarrow as pa

    from synthray.labels.segmenter import LABEL_TYPES, PromptSegmenter

    segmenter = PromptSegmenter({**spec, "model": models.locate(model, "segmenter")})
    labelled = [int(k) for k in spec["prompts"]]
    schema = pa.schema([("id", pa.string()), ("label", pa.int64()), *LABEL_TYPES.items()])

    def work(task: dict[str, Any]) -> pa.Table:
        shard = read_shard(task["src"], columns=["id", "image", "label"]).to_pandas()
        rows = shard[shard["label"].isin(labelled)]
        if rows.empty:
            return schema.empty_table()
        out = segmenter(rows)
        out["id"], out["label"] = out["id"].astype(str), out["label"].astype("int64")
        # Without pandas' metadata: its ArrowDtype names (fixed-size lists) would not read back into pandas.
        return pa.Table.from_pandas(out[schema.names], schema=schema, preserve_index=False).replace_schema_metadata(None)

    return work


def build_labels(spec: Any, source: DatasetRef, store: Store, models: Models) -> Artifact:
    """The built labels artifact of `spec` (`graph.labels.LabelSpec`) over the built split `source`."""
    from synthray.graph.labels import segmenter_spec

    art = spec.artifact(store)
    pool = Pool.from_cfg(spec.pool, spec.resources().label_selector)

    def make(out: BuildDir) -> dict[str, Any]:
        factory = functools.partial(_label_worker, segmenter_spec(spec, model=""), str(spec.pool["model"]), models)
        tasks = [{"name": f.rsplit("/", 1)[1], "src": f, "rows": shard_rows(f)} for f in shard_files(source.uri)]
        done = map_shards(tasks, factory, out.uri + "/" + SPLIT, what=f"labels {source.ref}", pool=pool)
        record_shards(out, SPLIT, done)
        return {"source": source.ref, "classes": len(spec.settings["prompts"]), "placement": placements(done)}

    return art.build(make)
