"""The recipe's optimiser, learning-rate schedule and batch geometry, and a one-line check of a recipe's values.

A recipe is a config file (`synthray/conf/recipes/*.yaml`); nothing here holds a number of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from synthray.core.registry import SynthrayError, unknown_name
from synthray.core.shards import INLINE_ROWS

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
AUGMENTATIONS = ("grayscale", "solarize", "gaussian_blur")
# How the best epoch is picked: by which number, and on which rows (recipe.selection; see recipes/paper.yaml).
SELECTION_METRICS = ("accuracy", "loss")
SELECTION_SETS = ("train", "real-test")
# Where a training set's JPEGs are decoded: Ray Data's CPU tasks (Pillow) or the training worker's GPU (nvjpeg).
JPEG_DECODES = ("cpu", "gpu")
NATIVE = "native"  # recipe.load_size: training images at their decoded size, cropped per image (the study's)
# "paper" names the study's settings; "study" is the earlier spelling, still read, and what keys record (graph/identity.py).
PAPER_NAMES = ("paper", "study")


def make_optimizer(params: Iterable[torch.nn.Parameter], recipe: dict[str, Any]) -> torch.optim.Optimizer:
    cls = OPTIMIZERS[recipe["optimizer"]]
    return cls(params, lr=float(recipe["lr"]), betas=tuple(recipe["betas"]), weight_decay=float(recipe["weight_decay"]))


def lr_at(step: int, steps_per_epoch: int, recipe: dict[str, Any], rows: int | None = None) -> float:
    """Learning rate before optimiser step `step` (0-based): linear warm-up, then cosine down to `min_lr`.

    `recipe.lr_schedule: paper` is classifier/train.py's `cosine_annealing_with_linear_warmup` to the letter: its
    step counts are (rows // batch_size) x epochs, one short of the real count per epoch when the last batch is
    partial, and its progress is not clamped, so the last steps of a run climb back up from the floor; the floor
    is a max(), not an offset. `rows` (the training set's size) is needed for it.
    """
    base, start, floor = float(recipe["lr"]), float(recipe["warmup_start_lr"]), float(recipe["min_lr"])
    if recipe.get("lr_schedule", "synthray") in PAPER_NAMES:
        if rows is None:
            raise ValueError("lr_schedule=paper needs the training set's size")
        per_epoch = rows // int(recipe["batch_size"])
        if per_epoch < 1:  # the study's count would be 0: the rate would flip between lr and the floor every step
            raise SynthrayError(f"recipe.lr_schedule=paper counts training rows // recipe.batch_size steps per epoch, "
                                f"which is 0 for {rows} rows and batch {recipe['batch_size']}; use recipe.lr_schedule=synthray")
        total, warm = per_epoch * int(recipe["epochs"]), per_epoch * int(recipe["warmup_epochs"])
        if step < warm:
            return base * (step / max(1, warm) * (1 - start / base) + start / base)
        progress = (step - warm) / max(1, total - warm)
        return base * max(floor / base, 0.5 * (1.0 + math.cos(math.pi * progress)))
    total = int(recipe["epochs"]) * steps_per_epoch
    warm = min(round(float(recipe["warmup_epochs"]) * steps_per_epoch), total)
    if step < warm:
        return start + (base - start) * step / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_geometry(global_batch: int, workers: int, accumulate: int) -> int:
    """Images per forward pass on one worker, such that workers x accumulate x it == the recipe's global batch."""
    if global_batch % (workers * accumulate):
        raise SynthrayError(
            f"recipe.batch_size={global_batch} is not divisible by training.num_workers={workers} x "
            f"training.accumulate={accumulate}; the global batch must stay as the recipe says")
    return global_batch // (workers * accumulate)


def steps_per_epoch(rows: int, workers: int, per_step_per_worker: int) -> int:
    """Optimiser steps in one epoch when each of `workers` sees rows // workers rows (Ray Train's equal split)."""
    return max(1, math.ceil((rows // workers) / per_step_per_worker))


def jpeg_decode(t: Any) -> str:
    """`training.jpeg_decode` of the `training` config, checked: one line for a bad value or a CPU device."""
    value = str(t.get("jpeg_decode") or "cpu")
    if value not in JPEG_DECODES:
        raise unknown_name("training.jpeg_decode", value, JPEG_DECODES)
    if value == "gpu" and t.device != "gpu":
        raise SynthrayError(f"training.jpeg_decode=gpu decodes JPEGs with nvjpeg on the training GPU, but "
                            f"training.device={t.device}; use training.jpeg_decode=cpu or training.device=gpu")
    return value


def decode_cpus(t: Any) -> int | None:
    """`training.decode_cpus`, checked: at most this many Ray Data decode tasks at once, or None (Ray's default)."""
    value = t.get("decode_cpus")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SynthrayError(f"training.decode_cpus must be a whole number >= 1 or null, got {value}")
    return value


def check_recipe(r: Any, t: Any) -> None:
    """Validate a recipe (`r`) and the training section's execution settings (`t`): one line naming the first
    bad value."""
    from synthray.training.augment import output_size

    for key in ("epochs", "batch_size", "load_size"):
        if key == "load_size" and r[key] == NATIVE:
            continue
        if not isinstance(r[key], int) or isinstance(r[key], bool) or r[key] < 1:
            also = f' or "{NATIVE}"' if key == "load_size" else ""
            raise SynthrayError(f"recipe.{key} must be a whole number >= 1{also}, got {r[key]}")
    if r.load_size == NATIVE and not r.train_transform.get("random_resized_crop"):
        raise SynthrayError(f"recipe.load_size={NATIVE} needs train_transform.random_resized_crop (its crops take "
                            "any size); a fixed crop or shift takes a square: set recipe.load_size to a number of px")
    if r.get("lr_schedule", "synthray") not in ("synthray", *PAPER_NAMES):
        raise unknown_name("recipe.lr_schedule", str(r.lr_schedule), ["synthray", "paper"])
    if r.optimizer not in OPTIMIZERS:
        raise SynthrayError(f"recipe.optimizer '{r.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if not 0 <= float(r.selection_fraction) < 1:
        raise SynthrayError(f"recipe.selection_fraction must be in [0, 1), got {r.selection_fraction}")
    selection = r.get("selection")
    if selection is None:
        raise SynthrayError("recipe.selection is missing; add selection: {metric: accuracy|loss, set: train|real-test}")
    for key, choices in (("metric", SELECTION_METRICS), ("set", SELECTION_SETS)):
        if selection.get(key) not in choices:
            raise SynthrayError(f"recipe.selection.{key}={selection.get(key)} is not one of {', '.join(choices)}")
    bad = [op for op in r.train_transform.one_of or [] if op not in AUGMENTATIONS]
    if bad:
        raise SynthrayError(f"recipe.train_transform.one_of: unknown '{bad[0]}'; choices: {', '.join(AUGMENTATIONS)}")
    test = r.test_transform
    if int(test.crop) > int(test.resize):
        raise SynthrayError(f"recipe.test_transform: crop {test.crop} is larger than resize {test.resize}")
    size = output_size(r)
    if size != int(test.crop):
        raise SynthrayError(f"recipe: training images are {size} px but test images {test.crop} px; "
                            "make train_transform's crop size (or load_size) equal test_transform.crop")
    for key in ("num_workers", "accumulate"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise SynthrayError(f"training.{key} must be a whole number >= 1, got {t[key]}")
    batch_geometry(int(r.batch_size), int(t.num_workers), int(t.accumulate))
    for key, choices in (("precision", ("auto", "bf16", "fp32")), ("channels_last", (True, False, "auto"))):
        if t[key] not in choices:  # channels_last=auto: the earlier spelling of true, still read
            shown = choices[:2] if key == "channels_last" else choices
            raise SynthrayError(f"training.{key}={t[key]} is not one of {', '.join(map(str, shown))}")
    jpeg_decode(t)
    decode_cpus(t)
    inline = t.get("inline_rows", INLINE_ROWS)
    if not isinstance(inline, int) or isinstance(inline, bool) or inline < 0:
        raise SynthrayError(f"training.inline_rows must be a whole number >= 0 (0: always Ray Train), got {inline}")
    if not isinstance(t.sync_bn, bool):
        raise SynthrayError(f"training.sync_bn must be true or false, got {t.sync_bn}")
    if t.sync_bn and int(t.num_workers) > 1 and t.device != "gpu":
        # torch's SyncBatchNorm refuses CPU tensors once a process group exists (gloo has no such kernel).
        raise SynthrayError(f"training.sync_bn=true needs training.device=gpu: torch's SyncBatchNorm has no CPU "
                            f"version; use sync_bn=false or num_workers=1 on {t.device}")


def load_size(recipe: Any) -> int | None:
    """`recipe.load_size` as the decoders take it: the square side in px, or None for native sizes."""
    return None if recipe["load_size"] == NATIVE else int(recipe["load_size"])
