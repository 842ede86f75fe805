"""Export a dataset artifact to an ImageFolder tree (`<out>/<class_id>/<row>.<ext>`), the layout most loaders read.

Image bytes are copied as stored (no re-encoding); rows the quality guard flagged are left out. `out` is a local
folder or a storage URI. Each file is one whole write (locally a temporary name renamed into place), so an
interrupted export leaves only whole images. Every file stays under `out`, whatever the class and row ids hold:
a name is reduced to `[A-Za-z0-9._-]` and never a dot-only name (`..`); a name that had to change gets a short
hash of the original, so two ids never share a folder.
"""

from __future__ import annotations

import hashlib
import re

from synthray.core import storage
from synthray.core.images import read_images, shard_files
from synthray.core.registry import SynthrayError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: object) -> str:
    """One path component for `value`: itself when already safe, else its safe characters plus a hash of it."""
    text = str(value)
    cleaned = _UNSAFE.sub("_", text).strip(".")
    if cleaned == text and cleaned:
        return text
    return f"{cleaned or 'id'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def export_imagefolder(dataset: str, out: str) -> int:
    """Write every usable image of the dataset folder `dataset` (a path or URI holding parquet shards, or a
    synthetic artifact holding `data/`) under `out` (a local folder or a storage URI); returns the count."""
    # An unknown scheme, `s3:/bucket` or a missing bucket is one line here, before anything is read or written.
    dataset, out = storage.check_storage(dataset), storage.check_storage(out)
    if shard_files(storage.join(dataset, "data")):
        dataset = storage.join(dataset, "data")
    if not shard_files(dataset):
        raise SynthrayError(f"no parquet shards in {dataset}; give a synthetic dataset folder (<storage>/synthetic/<key>)")
    table = read_images(dataset, columns=["id", "image", "class_id"])
    for rid, data, cid in zip(table["id"], table["image"], table["class_id"]):
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        storage.write_bytes(storage.join(out, safe_name(cid), safe_name(rid) + ext), data)
    return len(table)
