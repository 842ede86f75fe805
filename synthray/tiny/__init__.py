"""The random-weight tiny twins of every stage's models: diffusers pipelines, the depth model, the feature encoders
and the captioner. Real classes and small configs, saved with `save_pretrained` and loaded back like a hub
checkpoint, so every code path runs offline."""

from collections.abc import Callable
from typing import Any


def builders() -> dict[str, Callable[..., Any]]:
    """family -> builder(folder, seed=0, **params): every twin, imported here only when asked for (torch, diffusers)."""
    from synthray.tiny.captioner import build_tiny_captioner
    from synthray.tiny.depth import build_tiny_depth
    from synthray.tiny.encoders import build_tiny_encoder
    from synthray.tiny.pipelines import TINY_BUILDERS
    from synthray.tiny.sam3 import build_tiny_sam3

    out: dict[str, Callable[..., Any]] = dict(TINY_BUILDERS)
    out["depth"] = lambda folder, seed=0: build_tiny_depth(folder, seed=seed)
    out["captioner"] = lambda folder, seed=0: build_tiny_captioner(folder, seed=seed)
    out["sam3"] = lambda folder, seed=0: build_tiny_sam3(folder, seed=seed)
    for kind in ("clip", "dinov2", "inception"):
        out[kind] = lambda folder, seed=0, kind=kind: build_tiny_encoder(kind, folder, seed=seed)
    return out
