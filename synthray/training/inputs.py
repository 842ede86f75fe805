"""Stored image bytes -> uint8 arrays for training, and the deterministic selection split of a training set."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from synthray.core.artifacts import seed_hash
from synthray.core.images import decode_array

if TYPE_CHECKING:
    import pyarrow as pa

_BUCKETS = 1_000_000


def in_selection(ids: Iterable[str], fraction: float, seed: int) -> np.ndarray:
    """Whether each row belongs to the selection split: a hash of its id, so the split ignores row order and sharding."""
    cut = round(fraction * _BUCKETS)
    # The salt "holdout" is the split's old name, kept: a new salt would move every row and every result.
    return np.array([seed_hash(seed, "holdout", str(i)) % _BUCKETS < cut for i in ids], dtype=bool)


def read_shards(batch: pa.Table, columns: list[str]) -> pa.Table:
    """Ray Data batch UDF: a batch of shard URIs (column `uri`) -> their rows, each shard checked against its manifest."""
    import pyarrow as pa

    from synthray.core.images import read_shard

    return pa.concat_tables([read_shard(uri, columns) for uri in batch.column("uri").to_pylist()])


def kept_rows(batch: dict[str, np.ndarray], part: str | None, selection_fraction: float, seed: int) -> np.ndarray:
    """Which rows of a batch train (or select): `part` ("train" or "selection") keeps only that side of the
    selection split, None keeps every row; rows the generation quality guard flagged (NaN or black) are dropped."""
    keep = batch["quality"] == "ok" if "quality" in batch else np.ones(len(batch["label"]), dtype=bool)
    if part is not None:
        held = in_selection(batch["id"], selection_fraction, seed)
        keep &= held if part == "selection" else ~held
    return keep


def decode_images(batch: dict[str, np.ndarray], size: int, part: str | None = None, selection_fraction: float = 0.0,
                  seed: int = 0, geometry: str = "round") -> dict[str, np.ndarray]:
    """Ray Data batch UDF: encoded bytes -> uint8 (N, size, size, 3) arrays plus int64 labels, of the rows
    `kept_rows` keeps. `geometry`: how a non-square image becomes a square (`images.GEOMETRIES`)."""
    keep = kept_rows(batch, part, selection_fraction, seed)
    images = [decode_array(b, size, geometry) for b, k in zip(batch["image"], keep) if k]
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)
    return {"image": stacked, "label": batch["label"][keep].astype(np.int64)}


def encoded_images(batch: dict[str, np.ndarray], part: str | None = None, selection_fraction: float = 0.0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Ray Data batch UDF for `training.jpeg_decode: gpu`: the rows `decode_images` keeps, in the same order,
    still encoded (bytes) plus int64 labels; the training worker decodes them (`device_decode`)."""
    keep = kept_rows(batch, part, selection_fraction, seed)
    return {"image": batch["image"][keep], "label": batch["label"][keep].astype(np.int64)}
