"""synthray.metrics.dense against independent computations: pycocotools' COCO/COCOeval called here on COCO dicts
built here (through COCO.loadRes, summarize() and per-class runs, not the module's path), cases whose answer is
known by hand, and IoU by numpy set logic on pixel coordinates."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from synthray.metrics.dense import BoxMAP, SegmentationIoU

# --- detection ------------------------------------------------------------------------------------------------

# Three images, classes 0..2. Class 0: a near match (.9), a loose match, a false positive ranked between them and a
# missed box; class 1: one good match, one box matched at IoU ~0.6 only; class 2: detections, no ground truth.
# Image 3 has no ground truth at all; its detection is a false positive of class 0.
GT = [
    {"boxes": [[10, 10, 50, 50], [60, 60, 100, 120], [5, 70, 30, 95]], "labels": [0, 0, 1]},
    {"boxes": [[0, 0, 40, 30], [50, 10, 90, 60]], "labels": [1, 0]},
    {"boxes": [], "labels": []},
]
DT = [
    {"boxes": [[11, 11, 50, 52], [62, 58, 104, 126], [120, 120, 140, 150], [5, 72, 30, 96]],
     "scores": [0.95, 0.55, 0.7, 0.8], "labels": [0, 0, 0, 1]},
    {"boxes": [[0, 0, 40, 20], [0, 0, 45, 35], [20, 20, 60, 60]], "scores": [0.9, 0.4, 0.3], "labels": [1, 2, 2]},
    {"boxes": [[10, 10, 30, 30]], "scores": [0.6], "labels": [0]},
]


def _tensors(items: list[dict]) -> list[dict]:
    return [{k: torch.tensor(v, dtype=torch.int64 if k == "labels" else torch.float32) for k, v in d.items()} for d in items]


def _pycocotools(gt: list[dict], dt: list[dict], cat_ids: list[int]) -> tuple[float, float]:
    """COCO stats[0] (mAP@[.5:.95]) and stats[1] (mAP@.5) as pycocotools' summarize() prints them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    dataset = {"images": [{"id": 100 + i} for i in range(len(gt))], "categories": [{"id": c} for c in cat_ids],
               "annotations": [{"id": 1 + len(gt) * 10 * i + j, "image_id": 100 + i, "category_id": lab, "bbox": xywh(b),
                                "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0}
                               for i, g in enumerate(gt) for j, (b, lab) in enumerate(zip(g["boxes"], g["labels"]))]}
    results = [{"image_id": 100 + i, "category_id": lab, "bbox": xywh(b), "score": s}
               for i, d in enumerate(dt) for b, s, lab in zip(d["boxes"], d["scores"], d["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def _nan_or(x: float) -> float:
    return float("nan") if x == -1 else x  # COCO reports "no ground truth" as -1


def test_box_map_equals_pycocotools_on_a_hand_made_case():
    out = BoxMAP(num_classes=3)
    out.update(_tensors(DT), _tensors(GT))
    r = out.compute()
    want = _pycocotools(GT, DT, [0, 1, 2])
    assert r["map"] == pytest.approx(want[0], abs=1e-12) and r["map_50"] == pytest.approx(want[1], abs=1e-12)
    assert 0 < r["map"] < r["map_50"] < 1  # a case that is neither trivial nor saturated
    assert list(r["map_per_class"]) == [0, 1, 2] and all(type(c) is int for c in r["map_per_class"])
    for c in (0, 1, 2):
        m, m50 = (_nan_or(v) for v in _pycocotools(GT, DT, [c]))
        got = r["map_per_class"][c], r["map_50_per_class"][c]
        assert (math.isnan(got[0]) and math.isnan(m)) or got[0] == pytest.approx(m, abs=1e-12), c
        assert (math.isnan(got[1]) and math.isnan(m50)) or got[1] == pytest.approx(m50, abs=1e-12), c
    # Class 2 has detections but no ground truth: NaN, and the mean is over classes 0 and 1 only.
    assert math.isnan(r["map_per_class"][2]) and math.isnan(r["map_50_per_class"][2])
    assert r["map"] == pytest.approx((r["map_per_class"][0] + r["map_per_class"][1]) / 2, abs=1e-12)


def test_perfect_predictions_give_one():
    preds = [{**g, "scores": [0.9] * len(g["labels"])} for g in GT]
    m = BoxMAP()
    m.update(_tensors(preds), _tensors(GT))
    r = m.compute()
    assert r["map"] == pytest.approx(1.0, abs=1e-12) and r["map_50"] == pytest.approx(1.0, abs=1e-12)
    assert r["map_per_class"] == r["map_50_per_class"] == pytest.approx({0: 1.0, 1: 1.0}, abs=1e-12)


def test_one_class_perfect_the_other_all_false_positives():
    gt = [{"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": [0, 1]}]
    dt = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [70, 0, 80, 10]], "scores": [0.9, 0.8, 0.99], "labels": [0, 1, 1]}]
    m = BoxMAP(num_classes=3)  # class 2 never occurs: NaN, not 0, and out of the mean
    m.update(_tensors(dt), _tensors(gt))
    r = m.compute()
    one = pytest.approx(1.0, abs=1e-12)  # COCOeval's precision is tp / (tp + fp + eps): one box gives 1 - 2e-16
    assert r["map_per_class"][0] == one and r["map_50_per_class"][0] == one
    assert r["map_per_class"][1] == r["map_50_per_class"][1] == 0.0
    assert math.isnan(r["map_per_class"][2]) and math.isnan(r["map_50_per_class"][2])
    assert r["map"] == pytest.approx(0.5, abs=1e-12) and r["map_50"] == pytest.approx(0.5, abs=1e-12)


def test_no_detections_and_batching():
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}] * len(GT)
    m = BoxMAP()
    m.update(empty, _tensors(GT))
    assert m.compute()["map"] == 0.0 and m.compute()["map_per_class"] == {0: 0.0, 1: 0.0}
    # Image by image, or split across two merged accumulators, gives the numbers of one update.
    whole, parts, a, b = BoxMAP(3), BoxMAP(3), BoxMAP(3), BoxMAP(3)
    whole.update(_tensors(DT), _tensors(GT))
    for p, t in zip(_tensors(DT), _tensors(GT)):
        parts.update([p], [t])
    a.update(_tensors(DT[:1]), _tensors(GT[:1]))
    b.update(_tensors(DT[1:]), _tensors(GT[1:]))
    for other in (parts.compute(), a.merge(b).compute()):
        assert str(other) == str(whole.compute())  # str: NaN == NaN


def test_box_map_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must be in"):
        BoxMAP(num_classes=2).update(_tensors(DT), _tensors(GT))  # DT has label 2
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        BoxMAP().update([{"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.zeros(2)}], _tensors(GT[:1]))


# --- segmentation ---------------------------------------------------------------------------------------------

def _iou_by_sets(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int, ignore: int = 255) -> list[float]:
    """IoU per class from sets of (image, row, col) coordinates; NaN where a class is in neither."""
    out = []
    for c in range(num_classes):
        p = {(i, y, x) for i, (pr, tg) in enumerate(zip(preds, targets)) for y, x in zip(*np.nonzero((pr == c) & (tg != ignore)))}
        t = {(i, y, x) for i, tg in enumerate(targets) for y, x in zip(*np.nonzero(tg == c))}
        out.append(len(p & t) / len(p | t) if p | t else float("nan"))
    return out


def test_iou_equals_set_logic_and_ignores_255():
    target = np.array([[0, 0, 1, 1, 255],
                       [0, 1, 1, 1, 255],
                       [0, 0, 0, 2, 2],
                       [255, 0, 0, 2, 2]])
    pred = np.array([[0, 1, 1, 1, 2],
                     [0, 0, 1, 1, 2],
                     [0, 0, 2, 2, 2],
                     [1, 0, 0, 0, 2]])
    m = SegmentationIoU(num_classes=4)
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    r = m.compute()
    want = _iou_by_sets([pred], [target], 4)
    assert want[:3] == [6 / 10, 4 / 6, 3 / 5]  # counted by hand as a check on the checker
    np.testing.assert_allclose(r["iou_per_class"][:3].numpy(), want[:3], rtol=0, atol=1e-15)
    assert math.isnan(r["iou_per_class"][3]) and math.isnan(want[3])  # class 3 in neither map
    assert r["miou"] == pytest.approx(np.nanmean(want), abs=1e-15)
    assert r["pixel_acc"] == pytest.approx(13 / 17)
    # The study's arithmetic counts the absent class as 0.
    assert m.compute(empty="zero")["miou"] == pytest.approx(sum(want[:3]) / 4)
    # What is predicted under an ignored pixel changes nothing.
    other = pred.copy()
    other[target == 255] = 3
    m2 = SegmentationIoU(num_classes=4)
    m2.update(other, target)
    assert torch.equal(m2.confmat, m.confmat)


def test_streaming_in_any_batching_gives_the_same_numbers():
    g = np.random.default_rng(0)
    targets = g.integers(0, 3, size=(6, 17, 23))
    targets[g.random(targets.shape) < 0.1] = 255
    preds = np.where(g.random(targets.shape) < 0.6, np.where(targets == 255, 0, targets), g.integers(0, 3, size=targets.shape))
    want = _iou_by_sets(list(preds), list(targets), 3)
    runs = []
    for chunks in ([6], [1] * 6, [2, 3, 1], [4, 2]):
        m, start = SegmentationIoU(3), 0
        for n in chunks:
            m.update(torch.from_numpy(preds[start:start + n]), torch.from_numpy(targets[start:start + n]))
            start += n
        runs.append(m)
    merged = SegmentationIoU(3)
    for p, t in zip(preds, targets):
        part = SegmentationIoU(3)
        part.update(p, t)
        merged.merge(part)
    runs.append(merged)
    for m in runs:
        assert torch.equal(m.confmat, runs[0].confmat)
        np.testing.assert_allclose(m.compute()["iou_per_class"].numpy(), want, rtol=0, atol=1e-12)
        assert m.compute()["miou"] == pytest.approx(float(np.mean(want)), abs=1e-12)


def test_segmentation_rejects_bad_input():
    m = SegmentationIoU(3)
    with pytest.raises(ValueError, match="labels must be in"):
        m.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="labels must be in"):
        m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))  # neither a class nor the ignore index
    with pytest.raises(ValueError, match="same shape"):
        m.update(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        m.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="is a class id"):
        SegmentationIoU(3, ignore_index=0)
    assert torch.equal(m.confmat, torch.zeros(3, 3, dtype=torch.int64))  # a rejected update adds nothing
