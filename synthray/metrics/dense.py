"""Dense-task metrics: COCO box mAP for detection, and IoU per class for semantic segmentation.

Both are streaming: `update` once per batch, `compute` at the end, `merge` to combine the accumulators of
several workers. Batching never changes the numbers.

Box mAP uses pycocotools' `COCOeval` directly (not torchmetrics, which wraps the same code):
- the study's detection evaluation (torchvision's `references/detection`, `engine.evaluate`) is pycocotools'
  COCOeval, so this is the same library and the same defaults (IoU .50:.05:.95, 101 recall points,
  100 detections per image, area "all");
- one small dependency with wheels, where torchmetrics would add itself and lightning-utilities;
- COCOeval's precision array gives AP per class at every IoU threshold, so per-class mAP@.5 needs no second
  pass (torchmetrics' `class_metrics` gives per-class AP at .50:.95 only).

Segmentation IoU is a direct count on a confusion matrix (`torch.bincount`), as the study's
`segmentation/train.py` does with torchvision's `utils.ConfusionMatrix`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _rows(x: Array, name: str, width: int | None, dtype: type) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=dtype)
    if width is None:
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    elif a.size == 0:
        a = a.reshape(0, width)  # an image with nothing in it may come as shape (0,)
    elif a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must be (N, {width}), got shape {a.shape}")
    return a


class BoxMAP:
    """COCO box mAP@[.5:.95] and mAP@.5, overall and per class.

    update(preds, targets), one dict per image:
      preds[i]   = {"boxes": (N, 4) float xyxy pixels, "scores": (N,) float, "labels": (N,) int}
      targets[i] = {"boxes": (M, 4) float xyxy pixels, "labels": (M,) int}
    Tensors or arrays; N or M may be 0 (an image with no detection or no object).

    compute() -> {"map", "map_50": float, "map_per_class", "map_50_per_class": {class id: float}}.
    A class with no ground-truth box in any image has AP NaN (COCO's -1) and is left out of the means,
    as COCO does; a class with ground truth and no detection has AP 0. `map` is NaN when no class has
    ground truth. Class ids are `range(num_classes)` when given, else every label seen.

    Boxes are converted to COCO's xywh here; box area stands in for COCO's mask area (it only matters
    for the small/medium/large ranges, which are not reported).
    """

    def __init__(self, num_classes: int | None = None, max_dets: int = 100) -> None:
        self.num_classes = num_classes
        self.max_dets = max_dets
        self._preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._targets: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, preds: Sequence[Mapping[str, Array]], targets: Sequence[Mapping[str, Array]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"preds and targets must list the same images, got {len(preds)} and {len(targets)}")
        for p, t in zip(preds, targets):
            boxes, scores = _rows(p["boxes"], "pred boxes", 4, float), _rows(p["scores"], "scores", None, float)
            labels = _rows(p["labels"], "pred labels", None, np.int64)
            tboxes, tlabels = _rows(t["boxes"], "target boxes", 4, float), _rows(t["labels"], "target labels", None, np.int64)
            if not len(boxes) == len(scores) == len(labels) or len(tboxes) != len(tlabels):
                raise ValueError("boxes, scores and labels of one image must have the same length")
            for name, lab in (("pred", labels), ("target", tlabels)):
                if lab.size and (lab.min() < 0 or (self.num_classes is not None and lab.max() >= self.num_classes)):
                    raise ValueError(f"{name} labels must be in [0, {self.num_classes}), got {sorted(set(lab.tolist()))}")
            self._preds.append((boxes, scores, labels))
            self._targets.append((tboxes, tlabels))

    def merge(self, other: BoxMAP) -> BoxMAP:
        """Add another accumulator's images to this one (e.g. from another worker); returns self."""
        self._preds += other._preds
        self._targets += other._targets
        return self

    def compute(self) -> dict:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self._targets:
            raise ValueError("BoxMAP.compute() before any update()")
        if self.num_classes is not None:
            classes = list(range(self.num_classes))
        else:
            seen = [lab for _, lab in self._targets] + [lab for _, _, lab in self._preds]
            classes = sorted(set(np.concatenate(seen).tolist()))
        images = [{"id": i + 1} for i in range(len(self._targets))]
        categories = [{"id": c} for c in classes]

        def anns(per_image, with_score: bool) -> list[dict]:
            out = []
            for image_id, (boxes, *rest) in enumerate(per_image, start=1):
                labels = rest[-1]
                for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
                    w, h = x2 - x1, y2 - y1
                    # ids start at 1: COCOeval marks "unmatched" with id 0.
                    a = {"id": len(out) + 1, "image_id": image_id, "category_id": int(labels[j]), "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": 0}
                    if with_score:
                        a["score"] = float(rest[0][j])
                    out.append(a)
            return out

        # COCO() and COCOeval print progress; metrics print nothing. The detections are indexed like the ground
        # truth, not through COCO.loadRes, which fails on an empty list (a model that detects nothing).
        with contextlib.redirect_stdout(io.StringIO()):
            gt, dt = COCO(), COCO()
            gt.dataset = {"images": images, "categories": categories, "annotations": anns(self._targets, False)}
            dt.dataset = {"images": images, "categories": categories, "annotations": anns(self._preds, True)}
            gt.createIndex()
            dt.createIndex()
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.catIds = classes
            ev.params.maxDets = [1, 10, self.max_dets]
            ev.evaluate()
            ev.accumulate()
        # precision: (IoU thresholds T, recall points R, classes K, area ranges A, max dets M); -1 = no ground truth.
        prec = ev.eval["precision"][:, :, :, 0, -1]  # area "all", max_dets
        t50 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.5))[0])

        def mean(p: np.ndarray) -> float:  # COCOeval.summarize's mean over entries > -1
            valid = p[p > -1]
            return float(valid.mean()) if valid.size else float("nan")

        return {
            "map": mean(prec),
            "map_50": mean(prec[t50]),
            # COCOeval sorts catIds (np.unique), so the K axis follows the sorted ids.
            "map_per_class": {int(c): mean(prec[:, :, k]) for k, c in enumerate(ev.params.catIds)},
            "map_50_per_class": {int(c): mean(prec[t50, :, k]) for k, c in enumerate(ev.params.catIds)},
        }


class SegmentationIoU:
    """Streaming IoU per class and mIoU for semantic segmentation, from a (num_classes, num_classes)
    confusion matrix `confmat[target, pred]` of int64 pixel counts.

    update(pred, target): label maps of the same shape, (H, W) or (B, H, W), int, tensors or arrays.
    Target pixels equal to `ignore_index` are skipped (the study's crops pad the target with 255, and its
    loss uses ignore_index=255); any other label outside [0, num_classes) raises, nothing is silently dropped.

    compute() -> {"miou": float, "iou_per_class": (num_classes,) float64 tensor, "pixel_acc": float}.
    As in the study (segmentation/train.py, `segmentation_metrics`), background is class 0 and is an
    ordinary class: it is counted in the mean (the study has 51 classes, background + 50).
    IoU = TP / (TP + FP + FN). A class absent from both prediction and target has no IoU:
    - empty="nan" (default): NaN, left out of the mean;
    - empty="zero": 0 and counted, the study's arithmetic (its TP / (TP + FP + FN + 1e-6) gives 0 there).
    The two agree when every class occurs in the evaluated set.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class id; use one outside [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confmat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Array, target: Array) -> None:
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer label maps (take argmax over the class dim first)")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        n = self.num_classes
        for name, lab in (("target", target), ("pred", pred)):
            if lab.numel() and (lab.min() < 0 or lab.max() >= n):
                raise ValueError(f"{name} labels must be in [0, {n}) or the ignore index {self.ignore_index}, "
                                 f"got {lab.unique().tolist()[:10]}")
        # Counting on the input's device keeps a GPU evaluation on the GPU; only n*n counts come back.
        self.confmat += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n).cpu()

    def merge(self, other: SegmentationIoU) -> SegmentationIoU:
        """Add another accumulator's counts (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.confmat += other.confmat
        return self

    def compute(self, empty: Literal["nan", "zero"] = "nan") -> dict:
        if empty not in ("nan", "zero"):
            raise ValueError(f"empty must be 'nan' or 'zero', got {empty!r}")
        cm = self.confmat.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp  # TP + FP + FN
        iou = torch.where(union > 0, tp / union.clamp(min=1), float("nan") if empty == "nan" else 0.0)
        total = cm.sum()
        return {
            "miou": float(iou.nanmean()) if (~iou.isnan()).any() else float("nan"),
            "iou_per_class": iou,
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        }
