"""What a key records of the config's sections: the pieces of identity the planner puts into specs.

Settings added after artifacts were first keyed are left out at their legacy values (`without_legacy`): a setting
left as it was computes what was computed before it existed, so the keys of artifacts built then stay valid.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from synthray.core.artifacts import without_legacy

# Recipe settings added later, at the values that compute what recipes computed before they existed.
# "shuffle: once" is the order every model had before the setting existed (recipe=paper now draws one per epoch).
LEGACY_RECIPE = {"selection": {"metric": "accuracy", "set": "train"}, "lr_schedule": "synthray", "shuffle": "once"}
LEGACY_NUMERICS = {"sync_bn": False, "jpeg_decode": "cpu"}


def numerics(cfg: Any) -> dict[str, Any]:
    return numerics_of(cfg.training)


def numerics_of(t: Any) -> dict[str, Any]:
    """Execution settings of the `training` section that change a model's bits (so they are part of its key), with
    `auto` resolved from `training.device`: configuration, never the GPUs the cluster happens to have."""
    from synthray.training.recipe import jpeg_decode

    gpu = t.device == "gpu"
    return {"precision": ("bf16" if gpu else "fp32") if t.precision == "auto" else str(t.precision),
            # auto: NHWC on both devices; measured faster on CPU too (oneDNN: tiny-cnn 1.1-1.2x in the loop, BagNet-9
            # 1.2-2x per step at 32 px, bench/RESULTS.md), so it changed the keys of CPU-trained models once.
            # "auto", an earlier setting, meant NHWC on both devices: true.
            "channels_last": True if t.channels_last == "auto" else bool(t.channels_last),
            "compile": bool(t.compile), "device": str(t.device),
            # Only more than one worker makes SyncBatchNorm differ from BatchNorm.
            "sync_bn": bool(t.sync_bn) and int(t.num_workers) > 1,
            # nvjpeg's pixels (and the resize on the device) may differ from Pillow's by a level.
            "jpeg_decode": jpeg_decode(t)}


def training_spec(cfg: Any) -> dict[str, Any]:
    """What a model's key depends on besides its data: the recipe and the numerics it ran with."""
    from omegaconf import OmegaConf

    recipe = without_legacy(OmegaConf.to_container(cfg.recipe, resolve=True), LEGACY_RECIPE)
    if recipe.get("lr_schedule") == "paper":  # keyed by its earlier name, as models trained with it were
        recipe["lr_schedule"] = "study"
    # The test geometry synthray had before the setting existed: models selected and evaluated with it keep their keys.
    recipe["test_transform"] = without_legacy(recipe["test_transform"], {"geometry": "round"})
    # The training crop and colour order synthray had before the study's (models keyed then keep their keys).
    train = recipe["train_transform"] = without_legacy(recipe["train_transform"], {"color_jitter_order": "fixed"})
    if train.get("random_resized_crop"):
        train["random_resized_crop"] = without_legacy(train["random_resized_crop"], {"antialias": False})
    return {"recipe": recipe, "numerics": without_legacy(numerics(cfg), LEGACY_NUMERICS)}


def selects_on_real_test(cfg: Any) -> bool:
    return cfg.recipe.selection.set == "real-test"


GENERATED = "data"  # the split generated datasets and their views hold their rows in (real data: train, test, control)


def bad_images_identity(cfg: Any, split: str = GENERATED) -> dict[str, Any]:
    """`generation.bad_images` in the key of a model trained on `split` (and of a result, whose synthetic model is):
    only `keep`, and only on generated rows, the ones the quality guard flags. `drop` is what every model keyed
    before the setting trained on, so it keys as before; real rows have no flags, so either trains the same."""
    from omegaconf import OmegaConf

    keep = OmegaConf.select(cfg, "generation.bad_images", default="drop") == "keep"
    return {"bad_images": "keep"} if keep and split == GENERATED else {}



# Settings added after results were first keyed, at the values that compute what was computed before they existed.
LEGACY_METRICS = {"distance": "euclidean", "equal_counts": False, "features_of": "view"}
# Metric settings that say where encoders run, or that only join a column into the table afterwards: never in a key.
METRICS_NOT_KEYED = ("gpus_per_actor", "num_actors", "gpu_memory_gb")


# Fingerprints the sweep's driver computed, given to its trials (`planned_fingerprints`): a trial keys its real data
# as the plan did, without listing a folder of hundreds of thousands of images again.
_PLANNED: dict[tuple[str, str, tuple[str, ...]], str] = {}


def planned_fingerprints(found: list[tuple[str, str, tuple[str, ...], str]]) -> None:
    """Record (source, root, classes, fingerprint) as the driver's plan computed them, for this process."""
    _PLANNED.update({(source, root, tuple(classes)): files for source, root, classes, files in found})


def real_fingerprint(source: str, root: str | None, classes: list[str]) -> str | None:
    """sha256 (16 hex) of the image files the real-data stage reads under `root`: their names relative to it and
    their sizes, so a folder moved elsewhere keeps its key; None for the digits, which have no folder.

    A folder not readable here (a dry `plan` on a laptop) gets `unread <root>`: never equal to a real key."""
    if source == "digits" or not root:
        return None
    if (source, root, tuple(classes)) in _PLANNED:
        return _PLANNED[(source, root, tuple(classes))]
    from synthray.core.registry import SynthrayError
    from synthray.data import real as r

    base = Path(root)
    try:
        if source == "parquet":
            paths = [p for split in ("train", "test") for p in r.parquet_files(base, split)]
        else:
            dirs = (base / "train", r.test_dir(base))
            paths = [p for d in dirs for cid in classes if (d / cid).is_dir() for p in r.list_images(d / cid)]
    except (OSError, SynthrayError):  # not here or malformed: `validate` says why before anything runs
        return f"unread {root}"
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(f"{p.relative_to(base).as_posix()}\0{p.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def metrics_identity(cfg: Any, legacy: bool = False) -> dict[str, Any]:
    """The metric settings that change results, for a result's key. `metrics.geneval` only joins a column into
    the table afterwards, so it is keyed as unset (`legacy`: as it was keyed before, its path included)."""
    from omegaconf import OmegaConf

    m = OmegaConf.to_container(cfg.metrics, resolve=True)
    out = without_legacy({k: v for k, v in m.items() if k not in METRICS_NOT_KEYED}, LEGACY_METRICS)
    if isinstance(out.get("clipscore"), dict):  # its scale only rewrites the table's column (sweep/runner.py collect)
        out["clipscore"] = {k: v for k, v in out["clipscore"].items() if k != "scale"}
    if "geneval" in out and not legacy:
        out["geneval"] = None
    return out


