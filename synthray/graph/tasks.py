"""The task axis (`grid.task`): what a trial trains and how it is scored. Each task is a record, as the probes are.

`classification` is the study's main grid and the default: its points and keys are what they were before the axis
existed (`task` is left out of them). A dense task (detection, segmentation) trains its own model, `tasks.<name>.model`,
in place of `grid.arch`, on the label stage's pseudo-labels of real and synthetic images (`labels:`), with the study's
recipe; its points carry `task` and its results have its own columns (`graph/dense.py`, `sweep/trial.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from synthray.core.registry import Registry, SynthrayError

TASK = "task"                      # a dense point's task; classification points have none, so their keys never moved
POINT = "point"                    # a Tune config holding the whole point (sweeps with a dense task: not a cross product)

CLASSIFICATION = "classification"  # the default task: never in a point, so no classification key moves


@dataclass(frozen=True)
class TaskRecord:
    """What one task is: `labels` (trains and scores on the label stage's pseudo-labels), `models` (the models it
    admits as `tasks.<name>.model`; None: `grid.arch`'s classifiers), `recipe` (the study's, the base that
    `tasks.<name>.recipe` changes; None: the recipe group), `metrics` (its figures, one column per evaluation and
    metric: `synth_to_real_map`), `probes` and `generators` (the ones it admits; None: every one)."""

    name: str
    labels: bool
    models: tuple[str, ...] | None
    recipe: Mapping[str, Any] | None
    metrics: tuple[str, ...]
    probes: tuple[str, ...] | None = None
    generators: tuple[str, ...] | None = None


TASKS = Registry("task")


def _register(record: TaskRecord) -> None:
    TASKS.register(record.name)(record)


def _records() -> None:
    from synthray.training.detection import DETECTION_RECIPE
    from synthray.training.segmentation import SEGMENTATION_RECIPE

    _register(TaskRecord(CLASSIFICATION, labels=False, models=None, recipe=None, metrics=("acc",)))
    # The study's dense runs are on the images themselves (rgb): its detection and segmentation read image folders.
    _register(TaskRecord("detection", labels=True, models=("fasterrcnn_resnet50_fpn", "tiny-fasterrcnn"),
                         recipe=DETECTION_RECIPE, metrics=("map", "map_50"), probes=("rgb",)))
    _register(TaskRecord("segmentation", labels=True, models=("deeplabv3_resnet50", "tiny-deeplabv3"),
                         recipe=SEGMENTATION_RECIPE, metrics=("miou", "pixel_acc"), probes=("rgb",)))


def task_record(name: str) -> TaskRecord:
    if not TASKS.names():
        _records()
    return TASKS.get(name)


def grid_tasks(cfg: Any) -> list[str]:
    """`grid.task` as a checked list of names (a config without it, as every sweep before the axis: classification)."""
    given = cfg.grid.get("task", None) if TASK in cfg.grid else None
    values = [CLASSIFICATION] if given is None else [given] if isinstance(given, str) else [str(v) for v in given]
    if not values:
        raise SynthrayError("grid.task is empty; give at least one task, e.g. grid.task=[classification]")
    if len(set(values)) != len(values):
        raise SynthrayError(f"grid.task lists a task twice: {values}")
    for name in values:
        task_record(name)
    return values


def dense_model(cfg: Any, task: str) -> str:
    """The model a dense task trains (`tasks.<task>.model`), checked against the task's record."""
    record = task_record(task)
    name = str(cfg.tasks[task].model)
    if record.models is not None and name not in record.models:
        raise SynthrayError(f"tasks.{task}.model={name} is not a {task} model; choices: {', '.join(record.models)}")
    return name


def dense_recipe(cfg: Any, task: str) -> dict[str, Any]:
    """The study's recipe of `task` with `tasks.<task>.recipe`'s changes, and the sweep's seed; an unknown key fails."""
    from omegaconf import OmegaConf

    record = task_record(task)
    base = {k: list(v) if isinstance(v, tuple) else v for k, v in record.recipe.items()}
    changes = OmegaConf.to_container(cfg.tasks[task].recipe, resolve=True) or {}
    unknown = sorted(set(changes) - set(base) - {"seed"})
    if unknown:
        raise SynthrayError(f"tasks.{task}.recipe.{unknown[0]}: not a {task} recipe key; keys: {', '.join(sorted(base))}")
    return {**base, "seed": int(cfg.seed), **changes}


def admits(record: TaskRecord, point: Mapping[str, Any]) -> bool:
    return (record.probes is None or point["probe"] in record.probes) and \
        (record.generators is None or point["generator"] in record.generators)


def check_tasks(cfg: Any, probes: list[str]) -> None:
    """Before launch: every task's name, model and recipe, and that each dense task has a probe it admits among
    `probes` (grid.probe)."""
    for task in grid_tasks(cfg):
        record = task_record(task)
        if not record.labels:
            continue
        dense_model(cfg, task)
        dense_recipe(cfg, task)
        if record.probes is not None and not set(record.probes) & set(probes):
            raise SynthrayError(f"grid.task has {task}, which runs on probe {'/'.join(record.probes)} only, but grid.probe is "
                                f"{probes}; add rgb to grid.probe")
