"""Stored image bytes -> uint8 arrays for training, and the deterministic selection split of a training set."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from synthray.core.artifacts import seed_hash
from synthray.core.images import decode_array

if TYPE_CHECKING:
    import pyarrow as pa

_BUCKETS = 1_000_000
UID, ORDER = "uid", "order"  # recipe.shuffle: epoch: a row's stable number, and its place in one epoch's permutation
_MASK64 = (1 << 64) - 1


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


def decode_images(batch: dict[str, np.ndarray], size: int | None, part: str | None = None, selection_fraction: float = 0.0,
                  seed: int = 0, geometry: str = "round", with_uid: bool = False) -> dict[str, np.ndarray]:
    """Ray Data batch UDF: encoded bytes -> uint8 (N, size, size, 3) arrays (`size` None: N (H_i, W_i, 3) arrays at
    their native sizes) plus int64 labels, of the rows `kept_rows` keeps. `geometry`: how a non-square image
    becomes a square (`images.GEOMETRIES`). `with_uid`: also each row's `row_uids` (int64 (N,)), which
    `epoch_rows` orders by."""
    keep = kept_rows(batch, part, selection_fraction, seed)
    images = [decode_array(b, size, geometry) for b, k in zip(batch["image"], keep) if k]
    if size is None:  # native sizes: an object array of (H_i, W_i, 3) arrays, Ray Data's variable-shaped tensors
        stacked = np.empty(len(images), dtype=object)
        stacked[:] = images
    else:
        stacked = np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)
    return _with_uid({"image": stacked, "label": batch["label"][keep].astype(np.int64)}, batch, keep, with_uid)


def encoded_images(batch: dict[str, np.ndarray], part: str | None = None, selection_fraction: float = 0.0,
                   seed: int = 0, with_uid: bool = False) -> dict[str, np.ndarray]:
    """Ray Data batch UDF for `training.jpeg_decode: gpu`: the rows `decode_images` keeps, in the same order,
    still encoded (bytes) plus int64 labels; the training worker decodes them (`device_decode`)."""
    keep = kept_rows(batch, part, selection_fraction, seed)
    return _with_uid({"image": batch["image"][keep], "label": batch["label"][keep].astype(np.int64)}, batch, keep, with_uid)


def _with_uid(out: dict[str, np.ndarray], batch: dict[str, np.ndarray], keep: np.ndarray, with_uid: bool) -> dict[str, np.ndarray]:
    if with_uid:
        out[UID] = row_uids(batch["id"][keep])
    return out


def row_uids(ids: Iterable[str]) -> np.ndarray:
    """A stable 63-bit number per row id (int64 (N,)): where the row lands in each epoch's permutation derives from
    it, so the order ignores sharding, blocks and batch size."""
    return np.array([seed_hash(0, "row", str(i)) & (_MASK64 >> 1) for i in ids], dtype=np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a bijection that scatters nearby inputs."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def epoch_keys(batch: dict[str, np.ndarray], seed: int, epoch: int) -> dict[str, np.ndarray]:
    """Ray Data batch UDF: each row's place in epoch `epoch`'s permutation (uint64 (N,)), a function of (seed, epoch,
    the row's id) alone. Sorting by it draws a new uniform-looking permutation every epoch, as the study's
    `DataLoader(shuffle=True)` does, and the same one on every rerun of that epoch (an exact resume)."""
    salt = _mix(np.array([(seed * 1_000_003 + epoch) & _MASK64], dtype=np.uint64))
    batch[ORDER] = _mix(batch[UID].astype(np.uint64) ^ salt)
    return batch


def epoch_keys_arrow(table: pa.Table, seed: int, epoch: int) -> pa.Table:
    """`epoch_keys` on a pyarrow batch: rows whose columns numpy cannot hold as arrays (the dense tasks' nested
    box lists) pass through untouched."""
    import pyarrow as pa

    order = epoch_keys({UID: table.column(UID).to_numpy()}, seed, epoch)[ORDER]
    return table.append_column(ORDER, pa.array(order, type=pa.uint64()))


def epoch_rows(dataset: Any, seed: int, epoch: int, world: int = 1, rank: int = 0) -> Any:
    """The rows of `dataset` (which carries `UID`; see `decode_images(with_uid=True)`) for one epoch, in that epoch's
    permutation: a Ray Data `DataIterator` over this worker's part (`rank` of `world`, equal parts). The order does
    not depend on the batch size, the blocks or the worker count: the permutation is global, then split."""
    ordered = dataset.map_batches(epoch_keys_arrow, fn_kwargs={"seed": seed, "epoch": epoch}, batch_format="pyarrow")
    ordered = ordered.sort(ORDER).drop_columns([UID, ORDER])
    if world == 1:
        return ordered.iterator()
    # Each worker sorts the whole set and keeps its part: world times the sort, but no coordination between workers.
    return ordered.split(world, equal=True)[rank].iterator()
