"""The plan: the grid expanded into trials, checked as a whole before anything launches."""

from __future__ import annotations

import itertools
from typing import Any

from omegaconf import OmegaConf

from synthray.registry import SynthrayError, unknown_name

AXES = ("generator", "prompt_style", "arch", "probe")


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


def trials(cfg: Any) -> list[dict[str, str]]:
    """Every point of the grid, in a fixed order (generator-major)."""
    axes = grid_axes(cfg)
    return [dict(zip(AXES, combo)) for combo in itertools.product(*(axes[a] for a in AXES))]


def _positive(cfg: Any, *keys: str) -> None:
    for key in keys:
        section, name = key.split(".")
        value = cfg[section][name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SynthrayError(f"{key} must be a whole number >= 1, got {value!r}")


def validate(cfg: Any) -> list[dict[str, str]]:
    """Check every name, path, number, storage location and weight location the sweep will need; return its trials.

    Nothing is written and nothing is launched: a bad config costs one line and no cleanup.
    """
    from synthray.data.real import check_source, load_classes
    from synthray.devices import check_device_name
    from synthray.generation.generators import generator_entry, sampling_params
    from synthray.generation.prompts import PROMPT_STYLES
    from synthray.generation.stage import style_captions
    from synthray.metrics.features import check_encoders
    from synthray.models import Models, check_model
    from synthray.probes.stage import check_probe, probe_cfg, probe_setup
    from synthray.storage import check_storage
    from synthray.sweep.geneval import load_geneval
    from synthray.training.archs import check_arch
    from synthray.training.recipe import check_recipe

    points = trials(cfg)
    axes = grid_axes(cfg)
    check_storage(cfg.storage)
    if cfg.hub.cache:
        check_storage(cfg.hub.cache)
    for key in ("device", "generation.device", "training.device"):
        check_device_name(key, OmegaConf.select(cfg, key))
    _positive(cfg, "prompts.n_per_class", "generation.batch_size", "generation.shard_size", "generation.num_actors",
              "data.image_size")
    if cfg.generation.image_format not in ("jpeg", "png"):
        raise unknown_name("generation.image_format", cfg.generation.image_format, ["jpeg", "png"])
    classes = load_classes(cfg.data.classes)
    check_source(cfg)
    for style in axes["prompt_style"]:
        if style not in PROMPT_STYLES:
            raise unknown_name("prompt style", style, PROMPT_STYLES)
        style_captions(cfg, style, classes["id"].tolist())
    for arch in axes["arch"]:
        check_arch(arch)
    for probe in axes["probe"]:
        check_probe(cfg, probe, axes["arch"])
        check_recipe(probe_cfg(cfg, probe_setup(cfg, probe)))
    models = Models.from_cfg(cfg)
    for name in axes["generator"]:
        entry = generator_entry(cfg, name)
        sampling_params(entry, cfg.generation.protocol)
        if entry["kind"] == "diffusers":
            check_model(models, str(entry["model"]), "pipeline", f"generators.{name}.model")
    check_encoders(cfg)
    load_geneval(cfg)
    return points
