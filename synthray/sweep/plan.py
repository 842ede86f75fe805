"""The plan: the grid expanded into trials, checked as a whole before anything launches."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from synthray.registry import SynthrayError, unknown_name
from synthray.sweep.columns import AXES

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
        raise SynthrayError(f"grid.axes must map config keys to lists of values, e.g. grid.axes.generation.guidance=[1.5,2,4]; got '{given}'")
    out: dict[str, list[Any]] = {}
    for key, values in _leaves(given).items():
        if key.split(".")[0] in NOT_SWEEPABLE or key in AXES:
            hint = f"use grid.{key}" if key in AXES else "it says where or under what name the sweep runs"
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
    """Every point of the grid, in a fixed order (generator-major, then the extra axes in their given order).

    A point maps each axis to its value: the four named axes to names, each `grid.axes` key to one of its values.
    """
    axes: dict[str, list[Any]] = {**grid_axes(cfg), **extra_axes(cfg)}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def point_label(point: dict[str, Any]) -> str:
    """`tiny-sd/classname/tiny-cnn/rgb`, then `guidance=1.5` per extra axis (its key's last part)."""
    named = [str(point[a]) for a in AXES if a in point]
    extra = [f"{k.rpartition('.')[2]}={v}" for k, v in point.items() if k not in AXES]
    return "/".join(named + extra)


def trial_label(config: dict[str, Any]) -> str:
    """A Tune trial's label from its config (one value per axis), as the trial itself names its point."""
    return point_label({k: config.get(k, "?") for k in (*AXES, *(k for k in config if k not in AXES))})


def point_cfg(cfg: Any, point: dict[str, Any]) -> Any:
    """The run config of one point: `cfg` with the point's extra-axis values set (the same object when it has none)."""
    extra = {k: v for k, v in point.items() if k not in AXES}
    if not extra:
        return cfg
    out = copy.deepcopy(cfg)
    for key, value in extra.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def _positive(cfg: Any, *keys: str) -> None:
    for key in keys:
        section, name = key.split(".")
        value = cfg[section][name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SynthrayError(f"{key} must be a whole number >= 1, got {value!r}")


# What `validate(cfg, dry=True)` (a `synthray plan`) does not check, and nothing else: whether what the sweep reads
# is there from this machine, which may be a laptop planning a cluster's sweep.
DRY_SKIPS = (
    "storage and hub.cache: reachable, credentials, bucket exists (their URIs are still parsed)",
    "data.root: the folder and its class folders or parquet files exist (data.source, data.on_corrupt and a root "
    "being given are still checked)",
    "hub weights: staged in hub.cache or in the local Hugging Face cache (names, and tiny families, still checked)",
    "captioner.backend=openai: its API key is set here, and whether the captions are already in storage",
)
DRY_STORAGE = "/nonexistent/synthray-dry-plan"  # the store a dry check sees: empty, never written, never listed


def validate(cfg: Any, dry: bool = False) -> list[dict[str, str]]:
    """Check every name, path, number, storage location and weight location the sweep will need; return its trials.

    Nothing is written and nothing is launched: a bad config costs one line and no cleanup.
    dry: the checks of `synthray plan`: every one of `synthray run`'s but those `DRY_SKIPS` lists, so that the
      two refuse the same inputs, except what only the cluster can see.
    """
    from synthray import storage

    points = trials(cfg)
    if dry:
        storage.normalize(cfg.storage)
        if cfg.hub.cache:
            storage.normalize(cfg.hub.cache)
    else:
        storage.check_storage(cfg.storage)
        if cfg.hub.cache:
            storage.check_storage(cfg.hub.cache)
    checked = _dry_cfg(cfg) if dry else cfg
    extra = extra_axes(cfg)
    combos = [dict(zip(extra, values)) for values in itertools.product(*extra.values())] or [{}]
    for combo in combos:  # each setting of the extra axes is a config of its own: check every one
        try:
            _check(point_cfg(checked, combo), dry)
        except SynthrayError as err:
            raise SynthrayError(f"{err} (at {', '.join(f'{k}={v}' for k, v in combo.items())})" if combo else str(err)) from None
    return points


def _dry_cfg(cfg: Any) -> Any:
    """The config `_check` sees for a dry plan: reads no storage (an empty store that is never created), takes hub
    ids as downloadable (no hub.cache lookup), and finds the captioner's API key set. Names are unchanged."""
    import os

    out = copy.deepcopy(cfg)
    OmegaConf.update(out, "storage", DRY_STORAGE, merge=False)
    OmegaConf.update(out, "hub.cache", None, merge=False)
    OmegaConf.update(out, "hub.allow_download", True, merge=False)
    key_env = OmegaConf.select(out, "captioner.openai.api_key_env", default=None)
    if key_env is not None and not os.environ.get(str(key_env)):
        found = next((name for name, value in os.environ.items() if value), None)  # a variable that is set
        if found is not None:
            OmegaConf.update(out, "captioner.openai.api_key_env", found, merge=False)
    return out


def _check_real_source(cfg: Any, dry: bool) -> None:
    """`check_source`, but in a dry plan a data.root that is not a folder here is taken as the cluster's."""
    from pathlib import Path

    from synthray.data.real import SOURCES
    from synthray.graph.real import check_source

    d = cfg.data
    elsewhere = d.source in SOURCES and d.source != "digits" and d.on_corrupt in ("fail", "skip") and d.root and \
        not Path(str(d.root)).expanduser().is_dir()
    if not (dry and elsewhere):
        check_source(cfg)


def _check(cfg: Any, dry: bool = False) -> None:
    from synthray.data.real import load_classes
    from synthray.devices import check_device_name
    from synthray.generation.kinds import sampling_params
    from synthray.graph.synthetic import generator_entry
    from synthray.generation.prompts import PROMPT_STYLES
    from synthray.graph.synthetic import check_captions
    from synthray.generation.throughput import batch_size_setting, overlap_setting
    from synthray.images import jpeg_subsampling
    from synthray.graph.metrics import check_encoders
    from synthray.models import Models, check_model
    from synthray.graph.probes import check_probe, probe_cfg, probe_setup
    from synthray.sweep.geneval import load_geneval
    from synthray.training.archs import check_arch
    from synthray.training.recipe import check_recipe

    axes = grid_axes(cfg)
    for key in ("device", "generation.device", "training.device"):
        check_device_name(key, OmegaConf.select(cfg, key))
    _positive(cfg, "prompts.n_per_class", "generation.shard_size", "generation.num_actors")
    batch_size_setting(cfg.generation.batch_size)  # a whole number >= 1, or auto
    overlap_setting(cfg.generation)
    if cfg.data.image_size is not None or cfg.data.source == "digits":  # null keeps files as they are; digits are 8x8 arrays
        _positive(cfg, "data.image_size")
    jpeg_subsampling(cfg.generation)
    if cfg.generation.image_format not in ("jpeg", "png"):
        raise unknown_name("generation.image_format", cfg.generation.image_format, ["jpeg", "png"])
    classes = load_classes(cfg.data.classes)
    _check_real_source(cfg, dry)
    for style in axes["prompt_style"]:
        if style not in PROMPT_STYLES:
            raise unknown_name("prompt style", style, PROMPT_STYLES)
        check_captions(cfg, style, classes["id"].tolist())
    for arch in axes["arch"]:
        check_arch(arch)
    for probe in axes["probe"]:
        check_probe(cfg, probe, axes["arch"])
        run_cfg = probe_cfg(cfg, probe_setup(cfg, probe))
        check_recipe(run_cfg.recipe, run_cfg.training)
    models = Models.from_cfg(cfg)
    for name in axes["generator"]:
        entry = generator_entry(cfg, name)
        sampling_params(entry, cfg.generation.protocol, cfg.generation)
        if entry["kind"] in ("diffusers", "vae-reencode"):  # vae-reencode loads its source generator's pipeline folder
            check_model(models, str(entry["model"]), "pipeline", f"generators.{entry.get('source', name)}.model")
        if entry["kind"] != "diffusers" and not float(cfg.data.control_fraction) > 0:
            raise SynthrayError(f"generator {name} draws held-out real images, but data.control_fraction="
                                f"{cfg.data.control_fraction} holds none out; set data.control_fraction=0.4")
    check_encoders(cfg)
    from synthray.sweep.runner import tracking_names

    tracking_names(cfg)
    if cfg.metrics.get("features_of", "view") not in ("view", "images"):
        raise unknown_name("metrics.features_of", str(cfg.metrics.features_of), ["view", "images"])
    load_geneval(cfg)
