"""Where a GPU stage runs, from configuration alone (the `placement` section), never read off the cluster.

Each GPU stage declares the GPU memory one of its units needs: a generator entry's `gpu_memory_gb`,
`training.gpu_memory_gb`, `evaluation.gpu_memory_gb`, `metrics.gpu_memory_gb`, `probes.depth.gpu_memory_gb`.
`placement.by` turns that need into a Ray `label_selector` (autoscaler v2 launches a node type whose labels satisfy
it):
- `none`: no selector, any GPU will do (one machine, or a cluster of one GPU kind);
- `labels`: GPU nodes carry `synthray.io/gpu-memory-gb: "<tier>"` (the node types of cluster.yaml); a stage admits
  every tier of `placement.tiers` at least as large as its need;
- `accelerator-type`: Ray's own `ray.io/accelerator-type` label, with `placement.accelerators` giving each
  type's memory in GB (for clusters whose node types carry no synthray label).

`synthray plan --cluster <cluster.yaml>` matches the same selectors against a cluster file's node types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from synthray.core.registry import SynthrayError

LABEL = "synthray.io/gpu-memory-gb"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
MODES = ("none", "labels", "accelerator-type")


def tier_options(section: Any) -> tuple[str, dict[str, float]]:
    """(the label key, {label value: GPU memory in GB}) that `placement.by` selects on."""
    if section.by == "labels":
        return str(section.get("label", LABEL)), {_number(t): float(t) for t in section.tiers}
    return ACCELERATOR_LABEL, {str(k): float(v) for k, v in dict(section.accelerators).items()}


def label_selector(need_gb: float, section: Any, stage: str) -> tuple[tuple[str, str], ...]:
    """The selector, as sorted pairs, that places a unit needing `need_gb` GB of GPU memory; () with
    `placement.by: none`. A need larger than every tier is refused in one line naming `stage`."""
    if section is None or section.by == "none":
        return ()
    if section.by not in MODES:
        raise SynthrayError(f"placement.by must be one of {', '.join(MODES)}, got {section.by!r}")
    key, options = tier_options(section)
    fit = [value for value, gb in sorted(options.items(), key=lambda kv: kv[1]) if gb >= float(need_gb or 0)]
    if not fit:
        largest = max(options.values(), default=0)
        raise SynthrayError(f"{stage} needs {need_gb:g} GB of GPU memory, but the largest GPU in "
                            f"placement.{'tiers' if section.by == 'labels' else 'accelerators'} has {largest:g} GB; "
                            f"add a larger tier, or lower its need (cpu_offload, a smaller batch)")
    return ((key, f"in({','.join(fit)})"),)


def _number(value: Any) -> str:
    """A tier as its label value: 24 -> "24", 40.0 -> "40"."""
    return f"{float(value):g}"


_IN = re.compile(r"^(!?)in\((.*)\)$")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a node with `labels` satisfies `selector` (Ray's syntax: `v`, `!v`, `in(a,b)`, `!in(a,b)`)."""
    for key, want in selector.items():
        have = labels.get(key)
        found = _IN.match(want)
        if found:
            inside = have in {v.strip() for v in found.group(2).split(",")}
            if inside == bool(found.group(1)):
                return False
        elif want.startswith("!"):
            if have == want[1:]:
                return False
        elif have != want:
            return False
    return True


@dataclass(frozen=True)
class NodeType:
    """One node type of a cluster file: its name, GPUs and CPUs per node, and labels."""

    name: str
    gpus: float
    cpus: float
    labels: dict[str, str] = field(default_factory=dict)
    head: bool = False


def node_types(cluster: dict[str, Any]) -> list[NodeType]:
    """The node types of a parsed `ray up` cluster file (`available_node_types`)."""
    head = cluster.get("head_node_type")
    out = []
    for name, spec in (cluster.get("available_node_types") or {}).items():
        resources = spec.get("resources") or {}
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        out.append(NodeType(str(name), float(resources.get("GPU", 0)), float(resources.get("CPU", 0)), labels, name == head))
    return out


def fitting_types(types: list[NodeType], device: str, gpus: float, selector: dict[str, str]) -> list[str]:
    """The node types a unit can run on: any node for a CPU unit (the head too), else nodes with at least `gpus`
    GPUs whose labels satisfy `selector`."""
    if device != "gpu":
        return [t.name for t in types]
    return [t.name for t in types if t.gpus >= max(gpus, 1e-9) and matches(selector, t.labels)]


def where_am_i() -> dict[str, Any]:
    """This process's node, as an artifact's meta records it: node id, its labels, and the GPU model (None when
    no CUDA device is visible, as on a node whose GPUs Ray only counts)."""
    import ray

    out: dict[str, Any] = {"node": None, "labels": {}, "gpu": None}
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        out["node"] = ctx.get_node_id()
        out["labels"] = {k: v for k, v in (ctx.get_node_labels() or {}).items() if not k.startswith("ray.io/node")}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # noqa: BLE001 - a meta field, never a reason to fail a stage
        pass
    return out
