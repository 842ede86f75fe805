"""The grid: its named axes and `grid.axes` keys, expanded into points, in a fixed order."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from synthray.core.registry import SynthrayError, unknown_name
from synthray.graph.tasks import CLASSIFICATION, POINT, TASK, admits, dense_model, grid_tasks, task_record

AXES = ("generator", "prompt_style", "arch", "probe")

# Keys that say where and under what name a sweep runs, not what a trial computes: never an axis. `device` is
# interpolated into each stage's device at compose time, so sweeping it would change nothing (sweep
# `generation.device` and friends instead).
NOT_SWEEPABLE = ("grid", "storage", "scratch", "name", "experiment", "ray", "tune", "hub", "lease_s", "device")
_MISSING = object()


def grid_axes(cfg: Any) -> dict[str, list[str]]:
    axes = {}
    for axis in AXES:
        if axis not in cfg.grid:
            raise SynthrayError(f"grid.{axis} is missing; give a list, e.g. grid.{axis}=[...]")
        values = cfg.grid[axis]
        values = [values] if isinstance(values, (str, int, float)) else list(values or [])
        if not values or any(v in (None, "") for v in values):
            raise SynthrayError(f"grid.{axis} is empty; give at least one name, e.g. grid.{axis}=[name]")
        if len(set(map(str, values))) != len(values):
            raise SynthrayError(f"grid.{axis} lists a name twice: {values}")
        axes[axis] = [str(v) for v in values]
    return axes


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """`{generation: {guidance: [..]}}` and `{generation.guidance: [..]}` both give `{"generation.guidance": [..]}`:
    a list (or a scalar) ends a key path."""
    if not isinstance(node, (dict, DictConfig)):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def extra_axes(cfg: Any) -> dict[str, list[Any]]:
    """The sweep's other axes, `grid.axes`: any config key with a list of values, e.g.
    `grid.axes.generation.guidance=[1.5,2,4]`. Each becomes a results column named by its key."""
    given = cfg.grid.get("axes") if "axes" in cfg.grid else None
    if given is None:
        return {}
    if not isinstance(given, DictConfig):
        raise SynthrayError("grid.axes must map config keys to lists of values, e.g. grid.axes.generation.guidance=[1.5,2,4]; "
                            f"got '{given}'")
    out: dict[str, list[Any]] = {}
    for key, values in _leaves(given).items():
        if key.split(".")[0] in NOT_SWEEPABLE or key in (*AXES, TASK):
            hint = f"use grid.{key}" if key in (*AXES, TASK) else "it says where or under what name the sweep runs"
            raise SynthrayError(f"grid.axes.{key}: not a sweepable key ({hint})")
        current = OmegaConf.select(cfg, key, default=_MISSING)
        if isinstance(current, DictConfig):
            raise SynthrayError(f"grid.axes.{key} is a section; sweep one of its keys, e.g. grid.axes.{key}.{next(iter(current), 'x')}")
        if current is _MISSING:
            parent = key.rpartition(".")[0]
            node = OmegaConf.select(cfg, parent) if parent else cfg
            choices = [f"{parent}.{c}" if parent else str(c) for c in node.keys()] if isinstance(node, DictConfig) else []
            raise SynthrayError(f"grid.axes: {unknown_name('config key', key, choices)}")
        values = OmegaConf.to_container(values) if isinstance(values, ListConfig) else values
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SynthrayError(f"grid.axes.{key} is empty; give at least one value")
        if len({repr(v) for v in values}) != len(values):
            raise SynthrayError(f"grid.axes.{key} lists a value twice: {values}")
        out[key] = values
    return out


def trials(cfg: Any) -> list[dict[str, Any]]:
    """Every point of the grid, in a fixed order: each task of `grid.task` in turn, and within it generator-major,
    then the extra axes in their given order.

    A point maps each axis to its value: the four named axes to names, each `grid.axes` key to one of its values.
    A dense task's point also has `task`, and its task's model as `arch` (so `grid.arch` gives it one point, not
    one per classifier); points of probes or generators the task does not admit are left out.
    """
    axes: dict[str, list[Any]] = {**grid_axes(cfg), **extra_axes(cfg)}
    base = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    out: list[dict[str, Any]] = []
    for task in grid_tasks(cfg):
        if task == CLASSIFICATION:
            out += base
            continue
        record, model, seen = task_record(task), dense_model(cfg, task), set()
        for point in base:
            dense = {**point, "arch": model, TASK: task}
            if admits(record, point) and repr(dense) not in seen:
                seen.add(repr(dense))
                out.append(dense)
    return out


def is_extra(key: str) -> bool:
    """Whether a point's key is a `grid.axes` config key (not a named axis, not the task)."""
    return key not in AXES and key != TASK


def point_label(point: dict[str, Any]) -> str:
    """`tiny-sd/classname/tiny-cnn/rgb`, then a dense point's task, then `guidance=1.5` per extra axis (its key's
    last part)."""
    named = [str(point[a]) for a in AXES if a in point] + ([str(point[TASK])] if TASK in point else [])
    extra = [f"{k.rpartition('.')[2]}={v}" for k, v in point.items() if is_extra(k)]
    return "/".join(named + extra)


def trial_label(config: dict[str, Any]) -> str:
    """A Tune trial's label from its config (one value per axis, or the whole `point`), as the trial names its point."""
    if isinstance(config.get(POINT), dict):
        return point_label(config[POINT])
    return point_label({k: config.get(k, "?") for k in (*AXES, *(k for k in config if k not in AXES))})


def point_cfg(cfg: Any, point: dict[str, Any]) -> Any:
    """The run config of one point: `cfg` with the point's extra-axis values set (the same object when it has none)."""
    extra = {k: v for k, v in point.items() if is_extra(k)}
    if not extra:
        return cfg
    out = copy.deepcopy(cfg)
    for key, value in extra.items():
        OmegaConf.update(out, key, value, merge=False)
    return out
