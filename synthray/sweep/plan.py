"""The plan: the grid expanded into trials, checked as a whole before anything launches."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf

from synthray.core.registry import SynthrayError, unknown_name
from synthray.graph.grid import (  # noqa: F401 - the grid's names, read from here by the runner and tests
    AXES,
    NOT_SWEEPABLE,
    extra_axes,
    grid_axes,
    point_cfg,
    point_label,
    trial_label,
    trials,
)


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
    "secrets: $WANDB_API_KEY for tracking=wandb, $HF_TOKEN for a gated hub model that would be downloaded",
)
DRY_STORAGE = "/nonexistent/synthray-dry-plan"  # the store a dry check sees: empty, never written, never listed


def validate(cfg: Any, dry: bool = False) -> list[dict[str, str]]:
    """Check every name, path, number, storage location and weight location the sweep will need; return its trials.

    Nothing is written and nothing is launched: a bad config costs one line and no cleanup.
    dry: the checks of `synthray plan`: every one of `synthray run`'s but those `DRY_SKIPS` lists, so that the
      two refuse the same inputs, except what only the cluster can see.
    """
    from synthray.core import storage

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
    _check_dense(checked, dry)
    return points


def _check_dense(cfg: Any, dry: bool) -> None:
    """A dense task's recipe, probes, the segmenter's weights and (not in a dry plan: the laptop planning a cluster's
    sweep has no need of it) the ImageNet backbone file every dense worker loads."""
    from synthray.graph.tasks import check_tasks, grid_tasks, task_record

    check_tasks(cfg, grid_axes(cfg)["probe"])
    dense = [t for t in grid_tasks(cfg) if task_record(t).labels]
    if not dense:
        return
    from synthray.core.devices import check_device_name
    from synthray.core.models import Models, check_model

    check_device_name("labels.device", cfg.labels.device)
    check_model(Models.from_cfg(cfg), str(cfg.labels.model), "segmenter", "labels.model")
    if not dry and any(cfg.tasks[t].backbone for t in dense):
        from synthray.training.dense import backbone_file

        backbone_file(None if cfg.hub.cache is None else str(cfg.hub.cache), check_only=True)


def check_specs(specs: Iterable[Any]) -> None:
    """Each distinct spec of a planned stage graph checks itself (`Spec.check`), once per check key: run where
    the sweep plans its graph anyway (run, resume, the API), so checking costs no second plan. A dry `synthray
    plan` checks every spec but the real data's, whose folder may be readable only on the cluster."""
    seen: set[str] = set()
    for spec in specs:
        if spec.check_key() not in seen:
            seen.add(spec.check_key())
            spec.check()


def _dry_cfg(cfg: Any) -> Any:
    """The config `_check` sees for a dry plan: reads no storage (an empty store that is never created) and takes
    hub ids as downloadable (no hub.cache lookup). Names are unchanged; the captioner's key is left to `dry`."""
    out = copy.deepcopy(cfg)
    OmegaConf.update(out, "storage", DRY_STORAGE, merge=False)
    OmegaConf.update(out, "hub.cache", None, merge=False)
    OmegaConf.update(out, "hub.allow_download", True, merge=False)
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
    from synthray.core.devices import check_device_name
    from synthray.core.images import jpeg_subsampling
    from synthray.core.models import Models, check_model
    from synthray.data.real import load_classes
    from synthray.generation.kinds import kind_of, sampling_params
    from synthray.generation.throughput import batch_size_setting, overlap_setting
    from synthray.graph.metrics import check_encoders
    from synthray.graph.probes import check_probe, probe_cfg, probe_setup
    from synthray.graph.synthetic import check_captions, generator_entry
    from synthray.prompts.table import PROMPT_STYLES
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
        check_captions(cfg, style, classes["id"].tolist(), dry)
    for arch in axes["arch"]:
        check_arch(arch)
    for probe in axes["probe"]:
        check_probe(cfg, probe, axes["arch"])
        run_cfg = probe_cfg(cfg, probe_setup(cfg, probe))
        check_recipe(run_cfg.recipe, run_cfg.training)
    models = Models.from_cfg(cfg)
    for name in axes["generator"]:  # a control's real images: SyntheticSpec.check
        entry = generator_entry(cfg, name)
        sampling_params(entry, cfg.generation.protocol, cfg.generation)  # per point: an axis may set guidance
        if kind_of(entry).loads_model:  # vae-reencode loads its source generator's pipeline folder
            check_model(models, str(entry["model"]), "pipeline", f"generators.{entry.get('source', name)}.model",
                        gated=bool(entry.get("gated")) and not dry)
    check_encoders(cfg)
    from synthray.sweep.tracking import tracking_names

    tracking_names(cfg, secrets=not dry)
    if cfg.metrics.get("features_of", "view") not in ("view", "images"):
        raise unknown_name("metrics.features_of", str(cfg.metrics.features_of), ["view", "images"])
    load_geneval(cfg)
