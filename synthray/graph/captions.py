"""The captions' spec, read from the config (`captioner`), with the checks and the config-level entry points of
the captioner stage (`prompts/captions.py::build_captions`, which reads only its spec)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from synthray.core.artifacts import Artifact, Store
from synthray.core.registry import SynthrayError
from synthray.graph.specs import CaptionsSpec, RealSpec
from synthray.prompts.backends import CAPTIONERS


def captioner_section(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.captioner, resolve=True)


def preprocess_identity(c: dict[str, Any]) -> dict[str, Any]:
    return {"min_side": int(c["min_side"]), "resample": "lanczos", "upscale": True, "format": "jpeg",
            "quality": int(c["jpeg_quality"]), "subsampling": "pillow-default"}


def captions_settings(cfg: Any) -> dict[str, Any]:
    """What a captions key records besides the real data: which images, the backend and its model, the
    instruction, the preprocessing and the shard size."""
    c = captioner_section(cfg)
    backend = CAPTIONERS.get(str(c["backend"]))
    return {"per_class": c["per_class"], "backend": str(c["backend"]), **backend.identity(c), "instruction": str(c["instruction"]),
            "preprocess": preprocess_identity(c), "shard_size": int(c["shard_size"])}


def captions_spec(cfg: Any, real: RealSpec) -> CaptionsSpec:
    settings = captions_settings(cfg)
    model = settings["model"]
    name = model.get("name") or model.get("hub") or (f"tiny:{model['tiny']}" if "tiny" in model else None) or \
        model.get("folder") or model.get("uri")
    return CaptionsSpec(real=real, settings=settings, name=str(name), section=captioner_section(cfg))


def captions_artifact(cfg: Any, real: Any = None) -> Artifact:
    """The captions of the real train images that `cfg.captioner` describes (not built)."""
    from synthray.graph.real import real_spec

    return captions_spec(cfg, real_spec(cfg)).artifact(Store.from_cfg(cfg))


def caption(cfg: Any, real: Artifact | None = None) -> Artifact:
    """Build (or reuse) the captions artifact of the real train images (`real`: the built real data, or built here)."""
    from synthray.core.models import Models
    from synthray.graph.build import Context, build
    from synthray.graph.real import real_spec

    check_captioner(cfg)
    models = Models.from_cfg(cfg)
    ctx = Context(models.store, models)
    spec = captions_spec(cfg, real_spec(cfg))
    if real is not None:  # already built by the caller
        ctx.built[spec.real.ref] = real
    return build(spec, ctx)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_captioner(cfg: Any, dry: bool = False) -> None:
    """Before launch: one line for a bad `captioner` setting. The API key is needed only when the captions are
    not already in storage (a complete artifact is reused without a single request); a `dry` plan needs none:
    the key is read where the captioner runs."""
    from synthray.core.devices import check_device_name
    from synthray.core.models import Models

    c = captioner_section(cfg)
    backend = CAPTIONERS.get(str(c["backend"]))
    if not isinstance(c.get("instruction"), str) or not c["instruction"].strip():
        raise SynthrayError("captioner.instruction is empty; it is the text sent with every image")
    if c.get("per_class") is not None and not _whole(c["per_class"]):
        raise SynthrayError(f"captioner.per_class must be a whole number >= 1 or null (every image), got {c['per_class']!r}")
    for key in ("min_side", "shard_size", "batch_size", "num_actors"):
        if not _whole(c.get(key)):
            raise SynthrayError(f"captioner.{key} must be a whole number >= 1, got {c.get(key)!r}")
    if not _whole(c.get("jpeg_quality")) or c["jpeg_quality"] > 100:
        raise SynthrayError(f"captioner.jpeg_quality must be in 1..100, got {c.get('jpeg_quality')!r}")
    if c.get("max_tokens") is not None and not _whole(c["max_tokens"]):
        raise SynthrayError(f"captioner.max_tokens must be a whole number >= 1 or null, got {c['max_tokens']!r}")
    check_device_name("captioner.device", c.get("device"))
    need_key = not dry and not captions_artifact(cfg).is_complete()
    backend.check(c, Models.from_cfg(cfg), need_key)


def read_captions(cfg: Any) -> pd.DataFrame:
    """The captions table (columns `CAPTION_COLUMNS`) of the complete captions artifact `cfg` names."""
    from synthray.core.images import read_images
    from synthray.prompts.captions import CAPTION_COLUMNS

    art = captions_artifact(cfg)
    if not art.is_complete():
        raise SynthrayError(f"prompts.captions=captioner: the captions {art.ref} are not built yet; a sweep builds them "
                            "before generation, or run `synthray caption` with the same overrides")
    return read_images(art.file("data"), columns=CAPTION_COLUMNS)
