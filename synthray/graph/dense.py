"""The dense tasks' stage graph: a detector or segmenter trained on one split's pseudo-labels, and scored on another's.

A dense trial (`grid.task=[detection]`) plans, beside the dataset and the real data it shares with classification:
- three label specs (`graph/labels.py`): the real train and test splits and the synthetic dataset;
- two dense models (`DenseModelSpec`): one trained on the synthetic labels, one on the real train labels;
- three dense evaluations (`DenseEvalSpec`): Synth→Real, Real→Synth and the Real→Real baseline;
- its result (`ResultSpec`, its point holding the task).
Models train on Ray Train (`training/dense.py`) and evaluations run as actor pools (`metrics/dense_eval.py`), each
placed by its section like the classifiers' (`training`, `evaluation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from synthray.graph.labels import LabelSpec
from synthray.graph.specs import Json, RealSpec, ResultSpec, Spec, Split, SyntheticSpec, Work, placed, run_field, walk_specs

BACKBONE_FILE = "resnet50-0676ba61.pth"  # torchvision's ResNet50_Weights.IMAGENET1K_V1, the study's backbone
IMAGENET = "imagenet"


@dataclass(frozen=True)
class DenseModelSpec(Spec):
    """A detector or segmenter trained on the images of `data` and their pseudo-labels `labels`. `classes`: the
    labelled classes' label indices in target order (target = position + the recipe's `label_start` for
    detection, position + 1 for segmentation, 0 being the background)."""

    kind: ClassVar[str] = "dense-models"
    task: str
    model: Json              # {"model": name, "backbone": "ResNet50_Weights.IMAGENET1K_V1" | None}
    classes: tuple[int, ...]
    data: Split
    labels: LabelSpec
    recipe: Json
    numerics: Json
    name: str = run_field("")
    rows: int = run_field(0)
    resources_: Any = run_field(None)
    training: Json = run_field(None)   # the training section: workers, device, retries, inline rows
    hub_cache: str | None = run_field(None)   # where `backbone: imagenet` is looked for first

    def identity(self, legacy: bool = False) -> Json:
        return {"schema": 1, "task": self.task, **self.model, "classes": list(self.classes),
                "data": self.data.ref_for(legacy), "labels": self.labels.key_for(legacy), "recipe": self.recipe,
                "numerics": self.numerics}

    def label(self) -> str:
        return self.name or str(self.model["model"])

    @property
    def epochs(self) -> int:
        return int(self.recipe["epochs"])

    def work(self) -> Work:
        return Work("train", str(self.model["model"]), self.rows * self.epochs)


@dataclass(frozen=True)
class DenseEvalSpec(Spec):
    """A dense model's predictions on one split, scored against that split's pseudo-labels: box mAP@[.5:.95] and
    mAP@.5 (detection) or IoU (segmentation), overall and per class (`metrics/dense_eval.py`)."""

    kind: ClassVar[str] = "dense-evaluations"
    model: DenseModelSpec
    data: Split
    labels: LabelSpec
    rows: int = run_field(0)
    resources_: Any = run_field(None)
    pool: Json = run_field(None)   # the evaluation section: device, actors, batch size

    def identity(self, legacy: bool = False) -> Json:
        return {"schema": 1, "model": self.model.key_for(legacy), "data": self.data.ref_for(legacy),
                "labels": self.labels.key_for(legacy)}

    def label(self) -> str:
        return f"{self.model.label()} on {self.data.ref}"

    def work(self) -> Work:
        return Work("evaluate", str(self.model.model["model"]), self.rows)


def target_classes(labels: LabelSpec, class_ids: tuple[str, ...]) -> tuple[int, ...]:
    """The labelled label indices in target order: sorted by class id, as the study's importers number them."""
    return tuple(sorted((int(k) for k in labels.settings["prompts"]), key=lambda i: class_ids[i]))


def dense_model_spec(cfg: Any, task: str, data: Split, labels: LabelSpec, classes: tuple[int, ...], name: str,
                     rows: int) -> DenseModelSpec:
    from omegaconf import OmegaConf

    from synthray.graph.identity import numerics
    from synthray.graph.tasks import dense_model, dense_recipe

    t, section = cfg.training, cfg.tasks[task]
    model = {"model": dense_model(cfg, task),
             "backbone": "ResNet50_Weights.IMAGENET1K_V1" if section.backbone == IMAGENET else None}
    if section.backbone not in (None, IMAGENET):
        from synthray.core.registry import SynthrayError

        raise SynthrayError(f"tasks.{task}.backbone must be imagenet or null, got {section.backbone!r}")
    resources = placed(cfg.placement, str(t.device), int(t.num_workers), float(t.gpus_per_worker),
                       float(section.gpu_memory_gb), f"train {model['model']}", "worker")
    # Only what changes a dense model's bits: the loop computes in fp32 (the study's, no AMP) and plain NCHW.
    keyed = {k: v for k, v in numerics(cfg).items() if k in ("device", "sync_bn")}
    return DenseModelSpec(task=task, model=model, classes=classes, data=data, labels=labels,
                          recipe=dense_recipe(cfg, task), numerics=keyed, name=name, rows=rows, resources_=resources,
                          training=OmegaConf.to_container(t, resolve=True),
                          hub_cache=None if cfg.hub.cache is None else str(cfg.hub.cache))


def dense_eval_spec(cfg: Any, model: DenseModelSpec, data: Split, labels: LabelSpec, rows: int) -> DenseEvalSpec:
    from omegaconf import OmegaConf

    e = cfg.evaluation
    resources = placed(cfg.placement, str(e.device), int(e.num_actors), float(e.gpus_per_actor),
                       float(cfg.tasks[model.task].gpu_memory_gb) / 2, f"evaluate {model.label()}")
    return DenseEvalSpec(model=model, data=data, labels=labels, rows=rows, resources_=resources,
                         pool=OmegaConf.to_container(e, resolve=True))


@dataclass
class DensePlan:
    """One dense grid point, planned (nothing built): the attributes a `sweep.trial.Trial` reads, as `TrialPlan`'s."""

    point: dict[str, Any]
    cfg: Any
    task: str
    probe: Any
    table: Any
    real: RealSpec
    captions: Any
    synthetic: SyntheticSpec
    labels: dict[str, LabelSpec]        # real_train, real_test, synthetic
    synth_model: DenseModelSpec
    real_model: DenseModelSpec
    evaluations: dict[str, DenseEvalSpec]   # synth_to_real, real_to_synth, real_to_real
    result: ResultSpec
    num_classes: int

    @property
    def label(self) -> str:
        from synthray.graph.grid import point_label

        return point_label(self.point)

    def specs(self) -> Any:
        """Every artifact spec of the trial, inputs first."""
        return walk_specs((self.synth_model, self.real_model, *self.evaluations.values(), self.result))


def plan_dense(cfg: Any, point: dict[str, Any], real: RealSpec, synth: SyntheticSpec, probe: Any,
               counts: dict[str, int], table: Any = None) -> DensePlan:
    """Plan a dense point (`cfg` already the point's run config) on its real data and dataset."""
    from synthray.data.real import load_classes
    from synthray.graph.grid import point_label
    from synthray.graph.labels import label_spec
    from synthray.graph.tasks import TASK

    task = point[TASK]
    listed = load_classes(str(cfg.data.classes))
    ids, names = list(listed["id"]), list(listed["name"])
    n_train, n_test = counts.get("train", synth.rows), counts.get("test", synth.rows // 10)
    splits = {"real_train": (Split(real, "train"), n_train), "real_test": (Split(real, "test"), n_test),
              "synthetic": (Split(synth, "data"), synth.rows)}
    labels = {k: label_spec(cfg, split, rows, ids, names) for k, (split, rows) in splits.items()}
    classes = target_classes(labels["synthetic"], real.classes)
    where = f"{point['generator']}/{point['prompt_style']}"
    model = point["arch"]
    synth_model = dense_model_spec(cfg, task, splits["synthetic"][0], labels["synthetic"], classes,
                                   f"{model} on {where}", synth.rows)
    real_model = dense_model_spec(cfg, task, splits["real_train"][0], labels["real_train"], classes,
                                  f"{model} on real", n_train)
    evaluations = {
        "synth_to_real": dense_eval_spec(cfg, synth_model, splits["real_test"][0], labels["real_test"], n_test),
        "real_to_synth": dense_eval_spec(cfg, real_model, splits["synthetic"][0], labels["synthetic"], synth.rows),
        "real_to_real": dense_eval_spec(cfg, real_model, splits["real_test"][0], labels["real_test"], n_test)}
    result = ResultSpec(point=dict(point), arch=synth_model.model, synthetic=synth, real=real,
                        training={"recipe": synth_model.recipe, "numerics": synth_model.numerics},
                        probe=probe.identity,
                        metrics={"labels": labels["synthetic"].settings}, name=point_label(point))
    return DensePlan(point, cfg, task, probe, table, real, synth.captions, synth, labels, synth_model, real_model,
                     evaluations, result, len(classes))
