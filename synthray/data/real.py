"""Real data: the class list and a content-addressed copy of the real images in three splits.

Splits: `train` (Real->Real and Real->Synth training), `holdout` (drawn by the real-holdout control
generator, never trained on by the real model) and `test` (every evaluation on real images).
Sources: scikit-learn's bundled handwritten digits (offline, the embedded default) or an ImageFolder tree laid
out like ImageNet (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from synthray.artifacts import Artifact, seed_hash
from synthray.images import encode, square
from synthray.registry import SynthrayError

CLASS_DIR = Path(__file__).resolve().parent / "classes"
SPLITS = ("train", "holdout", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def shipped_class_lists() -> list[str]:
    return sorted(p.stem for p in CLASS_DIR.glob("*.csv"))


def load_classes(spec: str) -> pd.DataFrame:
    """A class list by shipped name or CSV path -> DataFrame with columns id, name (row order = label)."""
    path = CLASS_DIR / f"{spec}.csv" if spec in shipped_class_lists() else Path(spec).expanduser()
    if not path.is_file():
        raise SynthrayError(f"class list '{spec}' is neither a shipped list ({', '.join(shipped_class_lists())}) nor a CSV file")
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


def real_spec(cfg: Any) -> dict[str, Any]:
    d = cfg.data
    classes = load_classes(d.classes)
    root = str(Path(d.root).expanduser().resolve()) if d.root else None
    return {
        "source": d.source, "root": root, "classes": classes["id"].tolist(), "image_size": int(d.image_size),
        "test_fraction": float(d.test_fraction), "holdout_fraction": float(d.holdout_fraction),
        "max_per_class": d.max_per_class, "seed": int(cfg.seed),
    }


def real_artifact(cfg: Any) -> Artifact:
    spec = real_spec(cfg)
    return Artifact(cfg.storage, "real", spec, label=f"{spec['source']} {len(spec['classes'])} classes")


def check_source(cfg: Any) -> None:
    """Validate the real-data source without reading images: one line naming what is missing."""
    d = cfg.data
    if d.source == "digits":
        return
    if d.source != "imagefolder":
        raise SynthrayError(f"unknown data.source '{d.source}'; choices: digits, imagefolder")
    if not d.root:
        raise SynthrayError("data.source=imagefolder needs data.root=<folder with train/ and val/>")
    root = Path(d.root).expanduser()
    if not root.is_dir():
        raise SynthrayError(f"real data folder not found: data.root={root}")
    test_dir = _test_dir(root)
    ids = load_classes(d.classes)["id"].tolist()
    for split_dir in (root / "train", test_dir):
        missing = [c for c in ids if not (split_dir / c).is_dir()]
        if missing:
            raise SynthrayError(f"{split_dir}: {len(missing)} of {len(ids)} class folders missing, e.g. {', '.join(missing[:3])}")


def _test_dir(root: Path) -> Path:
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


def build(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Write `<workdir>/<split>/part-00000.parquet` for each split; returns per-split counts."""
    from synthray.images import write_table

    rows = _digits(spec) if spec["source"] == "digits" else _imagefolder(spec)
    counts = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        columns = {k: [r[k] for r in part] for k in ("id", "image", "label", "class_id")}
        counts[split] = write_table(workdir / split / "part-00000.parquet", columns)
    return {"counts": counts}


def _digits(spec: dict[str, Any]) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    digits = load_digits()  # ships with scikit-learn: 1,797 real 8x8 images, 17 gray levels
    ids = spec["classes"]
    size = spec["image_size"]
    out = []
    for label, cid in enumerate(ids):
        idx = np.flatnonzero(digits.target == int(cid))
        test_f = spec["test_fraction"]
        hold_f = (1 - test_f) * spec["holdout_fraction"]
        parts = _split_indices(len(idx), [test_f, hold_f, 1 - test_f - hold_f], seed_hash(spec["seed"], "digits", cid))
        for split, part in zip(("test", "holdout", "train"), parts):
            for i in sorted(idx[part]):
                pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
                img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                out.append({"id": f"digits/{i}", "image": encode(img, "png"), "label": label, "class_id": str(cid), "split": split})
    return out


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _imagefolder(spec: dict[str, Any]) -> list[dict[str, Any]]:
    root = Path(spec["root"])
    test_dir = _test_dir(root)
    size, cap = spec["image_size"], spec["max_per_class"]
    out = []
    for label, cid in enumerate(spec["classes"]):
        train_files = _list_images(root / "train" / cid)
        test_files = _list_images(test_dir / cid)
        hold, train = _split_indices(len(train_files), [spec["holdout_fraction"], 1 - spec["holdout_fraction"]], seed_hash(spec["seed"], "folder", cid))
        chosen = {"holdout": [train_files[i] for i in sorted(hold)], "train": [train_files[i] for i in sorted(train)], "test": test_files}
        for split, files in chosen.items():
            for path in files[:cap] if cap else files:
                try:
                    img = square(Image.open(path).convert("RGB"), size)
                except OSError as err:
                    raise SynthrayError(f"cannot read real image {path}: {err}") from None
                out.append({"id": str(path.relative_to(root)), "image": encode(img, "jpeg", 95), "label": label, "class_id": cid, "split": split})
    return out
