"""The dense evaluation stage: a trained detector's or segmenter's predictions on one split, scored against that
split's pseudo-labels with the study's metrics (`metrics/dense.py`): COCO box mAP@[.5:.95] and mAP@.5 by pycocotools,
or IoU per class from a confusion matrix; each overall and per class.

An actor pool (`evaluation.device`, `gpus_per_actor`) runs over the split's shards, each actor loading the model
once. Detection writes per shard every image's detections (one image per forward pass, the study's batch of 1,
so padding never changes a box); segmentation writes per shard its confusion matrix at the study's evaluation size
(shorter side `base_size`). The scores are then computed from those shards and the labels.

Artifact layout: `<storage>/dense-evaluations/<key>/data/part-*.parquet`; `meta.json` holds rows and the metrics:
`map`, `map_50`, `map_per_class`, `map_50_per_class` (lists in target order, NaN where a class has no box), or
`miou`, `pixel_acc`, `iou_per_class` (background first).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from synthray.core.artifacts import Artifact, BuildDir, DatasetRef, Store, read_checked


def _eval_worker(weights: str, config: dict[str, Any], device: str) -> Callable[[dict], dict]:
    """In the actor: the model loaded once; work(task) -> the shard's detections, or its confusion matrix."""

    from synthray.core.devices import check_device
    from synthray.core.images import decode_array
    from synthray.core.safe_load import load_tensors
    from synthray.metrics.dense import SegmentationIoU
    from synthray.training import detection, segmentation
    from synthray.training.dense import build_dense_model, image_tensor, labelled_rows

    where = check_device(device)
    net = build_dense_model({**config, "backbone": False})
    net.load_state_dict(load_tensors(read_checked(weights), weights))
    net = net.eval().to(where)
    recipe, targets = config["recipe"], {int(k): v for k, v in config["targets"].items()}

    def work(task: dict[str, Any]) -> dict[str, list]:
        rows = labelled_rows(task["src"], task["labels"]).to_pylist()
        if config["task"] == "detection":
            out: dict[str, list] = {"id": [], "boxes": [], "scores": [], "classes": []}
            for r in rows:
                found = detection.predict(net, [image_tensor(r["image"])], device=where)[0]
                out["id"].append(r["id"])
                out["boxes"].append(found["boxes"].tolist())
                out["scores"].append(found["scores"].tolist())
                out["classes"].append(found["labels"].tolist())
            return out
        n = len(targets) + 1
        iou = SegmentationIoU(n, int(recipe["ignore_index"]))
        positions = {p: p for p in range(len(targets))}
        for r in rows:
            truth = segmentation.class_map({**r, "label": targets[int(r["label"])]}, positions, n)
            x, y = segmentation.val_transform(decode_array(r["image"], None), truth, recipe)
            iou.update(segmentation.predict(net, x[None]).cpu(), y[None])
        return {"id": [task["name"]], "images": [len(rows)], "confmat": [iou.confmat.reshape(-1).tolist()]}

    return work


def _nan_list(values: dict[int, float], ids: list[int]) -> list[float]:
    return [float(values.get(i, float("nan"))) for i in ids]


def score_detection(folder: str, pairs: list[tuple[str, str]], config: dict[str, Any]) -> dict[str, Any]:
    """Box mAP of the detections under `folder` against the pseudo-labels of `pairs` (image, labels shards)."""
    from synthray.core.images import read_shard, shard_files
    from synthray.metrics.dense import BoxMAP
    from synthray.training.dense import labelled_rows
    from synthray.training.detection import targets_from_labels

    recipe = config["recipe"]
    start, targets = int(recipe["label_start"]), {int(k): v for k, v in config["targets"].items()}
    label_map = {str(p): p + start for p in range(len(targets))}
    truth: dict[str, dict[str, Any]] = {}
    for images, labels in pairs:
        for r in labelled_rows(images, labels, with_image=False, with_masks=False).to_pylist():
            truth[r["id"]] = targets_from_labels([{**r, "label": targets[int(r["label"])]}], label_map, str(recipe["box_format"]))[0]
    metric = BoxMAP(num_classes=len(targets) + start)
    rows = 0
    for f in shard_files(folder):
        found = read_shard(f, ["id", "boxes", "scores", "classes"]).to_pydict()
        preds = [{"boxes": np.asarray(b, np.float32).reshape(-1, 4), "scores": np.asarray(s, np.float32), "labels": np.asarray(c, np.int64)}
                 for b, s, c in zip(found["boxes"], found["scores"], found["classes"])]
        metric.update(preds, [truth[i] for i in found["id"]])
        rows += len(preds)
    if rows == 0:
        raise RuntimeError(f"{folder}: no labelled rows to evaluate on")
    scores = metric.compute()
    ids = [p + start for p in range(len(targets))]
    return {"rows": rows, "map": scores["map"], "map_50": scores["map_50"],
            "map_per_class": _nan_list(scores["map_per_class"], ids), "map_50_per_class": _nan_list(scores["map_50_per_class"], ids)}


def score_segmentation(folder: str, config: dict[str, Any]) -> dict[str, Any]:
    """mIoU from the confusion matrices under `folder`, with the recipe's rule for classes in neither map."""
    import torch

    from synthray.core.images import read_shard, shard_files
    from synthray.metrics.dense import SegmentationIoU

    n = len(config["targets"]) + 1
    metric = SegmentationIoU(n, int(config["recipe"]["ignore_index"]))
    rows = 0
    for f in shard_files(folder):
        t = read_shard(f, ["images", "confmat"]).to_pydict()
        for images, flat in zip(t["images"], t["confmat"]):
            metric.confmat += torch.tensor(flat, dtype=torch.int64).reshape(n, n)
            rows += int(images)
    if rows == 0:
        raise RuntimeError(f"{folder}: no labelled rows to evaluate on")
    scores = metric.compute(empty=str(config["recipe"].get("absent_iou", "zero")))
    return {"rows": rows, "miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
            "iou_per_class": [float(v) for v in scores["iou_per_class"]]}


def evaluate_dense(spec: Any, model: Artifact, data: DatasetRef, labels: Artifact, store: Store) -> Artifact:
    """The dense evaluation stage: build (or reuse) `spec` (a `graph.dense.DenseEvalSpec`)."""
    from synthray.core.images import shard_rows
    from synthray.core.shards import Pool, map_shards, placements, record_shards
    from synthray.training.dense import shard_pairs, target_positions

    art = spec.artifact(store)
    m = spec.model
    config = {"task": m.task, "model": m.model["model"], "hub_cache": None, "targets": target_positions(m.classes),
              "recipe": dict(m.recipe)}

    def make(out: BuildDir) -> dict[str, Any]:
        pairs = shard_pairs(data.uri, labels.uri)
        tasks = [{"name": i.rsplit("/", 1)[1], "src": i, "labels": lab, "rows": shard_rows(lab)} for i, lab in pairs]
        pool = Pool.from_cfg(spec.pool, spec.resources().label_selector)
        factory = functools.partial(_eval_worker, model.file("model.pt"), config, pool.device)
        done = map_shards(tasks, factory, out.uri + "/data", what=f"evaluate {art.label}", pool=pool)
        record_shards(out, "data", done)
        folder = out.uri + "/data"
        scores = score_detection(folder, pairs, config) if m.task == "detection" else score_segmentation(folder, config)
        return {**scores, "task": m.task, "model": model.ref, "data": data.ref, "placement": placements(done)}

    return art.build(make)


def dense_report(evaluation: Artifact, prefix: str) -> dict[str, Any]:
    """`<prefix>_<metric>` and `<prefix>_<metric>_per_class` columns of a built dense evaluation."""
    from synthray.graph.tasks import task_record

    meta = evaluation.meta()
    out: dict[str, Any] = {f"{prefix}_{n}": meta[n] for n in task_record(meta["task"]).metrics}
    if meta["task"] == "detection":
        out.update({f"{prefix}_map_per_class": meta["map_per_class"], f"{prefix}_map_50_per_class": meta["map_50_per_class"]})
    else:
        out[f"{prefix}_iou_per_class"] = meta["iou_per_class"]
    return out
