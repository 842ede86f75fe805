"""`synthray plan --cluster <cluster.yaml>`: the node type every stage of the graph lands on, from the cluster
file and the specs' `resources()` alone (nothing is asked of a running cluster).

A GPU stage lands on the node types with enough GPUs per node whose labels satisfy its label selector
(`placement.by`), and, where a node type's labels say its GPU memory, with at least the memory the stage declares
(so `placement.by: none` is checked too). Of those, the plan names the smallest GPUs first, in the file's order
(spot before on-demand where the file lists them so). A stage that no node type holds is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthray.core.placement import NodeType, fitting_types, node_types, tier_options
from synthray.core.registry import SynthrayError


def read_cluster(path: str) -> list[NodeType]:
    """The node types of a `ray up` cluster file; one line when it is missing or has none."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise SynthrayError(f"cluster file not found: --cluster {path}")
    try:
        parsed = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise SynthrayError(f"cannot read cluster file {path}: {str(err).splitlines()[0]}") from None
    types = node_types(parsed)
    if not types:
        raise SynthrayError(f"cluster file {path} has no available_node_types")
    return types


def _memory(node: NodeType, placement: Any) -> float | None:
    """The GPU memory (GB) a node type's labels give, by the label `placement.by` reads (or synthray's); None."""
    for by in (placement.by, "labels", "accelerator-type"):
        if by == "none":
            continue
        key, options = tier_options(_with_by(placement, by))
        if node.labels.get(key) in options:
            return options[node.labels[key]]
    return None


def _with_by(placement: Any, by: str) -> Any:
    from omegaconf import OmegaConf

    out = OmegaConf.create(OmegaConf.to_container(placement, resolve=True))
    out.by = by
    return out


def stage_rows(graph: Any) -> dict[str, Any]:
    """{stage label: Resources}: every GPU stage of the graph once per (stage, name, resources)."""
    rows: dict[str, Any] = {}
    for spec in graph.specs.values():
        res, work = spec.resources(), spec.work()
        if res.device != "gpu" or work is None:
            continue
        label = f"{work.stage} {work.name}"
        if label in rows and rows[label] != res:
            label = f"{label} ({res.words()})"
        rows.setdefault(label, res)
    return rows


def placement_lines(graph: Any, cluster: str, placement: Any) -> list[str]:
    """The plan's placement table: each GPU stage, what it asks for, and the node types it lands on."""
    types = read_cluster(cluster)
    memory = {t.name: _memory(t, placement) for t in types}
    lines = [f"placement on {cluster} (placement.by={placement.by}; CPU stages: any node, the head included):"]
    rows = stage_rows(graph)
    width = max((len(label) for label in rows), default=0)
    for label, res in rows.items():
        fits = [name for name in fitting_types(types, res.device, res.gpus, res.label_selector or {})
                if memory[name] is None or memory[name] >= res.memory_gb]
        if not fits:
            raise SynthrayError(f"no node type of {cluster} holds stage '{label}': it needs {res.words()} per unit"
                                f"{', labels ' + str(res.label_selector) if res.label_selector else ''}; "
                                f"add a node type that has it, or lower the stage's gpu_memory_gb / GPUs")
        order = sorted(fits, key=lambda n: memory[n] if memory[n] is not None else float("inf"))
        smallest = [n for n in order if memory[n] == memory[order[0]]]
        more = len(fits) - len(smallest)
        lines.append(f"  {label:<{width}}  {res.words():<28} -> {', '.join(smallest)}"
                     f"{f' (or {more} larger type(s))' if more else ''}")
    if not rows:
        lines.append("  no stage asks for a GPU (device=cpu): every stage runs on any node")
    return lines
