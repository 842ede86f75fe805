"""Real data: the class list and a content-addressed copy of the real images in three splits.

Splits: `train` (Real->Real and Real->Synth training), `control` (drawn by the control generators real-holdout and
collapsed, never trained on by the real model) and `test` (every evaluation on real images).
Sources: scikit-learn's bundled handwritten digits (offline, the embedded default), an ImageFolder tree laid
out like ImageNet (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`), or parquet files such as a Hugging Face
`datasets` export (`train*.parquet`, `test*.parquet`/`validation*.parquet`, or `train/` and `test/` folders of them).
An ImageFolder tree staged into storage by `synthray stage-data` is read with `data.source=imagefolder` and
`data.root=<its URI>` (`data/staged.py`): the same rows as from the folder, and the same key.
An unreadable image is named with its path; `data.on_corrupt=skip` drops it (and lists it in meta.json) instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from synthray.core.artifacts import Artifact, BuildDir, Store, seed_hash
from synthray.core.images import encode, square
from synthray.core.registry import SynthrayError

log = logging.getLogger("synthray")
SOURCES = ("digits", "imagefolder", "parquet")
CLASS_DIR = Path(__file__).resolve().parent / "classes"
SPLITS = ("train", "control", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


RENAMED_LISTS = {"tiny-imagenet-200-study": "tiny-imagenet-200-paper"}  # earlier names, still read


def shipped_class_lists() -> list[str]:
    return sorted(p.stem for p in CLASS_DIR.glob("*.csv"))


def load_classes(spec: str) -> pd.DataFrame:
    """A class list by shipped name or CSV path -> DataFrame with columns id, name (row order = label)."""
    spec = RENAMED_LISTS.get(spec, spec)
    path = CLASS_DIR / f"{spec}.csv" if spec in shipped_class_lists() else Path(spec).expanduser()
    if not path.is_file():
        raise SynthrayError(f"class list '{spec}' is neither a shipped list ({', '.join(shipped_class_lists())}) nor a CSV file")
    stat = path.stat()
    return _read_classes(str(path.resolve()), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=16)
def _read_classes(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """The checked class list at `path`, read once per version of the file (a plan reads it for every trial)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"id", "name"} <= set(table.columns):
        raise SynthrayError(f"class list {path} needs columns id,name; found {','.join(table.columns)}")
    bad = [f"row {i + 2}" for i, r in table.iterrows() if not r["id"].strip() or not r["name"].strip()]
    if bad:
        raise SynthrayError(f"class list {path}: empty id or name in {', '.join(bad[:5])}")
    dup = table[table["id"].duplicated(keep=False)]
    if len(dup):
        raise SynthrayError(f"class list {path}: duplicate ids {sorted(set(dup['id']))[:5]} in rows {[i + 2 for i in dup.index[:5]]}")
    return table[["id", "name"]].reset_index(drop=True)


def build_real(spec: Any, store: Store) -> Artifact:
    """The real-data stage: build (or reuse) the content-addressed copy of `spec`'s images in three splits."""
    art = spec.artifact(store)
    return art.build(lambda out: build(spec.build_spec(), out))


PARQUET_SPLITS = {"train": ("train",), "test": ("test", "val", "validation")}


def parquet_files(root: Path, split: str) -> list[Path]:
    """`<root>/<split>/**.parquet`, else `<root>/**/<split>*.parquet` (HF hub layout: data/train-00000-of-00004.parquet)."""
    for name in PARQUET_SPLITS[split]:
        files = sorted((root / name).rglob("*.parquet")) if (root / name).is_dir() else \
            sorted(p for p in root.rglob(f"{name}*.parquet") if p.name[len(name):][:1] in ("", "-", "_", "."))
        if files:
            return files
    raise SynthrayError(f"{root}: no {split} parquet files (looked for {split}/ or {'|'.join(PARQUET_SPLITS[split])}*.parquet)")


def test_dir(root: Path) -> Path:
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    if not (root / "train").is_dir():
        raise SynthrayError(f"{root} needs a train/ folder of class folders (ImageNet layout)")
    raise SynthrayError(f"{root} needs a val/ or test/ folder of class folders beside train/")


def _split_indices(n: int, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Deterministically cut a permutation of range(n) into consecutive parts of the given fractions."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([round(f * n) for f in fractions[:-1]])
    return np.split(order, cuts)


SHARD_ROWS = 2000  # rows per real-data shard: native ImageNet JPEGs are ~110 kB, so a shard is ~200 MB, not a split


def build(spec: dict[str, Any], out: BuildDir) -> dict[str, Any]:
    """Write `<split>/part-NNNNN.parquet` shards of `SHARD_ROWS` rows for each split into the artifact, as the rows
    stream in (memory holds one shard per split, not the dataset); returns per-split counts (and skipped images)."""
    from synthray.core.images import write_table

    skipped: list[str] = []
    pending: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    parts, counts = {split: 0 for split in SPLITS}, {split: 0 for split in SPLITS}

    def flush(split: str) -> None:
        rel = f"{split}/part-{parts[split]:05d}.parquet"
        columns = {k: [r[k] for r in pending[split]] for k in ("id", "image", "label", "class_id")}
        out.record(rel, write_table(f"{out.uri}/{rel}", columns))
        parts[split] += 1
        counts[split] += len(pending[split])
        pending[split].clear()

    for row in {"digits": _digits, "imagefolder": _imagefolder, "parquet": _parquet}[spec["source"]](spec, skipped):
        pending[row["split"]].append(row)
        if len(pending[row["split"]]) == SHARD_ROWS:
            flush(row["split"])
    for split in SPLITS:
        if pending[split] or not parts[split]:  # an empty split still has its (empty) shard
            flush(split)
    if skipped:
        log.warning("skipped %d unreadable real images (data.on_corrupt=skip), e.g. %s", len(skipped), skipped[0])
    return {"counts": counts, "skipped": skipped}


def _digits(spec: dict[str, Any], skipped: list[str]) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    digits = load_digits()  # ships with scikit-learn: 1,797 real 8x8 images, 17 gray levels
    ids = spec["classes"]
    size = spec["image_size"]
    out = []
    for label, cid in enumerate(ids):
        idx = np.flatnonzero(digits.target == int(cid))
        test_f = spec["test_fraction"]
        hold_f = (1 - test_f) * spec["control_fraction"]
        parts = _split_indices(len(idx), [test_f, hold_f, 1 - test_f - hold_f], seed_hash(spec["seed"], "digits", cid))
        for split, part in zip(("test", "control", "train"), parts):
            for i in sorted(idx[part]):
                pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
                img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                out.append({"id": f"digits/{i}", "image": encode(img, "png"), "label": label, "class_id": str(cid), "split": split})
    return out


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _real_image(source: Any, where: str, spec: dict[str, Any], skipped: list[str]) -> bytes | None:
    """A path (or a staged file) or encoded bytes -> square JPEG bytes at the real image size, or (image_size None) the source's own
    bytes once they decode; None when unreadable and skipping."""
    import io

    try:
        # A Path or a staged file (`data.staged.StagedImage`) is read here, one at a time; bytes are as they are.
        data = source.read_bytes() if hasattr(source, "read_bytes") else bytes(source)
        img = Image.open(io.BytesIO(data))
        if spec["image_size"] is None:
            img.load()  # the whole file decodes: a truncated JPEG fails here, not in training
            return data
        return encode(square(img.convert("RGB"), spec["image_size"]), "jpeg", 95)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        if spec["on_corrupt"] == "skip":
            skipped.append(f"{where}: {err}")
            return None
        raise SynthrayError(f"cannot read real image {where}: {err} (set data.on_corrupt=skip to leave such images out)") from None


def _assign(spec: dict[str, Any], items: dict[str, dict[str, list]], skipped: list[str]) -> Iterator[dict[str, Any]]:
    """items[split][class id] = [(row id, path or bytes)] with split train or test -> rows with train cut into
    holdout and train, each capped at max_per_class, images squared and re-encoded (or kept as they are)."""
    cap = spec["max_per_class"]
    for label, cid in enumerate(spec["classes"]):
        train = items["train"].get(cid, [])
        hold, keep = _split_indices(len(train), [spec["control_fraction"], 1 - spec["control_fraction"]],
                                    seed_hash(spec["seed"], "real", cid))
        chosen = {"control": [train[i] for i in sorted(hold)], "train": [train[i] for i in sorted(keep)],
                  "test": items["test"].get(cid, [])}
        for split, entries in chosen.items():
            for row_id, source in entries[:cap] if cap else entries:
                data = _real_image(source, row_id, spec, skipped)
                if data is not None:
                    yield {"id": row_id, "image": data, "label": label, "class_id": cid, "split": split}


def _imagefolder(spec: dict[str, Any], skipped: list[str]) -> Iterator[dict[str, Any]]:
    from synthray.data.staged import is_staged_root, staged_items

    if is_staged_root(spec["root"]):  # a copy in storage: its index lists the same files under the same ids
        return _assign(spec, staged_items(spec["root"], spec["classes"]), skipped)
    root = Path(spec["root"])
    dirs = {"train": root / "train", "test": test_dir(root)}
    items = {split: {cid: [(str(p.relative_to(root)), p) for p in list_images(d / cid)] for cid in spec["classes"]}
             for split, d in dirs.items()}
    return _assign(spec, items, skipped)


def _class_names(schema: Any, column: str) -> list[str] | None:
    """A Hugging Face ClassLabel's names for `column`, from the parquet schema metadata `datasets` writes."""
    import json

    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    feature = json.loads(meta).get("info", {}).get("features", {}).get(column, {})
    return feature.get("names")


def _parquet(spec: dict[str, Any], skipped: list[str]) -> Iterator[dict[str, Any]]:
    """Rows of the listed classes from parquet files: labels are class ids, or ints named by the HF ClassLabel
    metadata (or, without it, the int itself as the id); images are bytes or HF's {bytes, path} structs."""
    import pyarrow.parquet as pq

    root, image_col, label_col = Path(spec["root"]), spec["image_column"], spec["label_column"]
    wanted = set(spec["classes"])
    items: dict[str, dict[str, list]] = {}
    for split in ("train", "test"):
        items[split] = {}
        for path in parquet_files(root, split):
            pf = pq.ParquetFile(path)
            missing = [c for c in (image_col, label_col) if c not in pf.schema_arrow.names]
            if missing:
                raise SynthrayError(f"{path} has no column {missing[0]} (columns: {', '.join(pf.schema_arrow.names)}); "
                                    "set data.image_column / data.label_column")
            names = _class_names(pf.schema_arrow, label_col)
            table = pf.read(columns=[image_col, label_col]).to_pydict()
            for i, (image, label) in enumerate(zip(table[image_col], table[label_col])):
                cid = names[label] if names and isinstance(label, int) else str(label)
                if cid in wanted:
                    data = image.get("bytes") if isinstance(image, dict) else image
                    items[split].setdefault(cid, []).append((f"{path.relative_to(root)}#{i}", data or b""))
    return _assign(spec, items, skipped)
