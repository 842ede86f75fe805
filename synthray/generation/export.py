"""Export a dataset artifact to an ImageFolder tree (`<out>/<class_id>/<row>.<ext>`), the layout most loaders read.

Image bytes are copied as stored (no re-encoding); rows the quality guard flagged are left out. Files are written
to temporary names and renamed, so an interrupted export leaves only whole images.
"""

from __future__ import annotations

import re
from pathlib import Path

from synthray.core import storage
from synthray.core.images import read_images, shard_files
from synthray.core.registry import SynthrayError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def export_imagefolder(dataset: str, out: Path) -> int:
    """Write every usable image of the dataset folder `dataset` (a path or URI holding parquet shards, or a
    synthetic artifact holding `data/`) under the local folder `out`; returns the count."""
    dataset = storage.normalize(dataset)
    if shard_files(storage.join(dataset, "data")):
        dataset = storage.join(dataset, "data")
    if not shard_files(dataset):
        raise SynthrayError(f"no parquet shards in {dataset}; give a synthetic dataset folder (<storage>/synthetic/<key>)")
    table = read_images(dataset, columns=["id", "image", "class_id"])
    for rid, data, cid in zip(table["id"], table["image"], table["class_id"]):
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        folder = out / _UNSAFE.sub("_", str(cid))
        folder.mkdir(parents=True, exist_ok=True)
        storage.write_bytes(str(folder / (_UNSAFE.sub("_", str(rid)) + ext)), data)
    return len(table)
