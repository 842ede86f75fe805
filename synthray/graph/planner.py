"""The planner: the one reader of the composed config. `plan(cfg)` turns it into the stage graph, every trial
with its specs, shared specs deduplicated (four architectures on one dataset plan that dataset once).

Tune trials, `synthray plan`, `resume`, validation and the results schema read this graph; stages read specs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from synthray.core.artifacts import without_legacy
from synthray.graph.identity import bad_images_identity, metrics_identity, selects_on_real_test, training_spec
from synthray.graph.metrics import clipscore_spec, features_spec
from synthray.graph.real import real_spec
from synthray.graph.specs import (
    CaptionsSpec,
    ClipscoreSpec,
    EvalSpec,
    ModelSpec,
    RealSpec,
    ResultSpec,
    SampledSpec,
    Spec,
    Split,
    SyntheticSpec,
    ViewSpec,
    placed,
)


def view_spec(setup: Any, source: Spec, splits: tuple[str, ...], rows: int, placement: Any = None) -> dict[str, Split]:
    """{split: Split} of `source` seen through the probe `setup`; identity probes (rgb, texture) are the source."""
    if setup.probe.identity:
        return {s: Split(source, s) for s in splits}
    pool = setup.pool
    device = pool.device if setup.probe.worker is not None else "cpu"
    resources = placed(placement, device, pool.actors, pool.gpus, setup.memory_gb, f"probe {setup.name}")
    view = ViewSpec(probe=setup.name, params=setup.identity, source=source, subdirs=tuple(splits), rows=rows,
                    resources_=resources, setup=setup)
    return {s: Split(view, s) for s in splits}


def model_spec(cfg: Any, arch: str, data: Split, num_classes: int, name: str, selection: Split | None, rows: int) -> ModelSpec:
    from omegaconf import OmegaConf

    from synthray.core.registry import SynthrayError
    from synthray.training.archs import arch_identity

    spec = training_spec(cfg)
    if selects_on_real_test(cfg) and selection is None:
        raise SynthrayError(f"recipe.selection.set=real-test, but no real test split was given to select {name or arch} on")
    t = cfg.training
    resources = placed(cfg.placement, str(t.device), int(t.num_workers), float(t.gpus_per_worker), float(t.gpu_memory_gb),
                       f"train {arch}", "worker")
    return ModelSpec(arch=arch_identity(arch), num_classes=num_classes, data=data, recipe=spec["recipe"],
                     numerics=spec["numerics"], selection=selection if selects_on_real_test(cfg) else None,
                     bad_images=bad_images_identity(cfg, data.split).get("bad_images"), name=name,
                     rows=rows, epochs=int(cfg.recipe.epochs),
                     resources_=resources,
                     run_recipe=OmegaConf.to_container(cfg.recipe, resolve=True), training=OmegaConf.to_container(t, resolve=True))


def model_artifact(cfg: Any, arch: str, data: Any, num_classes: int, label: str, selection: Any = None) -> Any:
    """The model of `arch` trained on `data` (a `DatasetRef` or a planned `Split`), not built. `selection` is the
    real test split a `selection.set: real-test` recipe picks its best epoch on."""
    from synthray.core.artifacts import Store

    return model_spec(cfg, arch, data, num_classes, label, selection, 0).artifact(Store.from_cfg(cfg))


def train(cfg: Any, arch: str, data: Any, num_classes: int, label: str, report_to_tune: bool = False, selection: Any = None) -> Any:
    """Train `arch` on the built split `data` (a `DatasetRef`), or reuse a trained copy: the training stage on the
    spec the config gives."""
    from synthray.core.artifacts import Store
    from synthray.training.trainer import train_model

    spec = model_spec(cfg, arch, data, num_classes, label, selection, 0)
    return train_model(spec, data, Store.from_cfg(cfg), report_to_tune, selection)


def eval_spec(cfg: Any, model: ModelSpec, data: Split, rows: int) -> EvalSpec:
    """`model` evaluated on `data` by the evaluation stage, placed by the `evaluation` section."""
    from omegaconf import OmegaConf

    e = cfg.evaluation
    resources = placed(cfg.placement, str(e.device), int(e.num_actors), float(e.gpus_per_actor), float(e.gpu_memory_gb),
                       f"evaluate {model.label()}")
    return EvalSpec(model=model, data=data, rows=rows, resources_=resources, pool=OmegaConf.to_container(e, resolve=True),
                    bad_images=bad_images_identity(cfg, data.split).get("bad_images"))


@dataclass
class TrialPlan:
    """One grid point, planned: every stage's spec (nothing is built here)."""

    point: dict[str, Any]
    cfg: Any                 # the point's run config, the probe's recipe changes merged in
    probe: Any               # the ProbeSetup
    table: pd.DataFrame | None  # the prompt table; None: made in the trial from the captioner stage's captions
    real: RealSpec
    captions: CaptionsSpec | None
    synthetic: SyntheticSpec
    real_view: dict[str, Split]   # train, test
    synth_view: Split
    synth_model: ModelSpec
    real_model: ModelSpec
    evaluations: dict[str, EvalSpec]   # synth_to_real, real_to_synth, real_to_real
    features: tuple[SampledSpec, SampledSpec]  # real, synthetic
    clipscore: ClipscoreSpec | None
    result: ResultSpec
    num_classes: int

    @property
    def label(self) -> str:
        from synthray.graph.grid import point_label

        return point_label(self.point)

    def specs(self) -> Iterator[Spec]:
        """Every artifact spec of the trial, inputs first."""
        from synthray.graph.specs import walk_specs

        return walk_specs((self.synth_model, self.real_model, *self.evaluations.values(), *self.features, self.clipscore,
                           self.result))


@dataclass
class Graph:
    """Every trial of a sweep, and every distinct spec they need (by ref)."""

    trials: list[TrialPlan]
    specs: dict[str, Spec] = field(default_factory=dict)

    def __iter__(self) -> Iterator[TrialPlan]:
        return iter(self.trials)

    def __len__(self) -> int:
        return len(self.trials)

    def artifacts(self) -> list[str]:
        """Every `<kind>/<key>` the sweep may build, tiny model twins included, sorted."""
        refs = set(self.specs)
        for spec in self.specs.values():
            refs |= tiny_models(spec.identity())
        return sorted(refs)


def tiny_models(node: Any) -> set[str]:
    """`tiny-models/<key>` of every tiny twin an identity names (a model identity with `tiny` and `version`)."""
    from synthray.core.artifacts import spec_key

    out: set[str] = set()
    if isinstance(node, dict):
        if "tiny" in node and "version" in node:
            out.add(f"tiny-models/{spec_key(node)}")
        for value in node.values():
            out |= tiny_models(value)
    elif isinstance(node, list):
        for value in node:
            out |= tiny_models(value)
    return out


def plan_point(cfg: Any, point: dict[str, Any], real: RealSpec | None = None, table: pd.DataFrame | None = None,
               counts: dict[str, int] | None = None, synthetic: SyntheticSpec | None = None,
               memo: dict[Any, Any] | None = None) -> Any:
    """Plan one grid point. `real`, `table` and `synthetic` may be shared by trials that have them in common (a
    dataset spec hashes its whole prompt table once); `counts`: real images per split, for the work estimates;
    `memo`: what trials of one plan share (a probe's setup and recipe-merged config per setting of the axes).
    A `TrialPlan`, or for a dense task's point (`task` in it) a `graph.dense.DensePlan`."""
    from synthray.graph.grid import AXES, TASK, point_cfg, point_label
    from synthray.graph.probes import probe_cfg, probe_setup
    from synthray.graph.synthetic import build_prompt_table, synthetic_spec, uses_captioner
    from synthray.training.archs import arch_identity

    cfg = point_cfg(cfg, point)
    real = real if real is not None else real_spec(cfg)
    counts = counts or {}
    if table is None and not uses_captioner(cfg, point["prompt_style"]):  # planning never captions
        table = build_prompt_table(cfg, point["generator"], point["prompt_style"])
    synth = synthetic or synthetic_spec(cfg, point["generator"], point["prompt_style"], table, real)
    shared = (point["probe"], *(repr(v) for k, v in point.items() if k not in AXES))
    memo = {} if memo is None else memo
    if shared not in memo:
        probe = probe_setup(cfg, point["probe"])
        memo[shared] = probe, probe_cfg(cfg, probe)  # e.g. texture: BagNet on random patches
    probe, run_cfg = memo[shared]
    if TASK in point:  # a dense task: its own models and evaluations, on pseudo-labels
        from synthray.graph.dense import plan_dense

        return plan_dense(run_cfg, point, real, synth, probe, counts, table)
    n_train, n_test = counts.get("train", synth.rows), counts.get("test", synth.rows // 10)
    real_view = view_spec(probe, real, ("train", "test"), n_train + n_test, cfg.placement)
    synth_view = view_spec(probe, synth, ("data",), synth.rows, cfg.placement)["data"]
    arch, num_classes = point["arch"], len(real.classes)
    where = f"{point['generator']}/{point['prompt_style']}/{probe.name}"
    synth_model = model_spec(run_cfg, arch, synth_view, num_classes, f"{arch} on {where}", real_view["test"], synth.rows)
    real_model = model_spec(run_cfg, arch, real_view["train"], num_classes, f"{arch} on real/{probe.name}", real_view["test"], n_train)
    evaluations = {"synth_to_real": eval_spec(run_cfg, synth_model, real_view["test"], n_test),
                   "real_to_synth": eval_spec(run_cfg, real_model, synth_view, synth.rows),
                   "real_to_real": eval_spec(run_cfg, real_model, real_view["test"], n_test)}
    images = run_cfg.metrics.get("features_of", "view") == "images"
    feats = (features_spec(run_cfg, Split(real, "train") if images else real_view["train"], n_train),
             features_spec(run_cfg, Split(synth, "data") if images else synth_view, synth.rows))
    result = ResultSpec(point=dict(point), arch=without_legacy(arch_identity(arch), {"arch": arch}), synthetic=synth, real=real,
                        training={**training_spec(run_cfg), **bad_images_identity(run_cfg)}, probe=probe.identity,
                        metrics=metrics_identity(cfg),
                        legacy_metrics=metrics_identity(cfg, legacy=True), name=point_label(point))
    return TrialPlan(point, run_cfg, probe, table, real, synth.captions, synth, real_view, synth_view, synth_model,
                     real_model, evaluations, feats, clipscore_spec(run_cfg, Split(synth, "data"), synth.rows), result, num_classes)


def plan(cfg: Any, counts: dict[str, int] | None = None) -> Graph:
    """Every trial of the grid, planned from the config alone; trials that share real data or a prompt table
    (same generator, style and prompt settings) share one planned copy, and every spec appears once by ref."""
    from omegaconf import OmegaConf

    from synthray.graph.grid import is_extra, point_cfg, trials
    from synthray.graph.synthetic import build_prompt_table, synthetic_spec, uses_captioner

    reals: dict[tuple[str, ...], RealSpec] = {}
    tables: dict[tuple[str, str, str], pd.DataFrame | None] = {}
    datasets: dict[tuple[str, ...], SyntheticSpec] = {}
    memo: dict[Any, Any] = {}
    graph = Graph([])
    for point in trials(cfg):
        own = point_cfg(cfg, point)
        extras = tuple(repr(v) for k, v in point.items() if is_extra(k))
        if extras not in reals:  # the real data depends on the grid's extra axes at most
            reals[extras] = replace(real_spec(own), counts=dict(counts)) if counts else real_spec(own)
        real = reals[extras]
        pair = (point["generator"], point["prompt_style"], OmegaConf.to_yaml(own.prompts) + str(own.data.classes))
        if pair not in tables:
            tables[pair] = None if uses_captioner(own, pair[1]) else build_prompt_table(own, *pair[:2])
        # The arch and probe axes never change a dataset; the other axes may (grid.axes.generation.guidance).
        dataset = (*pair, real.key, *(repr(v) for k, v in point.items() if k not in ("arch", "probe", "task")))
        if dataset not in datasets:
            datasets[dataset] = synthetic_spec(own, point["generator"], point["prompt_style"], tables[pair], real)
        trial = plan_point(cfg, point, real, tables[pair], counts, datasets[dataset], memo)
        graph.trials.append(trial)
        for spec in trial.specs():
            graph.specs.setdefault(spec.ref, spec)
    return graph
