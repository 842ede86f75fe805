"""Image encoding and the on-disk table format shared by every stage.

Every image dataset is a folder of parquet shards with at least the columns of `IMAGE_SCHEMA`
(encoded image bytes plus label); stages add metadata columns. Plain pyarrow, pandas and HF `datasets`
read them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synthray.core import storage

IMAGE_COLUMNS = ("id", "image", "label", "class_id")


DEFAULT_SUBSAMPLING = "4:4:4"
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")  # 4:2:0 is what Pillow does when not told (the study's images)


def old_subsampling(quality: int) -> str:
    """What `encode` chose before `generation.jpeg_subsampling` existed (keys of datasets encoded then omit it)."""
    return "4:4:4" if quality >= 90 else "4:2:0"


def jpeg_subsampling(generation: Any) -> str:
    """`generation.jpeg_subsampling`, checked: a one-line error names the choices."""
    from synthray.core.registry import unknown_name

    value = str(generation.get("jpeg_subsampling") or DEFAULT_SUBSAMPLING)
    if value not in SUBSAMPLINGS:
        raise unknown_name("generation.jpeg_subsampling", value, SUBSAMPLINGS)
    return value


def encode(img: Image.Image, fmt: str = "png", quality: int = 95, subsampling: str | None = None) -> bytes:
    """Encode deterministically (no timestamps or optimiser passes that could vary). JPEG chroma: `subsampling`
    ("4:4:4", "4:2:0", ...), or by default full chroma at quality >= 90."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        chroma = subsampling if subsampling is not None else (0 if quality >= 90 else 2)
        img.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=chroma)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r}; choices: jpeg, png")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# How a test image becomes a square: `torchvision` is the study's Resize(size, BICUBIC) + CenterCrop(size) on the
# float image; `round` is what synthray did before (long side rounded, crop offset floored, resized in uint8), which
# models keyed without the setting were selected and evaluated with.
GEOMETRIES = ("torchvision", "round")


def decode_array(data: bytes, size: int | None = None, geometry: str = "round") -> np.ndarray:
    """Bytes -> uint8 array (H, W, 3); with `size`, a (size, size) square: the short side resized (bicubic) and the
    centre cropped, so a non-square image (native ImageNet files) is cut, never squashed. `geometry`: `GEOMETRIES`."""
    img = decode(data)
    if size is None:
        return np.asarray(img, dtype=np.uint8)
    if geometry == "torchvision":
        return resize_center_crop(np.asarray(img, dtype=np.uint8), size)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC) if img.width == img.height else square(img, size)
    return np.asarray(img, dtype=np.uint8)


def resize_center_crop(pixels: Any, size: int) -> Any:
    """torchvision's `Resize(size, BICUBIC)` then `CenterCrop(size)`, as the study's test transform runs them: on
    the image as floats in [0, 1] (ToTensor first), antialiased, the long side cut with int(), the crop offset
    int(round(margin / 2)). uint8 (H, W, 3) numpy -> uint8 (size, size, 3) numpy; a uint8 torch tensor (N, 3, H, W),
    on any device -> uint8 (N, 3, size, size) there. The float result is rounded to the nearest level; bicubic
    ringing beyond [0, 1], which the study passes on unclamped, is clamped (a uint8 image cannot hold it)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    is_array = isinstance(pixels, np.ndarray)
    x = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).permute(2, 0, 1) if is_array else pixels
    y = TF.center_crop(TF.resize(x.float() / 255, [size], InterpolationMode.BICUBIC, antialias=True), [size])
    y = y.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return y.permute(1, 2, 0).numpy() if is_array else y


def square(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bicubic) and center-crop a square, the ImageNet test transform."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def write_table(uri: str, columns: dict[str, Iterable] | pa.Table) -> dict:
    """Write one parquet shard as one whole file; returns its manifest entry with `rows` added. A table keeps its
    own column types (an empty list column stays typed)."""
    table = columns if isinstance(columns, pa.Table) else pa.table({k: list(v) for k, v in columns.items()})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return dict(storage.write_bytes(uri, buf.getvalue().to_pybytes()), rows=table.num_rows)


def shard_files(folder: str) -> list[str]:
    """The URIs of a dataset folder's parquet shards, in name order: those its artifact's manifest lists when the
    artifact is committed (so a shard lost from storage is an error on read, never silently fewer rows), else
    those in storage."""
    from synthray.core.artifacts import committed_files

    holder = committed_files(folder)
    names = sorted(holder[1]) if holder else [rel for rel in storage.list_files(folder) if "/" not in rel]
    return [storage.join(folder, name) for name in names if name.endswith(".parquet")]


def read_shard(uri: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    """One shard, its bytes checked against the artifact's manifest (`CorruptArtifact` if they differ)."""
    from synthray.core.artifacts import read_checked

    return pq.read_table(pa.BufferReader(read_checked(uri)), columns=columns, filters=filters)


def shard_rows(uri: str) -> int:
    """A shard's row count, from its parquet footer alone."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_metadata(f).num_rows


def shard_schema(uri: str) -> pa.Schema:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_schema(f)


def usable_filter(folder: str):
    """A pyarrow filter keeping rows that passed the generation quality guard, or None if the folder has no guard."""
    import pyarrow.dataset as pads

    files = shard_files(folder)
    if files and "quality" in shard_schema(files[0]).names:
        return pads.field("quality") == "ok"
    return None


def read_images(folder: str, columns: list[str] | None = None, usable_only: bool = True) -> pd.DataFrame:
    """All shards of a dataset folder, in shard order (deterministic); rows the quality guard flagged are dropped."""
    files = shard_files(folder)
    if not files:
        raise FileNotFoundError(f"no parquet shards in {folder}")
    keep = usable_filter(folder) if usable_only else None
    return pd.concat([read_shard(f, columns, keep).to_pandas() for f in files], ignore_index=True)


def to_uint8(image: np.ndarray | Image.Image) -> tuple[np.ndarray, str]:
    """A generator's output as uint8 (H, W, 3) plus its quality: ok, nan (fp16 overflow) or black (a safety filter).

    Floats in [0, 1] are rounded exactly as diffusers' `numpy_to_pil` does, so bytes match its PIL output.
    """
    quality = "ok"
    if isinstance(image, Image.Image):
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    else:
        if np.isnan(image).any():
            quality = "nan"
            image = np.nan_to_num(image, nan=0.0)
        pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    if quality == "ok" and pixels.max() == 0:
        quality = "black"
    return pixels, quality


def dataset_digest(folder: str) -> str:
    """sha256 over (id, image bytes) of every row, sorted by id: equal digests mean byte-identical images."""
    import hashlib

    table = read_images(folder, columns=["id", "image"], usable_only=False).sort_values("id", kind="stable")
    h = hashlib.sha256()
    for rid, img in zip(table["id"], table["image"]):
        h.update(rid.encode() + b"\0" + len(img).to_bytes(8, "little") + img)
    return h.hexdigest()
