"""`synthray stage-weights`: the names a sweep loads (the zoo's generators, depth, captioner, encoders) resolved to
hub ids, and their snapshots copied into `hub.cache` once, so autoscaled nodes never need the hub."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthray.core.registry import SynthrayError


def stage_named_weights(words: Sequence[str]) -> list[str]:
    """Stage each named model's hub snapshot to hub.cache; returns one line per model. The names are resolved
    by `weight_names` (explicit forms only); words with '=' are config overrides."""
    from synthray.config import compose
    from synthray.core.models import Models, stage_weights
    from synthray.core.storage import check_storage

    names = [w for w in words if "=" not in w]
    cfg = compose([w for w in words if "=" in w])
    known = weight_names(cfg)
    targets = []
    for name in names:  # every name is checked before anything is copied
        if name in known:
            targets.append(known[name])
        elif "/" in name:  # a hub id, org/name[@revision]: staged as it is
            targets.append((name, None))
        else:
            raise SynthrayError(f"stage-weights: unknown name '{name}'; names: {', '.join(known)}; "
                                "or a hub id org/name[@revision]")
    if cfg.hub.cache:
        check_storage(cfg.hub.cache)
    models, lines = Models.from_cfg(cfg), []
    for model, use in targets:
        uri, count = stage_weights(models, model, use)
        lines.append(f"staged {model} ({count} files) at {uri}")
    return lines


def weight_names(cfg: Any) -> dict[str, tuple[str, str]]:
    """The names stage-weights knows -> (hub id, what it is used as): the zoo's diffusers generators, depth,
    captioner and the feature encoders."""
    from synthray.generation.kinds import kind_of

    # Generators that load weights of their own (vae-reencode reuses its source generator's).
    names = {name: (str(entry.model), "pipeline") for name, entry in cfg.generators.items()
             if kind_of(entry).loads_model and "model" in entry}
    names["depth"] = (str(cfg.probes.depth.model), "depth")
    names["captioner"] = (str(cfg.captioner.local.model), "captioner")
    for name, entry in cfg.metrics.encoders.items():
        names.setdefault(name, (str(entry.model), "encoder"))
    return names
