"""The specs of sampled rows passed through models, read from the config (`metrics`): feature sets and CLIPScores."""

from __future__ import annotations

from typing import Any

from synthray.graph.specs import ClipscoreSpec, SampledSpec, Split, placed
from synthray.metrics.features import PIXELS


def encoder_names(cfg: Any) -> list[str]:
    """The configured encoders, first one first (its metrics are also the unprefixed result columns)."""
    names = cfg.metrics.features
    return [names] if isinstance(names, str) else [str(n) for n in names]


def encoder_model(cfg: Any, name: str) -> str | None:
    """The model an encoder name loads (`metrics.encoders.<name>.model`); None for `pixels`."""
    if name == PIXELS:
        return None
    from synthray.core.registry import unknown_name
    from synthray.metrics.encoders import FEATURE_MODELS

    if name not in FEATURE_MODELS.names():
        raise unknown_name("feature encoder", name, [PIXELS, *FEATURE_MODELS.names()])
    return str(cfg.metrics.encoders[name].model)


def sample_limit(cfg: Any) -> int | None:
    """`metrics.max_samples` as a key records it: an int, or None for every row."""
    value = cfg.metrics.max_samples
    return None if value is None else int(value)


def _sampled(cfg: Any, cls: type, settings: dict[str, Any], names: dict[str, str | None], source: Split, rows: int) -> SampledSpec:
    from synthray.core.models import model_identity
    from synthray.graph.identity import bad_images_identity

    m = cfg.metrics
    # bad_images=keep on generated rows: the study's image_dist/calc.py reads every saved image, NaN and black too.
    settings = dict(settings, max_samples=sample_limit(cfg), seed=int(cfg.seed), **bad_images_identity(cfg, source.split))
    if any(names.values()):  # the device changes a model's numerics (bf16 autocast on GPU), so it is in the key
        settings.update(device=str(m.device), models={n: model_identity(v) for n, v in names.items() if v})
    device = str(m.device) if any(names.values()) else "cpu"
    resources = placed(cfg.placement, device, max(1, int(m.get("num_actors", 1))), float(m.gpus_per_actor),
                       float(m.get("gpu_memory_gb", 0)), f"{cls.kind} ({', '.join(names)})")
    limit = sample_limit(cfg)
    from omegaconf import OmegaConf

    return cls(source=source, settings=settings, rows=rows if limit is None else min(rows, limit),
               resources_=resources,
               pool=OmegaConf.to_container(m, resolve=True))


def features_spec(cfg: Any, source: Split, rows: int) -> SampledSpec:

    names = {n: encoder_model(cfg, n) for n in encoder_names(cfg)}
    return _sampled(cfg, SampledSpec, {"encoders": names}, names, source, rows)


def clipscore_spec(cfg: Any, source: Split, rows: int) -> ClipscoreSpec | None:
    model = cfg.metrics.clipscore.model
    if not model:
        return None
    return _sampled(cfg, ClipscoreSpec, {"clipscore": str(model)}, {"clip": str(model)}, source, rows)  # type: ignore[return-value]


def check_encoders(cfg: Any) -> None:
    """Unknown encoder names and hub weights missing from the cache (encoders, CLIPScore's CLIP) fail in one line
    before anything runs. Tiny twins are built later, by the stage that needs them."""
    from synthray.core.devices import check_device_name
    from synthray.core.models import Models, check_model
    from synthray.metrics.features import check_metric_settings

    check_device_name("metrics.device", cfg.metrics.device)
    check_metric_settings(cfg.metrics)
    models = Models.from_cfg(cfg)
    for name in encoder_names(cfg):
        model = encoder_model(cfg, name)
        if model:
            check_model(models, model, "encoder", f"metrics.encoders.{name}.model")
    if cfg.metrics.clipscore.model:
        check_model(models, str(cfg.metrics.clipscore.model), "encoder", "metrics.clipscore.model")


def features_of(cfg: Any, dataset: Any) -> dict[str, Any]:
    """The feature sets of a built split (`features` on the spec the config gives), as the trial computes them."""
    from synthray.core.models import Models
    from synthray.metrics.features import features

    return features(features_spec(cfg, dataset, 0), dataset, Models.from_cfg(cfg))
