"""A probe's setup, read from the config (`probes.<name>`): its transform parameters, the part that keys its views,
where its model runs, and the recipe changes it implies (texture: BagNet on random patches)."""

from __future__ import annotations

from typing import Any

from synthray.core.artifacts import without_legacy
from synthray.core.models import Models, check_model, model_identity
from synthray.core.registry import SynthrayError
from synthray.core.shards import Pool
from synthray.probes.stage import EXECUTION_KEYS, ProbeSetup
from synthray.probes.transforms import PROBES


def probe_setup(cfg: Any, name: str) -> ProbeSetup:
    from omegaconf import OmegaConf

    probe = PROBES.get(name)
    section = OmegaConf.to_container(cfg.probes.get(name) or OmegaConf.create({}), resolve=True)
    params = {k: v for k, v in section.items() if k not in EXECUTION_KEYS}
    identity = without_legacy(params, probe.legacy)
    if identity.get("mask") == "paper":  # keyed by its earlier name, as the views made with it were
        identity["mask"] = "study"
    pool = Pool("cpu", actors=2)
    if probe.worker is not None:  # a model: its identity (hub revision, tiny version) and the numerics of its device
        identity["model"] = model_identity(str(params["model"]))
        pool = Pool.from_cfg(section)
        identity["device"] = pool.device
    return ProbeSetup(probe, params, identity, pool, section.get("recipe"), float(section.get("gpu_memory_gb") or 0))


def probe_cfg(cfg: Any, setup: ProbeSetup) -> Any:
    """`cfg` with the probe's recipe changes merged in (texture: 128 px random patches, flips, random test crops)."""
    from omegaconf import OmegaConf

    if not setup.recipe:
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.recipe = OmegaConf.merge(out.recipe, setup.recipe)
    return out


def check_probe(cfg: Any, name: str, archs: list[str]) -> None:
    """Before launch: the probe's name, the architectures it admits, and a model-based probe's weights."""
    from synthray.core.devices import check_device_name

    setup = probe_setup(cfg, name)
    if setup.probe.check is not None:
        setup.probe.check(name, setup.params)
    other = [a for a in archs if setup.probe.archs is not None and a not in setup.probe.archs]
    if other:
        raise SynthrayError(
            f"probe '{name}' trains only {'/'.join(setup.probe.archs)} (their receptive field is the probe), but grid.arch "
            f"has {', '.join(other)}; run {name} as its own sweep: grid.probe=[{name}] grid.arch=[{setup.probe.archs[0]}]")
    if setup.probe.worker is not None:
        check_device_name(f"probes.{name}.device", setup.pool.device)
        check_model(Models.from_cfg(cfg), str(setup.params["model"]), "depth", f"probes.{name}.model")
