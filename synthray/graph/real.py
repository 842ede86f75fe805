"""The real data's spec, read from the config: which images, split how, and a fingerprint of the files."""

from __future__ import annotations

from collections.abc import Sequence
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
    root = _root(d.root)
    return RealSpec(source=str(d.source), classes=tuple(classes), image_size=None if d.image_size is None else int(d.image_size),
                    test_fraction=float(d.test_fraction), control_fraction=float(d.control_fraction),
                    max_per_class=d.max_per_class, seed=int(cfg.seed), on_corrupt=str(d.on_corrupt),
                    image_column=str(d.image_column), label_column=str(d.label_column),
                    files=_fingerprint(str(d.source), root, classes), root=root)


def _root(root: Any) -> str | None:
    """data.root as the stage reads it: a storage URI (a staged copy) as it is, a folder as an absolute path."""
    from synthray.core import storage

    if not root:
        return None
    return storage.normalize(str(root)) if "://" in str(root) else str(Path(str(root)).expanduser().resolve())


def _fingerprint(source: str, root: str | None, classes: list[str]) -> str | None:
    """The fingerprint of the files the real-data stage reads: a folder's (`real_fingerprint`), or, for a copy
    staged into storage, the one its folder had, from the copy's index; so both give the real data one key."""
    from synthray.data.staged import is_staged_root, staged_fingerprint

    files = real_fingerprint(source, root, classes)  # first: a trial takes the plan's, without reading storage
    if source != "digits" and is_staged_root(root) and (files is None or files.startswith("unread ")):
        return staged_fingerprint(root, classes)  # type: ignore[arg-type]
    return files


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


def stage_data_command(words: Sequence[str]) -> list[str]:
    """The CLI: `<folder or URI> [storage=<URI>] [data.classes=<list>] [key=value ...]` -> the lines to print."""
    from synthray.config import compose
    from synthray.core import storage
    from synthray.core.registry import SynthrayError
    from synthray.data.real import load_classes
    from synthray.data.staging import stage_data

    overrides = [w for w in words if _is_override(w)]
    sources = [w for w in words if not _is_override(w)]
    if len(sources) != 1:
        raise SynthrayError(f"stage-data takes one folder or URI (the tree to stage), got {len(sources)}: "
                            f"{' '.join(sources) or 'none'}")
    cfg = compose(overrides)
    classes = load_classes(cfg.data.classes)["id"].tolist() if any(w.startswith("data.classes=") for w in overrides) else None
    store = Store(storage.check_storage(cfg.storage), cfg.get("scratch"))
    art, copied = stage_data(sources[0], store, classes)
    meta = art.meta()
    counts = ", ".join(f"{n:,} {split}" for split, n in meta["counts"].items())
    what = (f"staged {meta['files']:,} images ({counts}; {meta['bytes'] / 1e6:,.1f} MB) in {meta['shards']} shards"
            if copied else "already staged (complete; nothing copied)")
    return [f"{what} at {art.uri}",
            f"read it in a sweep with: data.source=imagefolder data.root={art.uri}"]


def _is_override(word: str) -> bool:
    """`key=value` (a dotted key), not a path or URI that happens to hold '='."""
    key = word.split("=", 1)[0]
    return "=" in word and "/" not in key and ":" not in key and bool(key)
