"""The label stage's spec, read from the config (`labels`): pseudo-labels of one dataset split from a promptable
segmenter (SAM 3), each image prompted with its class's text. The dense tasks (detection, segmentation) train and
are scored on them, on real and synthetic images alike, since ImageNet has no boxes or masks for most images.

The study (`labelling/run_sam3.py`, `object_detection/import_ds.py`, `segmentation/import_ds.py`): SAM 3, the
class's coarse label as the prompt (`labelling/class_labels/tiny_imagenet.json`, shipped here as the class list
`tiny-imagenet-200-coarse`), score and mask thresholds 0.3, on the first 50 class ids in sorted order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from synthray.core.registry import SynthrayError
from synthray.graph.resources import Resources, Work, placed
from synthray.graph.specs import Json, Spec, Split, run_field

NAMES = "names"  # labels.prompts: each class's own name in data.classes


@dataclass(frozen=True)
class LabelSpec(Spec):
    """Boxes, instance masks and scores for every image of one split whose class is labelled
    (`labels/stage.py`). `settings`: the segmenter's identity (model, thresholds, dtype, the device's numerics) and
    `prompts`, {label index as text: prompt}; rows of other classes are left out of the artifact."""

    kind: ClassVar[str] = "labels"
    source: Split
    settings: Json
    rows: int = run_field(0)
    resources_: Resources = run_field(Resources())
    pool: Json = run_field(None)   # the labels section: device, actors, GPUs per actor

    def identity(self, legacy: bool = False) -> Json:
        return {"schema": 1, **self.settings, "source": self.source.ref_for(legacy)}

    def label(self) -> str:
        return f"labels of {self.source.ref}"

    def work(self) -> Work:
        return Work("label", "segmenter", self.rows)

    def check(self) -> None:
        from synthray.labels.segmenter import check_spec

        check_spec(segmenter_spec(self, model="unchecked"))


def segmenter_spec(spec: LabelSpec, model: str) -> dict[str, Any]:
    """The `labels.segmenter.PromptSegmenter` spec of `spec`, its model loaded from the folder `model`."""
    s = spec.settings
    return {"model": model, "dtype": s["dtype"], "threshold": s["threshold"], "mask_threshold": s["mask_threshold"],
            "prompts": s["prompts"]}


def labelled_classes(section: Any, class_ids: list[str]) -> list[int]:
    """The label indices the label stage covers: `labels.classes` first class ids in sorted order (the study's
    importers: `sorted(...)[:50]`), or every class when null."""
    limit = section.get("classes")
    if limit is None:
        return list(range(len(class_ids)))
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SynthrayError(f"labels.classes must be a whole number >= 1 or null (every class); got {limit!r}")
    chosen = set(sorted(class_ids)[:limit])
    return [i for i, cid in enumerate(class_ids) if cid in chosen]


def label_prompts(section: Any, class_ids: list[str], names: list[str]) -> dict[str, str]:
    """{label index as text: prompt} for the labelled classes: `labels.prompts` is `names` (data.classes' own
    names) or a class list (shipped name or CSV, columns id,name) whose name is each id's prompt."""
    chosen = labelled_classes(section, class_ids)
    source = str(section.get("prompts", NAMES))
    if source == NAMES:
        table = dict(zip(class_ids, names))
    else:
        from synthray.data.real import load_classes

        listed = load_classes(source)
        table = dict(zip(listed["id"], listed["name"]))
        missing = [class_ids[i] for i in chosen if class_ids[i] not in table]
        if missing:
            raise SynthrayError(f"labels.prompts={source} has no prompt for class {missing[0]} ({len(missing)} of the "
                                f"{len(chosen)} labelled classes missing); use labels.prompts=names or a list covering data.classes")
    return {str(i): str(table[class_ids[i]]) for i in chosen}


def label_spec(cfg: Any, source: Split, rows: int, class_ids: list[str], names: list[str]) -> LabelSpec:
    """The labels of `source` (a split of `rows` rows) under the config's `labels` section."""
    from omegaconf import OmegaConf

    from synthray.core.devices import check_device_name
    from synthray.core.models import model_identity

    section = cfg.labels
    device = str(section.device)
    check_device_name("labels.device", device)
    settings = {"model": model_identity(str(section.model)), "threshold": float(section.threshold),
                "mask_threshold": float(section.mask_threshold), "dtype": str(section.dtype),
                # CUDA kernels and half precision on a GPU move scores near the threshold: the device is in the key
                "device": device, "prompts": label_prompts(section, class_ids, names)}
    resources = placed(cfg.placement, device, max(1, int(section.num_actors)), float(section.gpus_per_actor),
                       float(section.get("gpu_memory_gb") or 0), "labels (segmenter)")
    return LabelSpec(source=source, settings=settings, rows=rows, resources_=resources,
                     pool=OmegaConf.to_container(section, resolve=True))
