"""The real data's spec, read from the config: which images, split how, and a fingerprint of the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthray.core.artifacts import Artifact, Store
from synthray.graph.identity import real_fingerprint
from synthray.graph.specs import RealSpec


def real_artifact(cfg: Any) -> Artifact:
    """The real-data artifact the config names (not built)."""

    return real_spec(cfg).artifact(Store.from_cfg(cfg))


def real_data(cfg: Any) -> Artifact:
    """Build (or reuse) the real data the config names."""
    from synthray.data.real import build_real

    return build_real(real_spec(cfg), Store.from_cfg(cfg))


def real_spec(cfg: Any) -> RealSpec:
    from synthray.data.real import load_classes

    d = cfg.data
    classes = load_classes(d.classes)["id"].tolist()
    root = str(Path(d.root).expanduser().resolve()) if d.root else None
    return RealSpec(source=str(d.source), classes=tuple(classes), image_size=None if d.image_size is None else int(d.image_size),
                    test_fraction=float(d.test_fraction), control_fraction=float(d.control_fraction),
                    max_per_class=d.max_per_class, seed=int(cfg.seed), on_corrupt=str(d.on_corrupt),
                    image_column=str(d.image_column), label_column=str(d.label_column),
                    files=real_fingerprint(str(d.source), root, classes), root=root)


def check_source(cfg: Any) -> None:
    """Validate the real-data source without reading images: one line naming what is missing."""
    from synthray.core.registry import SynthrayError
    from synthray.data.real import SOURCES

    d = cfg.data
    if d.source not in SOURCES:
        raise SynthrayError(f"unknown data.source '{d.source}'; choices: {', '.join(SOURCES)}")
    if d.on_corrupt not in ("fail", "skip"):
        raise SynthrayError(f"data.on_corrupt={d.on_corrupt} is not one of fail, skip")
    real_spec(cfg).check()
