"""What a spec costs and what it asks Ray for: `Work` (image passes, the unit `synthray plan` prices) and
`Resources` (device, units, GPUs and GPU memory per unit, and the node labels that place it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Work:
    """What a spec costs: `images` image passes of `stage` for `name` (a generator, probe, arch or encoder)."""

    stage: str
    name: str
    images: int


@dataclass(frozen=True)
class Resources:
    """What one unit of a stage asks Ray for: `device`, `units` workers or actors, `gpus` GPUs each, with
    `memory_gb` GB of GPU memory, and the node labels that say so (`selector`, from `core.placement`)."""

    device: str = "cpu"
    units: int = 1
    gpus: float = 0.0
    what: str = "actor"
    memory_gb: float = 0.0
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def total_gpus(self) -> float:
        return self.units * self.gpus

    @property
    def label_selector(self) -> dict[str, str] | None:
        """Ray's `label_selector` for each unit; None: any node with the GPUs."""
        return dict(self.selector) or None

    def words(self) -> str:
        memory = f", {self.memory_gb:g} GB" if self.device == "gpu" and self.memory_gb else ""
        return f"{self.units} {self.what}{'s' if self.units != 1 else ''} x {self.gpus:g} GPU{memory}"


def placed(placement: Any, device: str, units: int, gpus: float, memory_gb: float, stage: str,
           what: str = "actor") -> Resources:
    """The resources of a stage's units, with the label selector `placement` (the config's section) gives a GPU
    unit needing `memory_gb` GB; a CPU unit has none. `stage` names it in the line that refuses a need no tier
    holds."""
    from synthray.core.placement import label_selector

    gpu = device == "gpu"
    selector = label_selector(memory_gb, placement, stage) if gpu else ()
    return Resources(device, units, gpus if gpu else 0.0, what, float(memory_gb or 0) if gpu else 0.0, selector)
