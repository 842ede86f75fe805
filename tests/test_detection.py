"""Detection building blocks (synthray/training/detection.py) on torchvision's real Faster R-CNN, tiny and random."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from synthray.core.registry import SynthrayError
from synthray.training import detection as det

SIZE = 64


def rectangles(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """n dark (3, 64, 64) images, each with one bright rectangle, and its box as class 1."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        x0, y0 = torch.randint(0, 32, (2,), generator=g).tolist()
        w, h = torch.randint(16, 30, (2,), generator=g).tolist()
        x1, y1 = min(x0 + w, SIZE), min(y0 + h, SIZE)
        image = torch.full((3, SIZE, SIZE), 0.1)
        image[:, y0:y1, x0:x1] = 0.9
        images.append(image)
        targets.append({"boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), "labels": torch.tensor([1])})
    return images, targets


def tiny(seed: int = 0, lr: float = 0.02):
    model = det.build_detector("tiny-fasterrcnn", 2, seed=seed)
    return model, det.make_optimizer(model, {**det.DETECTION_RECIPE, "lr": lr})


def test_loss_goes_down_on_rectangles():
    images, targets = rectangles(3)  # 2 images are too few: the box loss climbs as the RPN finds positives
    det.seed_everything(0)
    model, optimizer = tiny()
    history = det.train_steps(model, optimizer, [(images, targets)] * 20, "cpu")
    assert len(history) == 20
    assert set(history[0]) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss"}
    assert history[0]["loss"] == pytest.approx(sum(v for k, v in history[0].items() if k != "loss"))
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < first - 0.05, (first, last)
    assert history[-1]["loss_objectness"] < history[0]["loss_objectness"] - 0.05


def test_exact_resume_is_bit_identical():
    images, targets = rectangles(2, seed=1)
    batches = [(images, targets)] * 6
    lrs = [det.lr_at(0, i, steps_per_epoch=6) for i in range(6)]  # inside the warm-up, so each step's lr differs

    det.seed_everything(3)
    straight, optimizer = tiny()
    det.train_steps(straight, optimizer, batches, "cpu", lrs=lrs)

    det.seed_everything(3)
    first, optimizer = tiny()
    det.train_steps(first, optimizer, batches[:3], "cpu", lrs=lrs[:3])
    buffer = io.BytesIO()
    torch.save(det.state(first, optimizer, epoch=0, step=3), buffer)
    det.train_steps(first, optimizer, batches[:1], "cpu")  # moves on after the save: the snapshot must not follow
    torch.manual_seed(12345)  # the RNG a new process would have
    resumed, optimizer = tiny(seed=7)
    buffer.seek(0)
    epoch, step = det.restore(resumed, optimizer, torch.load(buffer, weights_only=True))
    assert (epoch, step) == (0, 3)
    det.train_steps(resumed, optimizer, batches[step:], "cpu", lrs=lrs[step:])

    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = (det.build_detector("tiny-fasterrcnn", 3, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), before)
    wa, wb, wc = (m.backbone[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.roi_heads.box_predictor.cls_score.out_features == 3


def rows() -> list[dict]:
    return [
        {"boxes": [[10.0, 20.0, 30.0, 50.0]], "label": 7, "n": 1, "height": 100, "width": 80},
        {"boxes": [[50.0, 60.0, 70.0, 90.0], [-5.0, 3.0, 20.0, 10.0]], "label": 3, "n": 2, "height": 100, "width": 80},
        {"boxes": [], "label": 7, "n": 0, "height": 100, "width": 80},
        {"boxes": [[10.0, 10.0, 10.0, 20.0]], "label": 3, "n": 1, "height": 100, "width": 80},  # no width as xyxy
    ]


def test_targets_xyxy():
    label_map = det.make_label_map([7, 3])
    assert label_map == {"3": 1, "7": 2}  # sorted as import_ds.py, 0 kept for the background
    out = det.targets_from_labels(rows(), label_map)
    assert [t["boxes"].dtype for t in out] == [torch.float32] * 4
    assert [t["labels"].dtype for t in out] == [torch.int64] * 4
    assert out[0]["boxes"].tolist() == [[10, 20, 30, 50]] and out[0]["labels"].tolist() == [2]
    assert out[1]["boxes"].tolist() == [[50, 60, 70, 90], [0, 3, 20, 10]] and out[1]["labels"].tolist() == [1, 1]
    assert out[2]["boxes"].shape == (0, 4) and out[2]["labels"].shape == (0,)
    assert out[3]["boxes"].shape == (0, 4)  # dropped, as coco_utils.py's keep and torchvision's own check require


def test_targets_study_xywh_bug():
    out = det.targets_from_labels(rows(), det.make_label_map([3, 7]), box_format="study-xywh-bug")
    # (x0, y0, x1, y1) read as (x, y, w, h): (x0, y0, x0 + x1, y0 + y1), clamped to the 80 x 100 image
    assert out[0]["boxes"].tolist() == [[10, 20, 40, 70]]
    assert out[1]["boxes"].tolist() == [[50, 60, 80, 100], [0, 3, 20, 13]]
    assert out[2]["boxes"].shape == (0, 4)
    assert out[3]["boxes"].tolist() == [[10, 10, 20, 30]]  # the bug gives a zero-width box a width


def test_targets_from_a_dataframe_of_arrow_lists():
    frame = pd.DataFrame(rows()[:3])
    frame["boxes"] = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in frame["boxes"]]
    direct = det.targets_from_labels(rows()[:3], det.make_label_map([3, 7]))
    framed = det.targets_from_labels(frame, det.make_label_map([3, 7]))
    for a, b in zip(direct, framed):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_targets_refuse_bad_input():
    with pytest.raises(SynthrayError, match="box_format"):
        det.targets_from_labels(rows(), det.make_label_map([3, 7]), box_format="xywh")
    with pytest.raises(SynthrayError, match="not in the label map"):
        det.targets_from_labels(rows(), {"3": 1})
    with pytest.raises(SynthrayError, match="n=2"):
        det.targets_from_labels([{**rows()[0], "n": 2}], {"7": 1})


def test_study_keeps_for_training():
    r = rows()
    assert det.study_keeps_for_training(r[0]) and not det.study_keeps_for_training(r[2])
    tiny_box = {**r[0], "boxes": [[40.0, 40.0, 40.5, 60.0]]}  # 0.5 px wide: removed as xyxy, kept with the bug
    assert not det.study_keeps_for_training(tiny_box)
    assert det.study_keeps_for_training(tiny_box, "study-xywh-bug")


def test_hflip_mirrors_boxes():
    image = torch.zeros(3, 10, 20)
    image[:, 2:5, 1:4] = 1
    target = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 5.0]]), "labels": torch.tensor([1])}
    flipped, out = det.hflip(image, target, torch.Generator().manual_seed(0), prob=1.0)
    assert out["boxes"].tolist() == [[16, 2, 19, 5]]
    assert flipped[:, 2:5, 16:19].eq(1).all() and flipped.sum() == image.sum()
    same, kept = det.hflip(image, target, torch.Generator().manual_seed(0), prob=0.0)
    assert same is image and kept is target


def study_schedule(steps_per_epoch: int, epochs: int = 26) -> list[list[float]]:
    """The lr of each step as train.py and engine.py produce it, with torch's own schedulers."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.02, momentum=0.9, weight_decay=1e-4)
    multistep = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[16, 22], gamma=0.1)
    lrs = []
    for epoch in range(epochs):
        warmup = None
        if epoch == 0:
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / 1000, total_iters=min(1000, steps_per_epoch - 1))
        lrs.append([])
        for _ in range(steps_per_epoch):
            lrs[-1].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if warmup is not None:
                warmup.step()
        multistep.step()
    return lrs


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("steps_per_epoch", [5, 1200])
def test_lr_at_matches_the_study(steps_per_epoch):
    study = study_schedule(steps_per_epoch)
    for epoch in (0, 1, 15, 16, 21, 22, 25):
        for i in (0, 1, 3, 4, 999, 1000, 1199):
            if i < steps_per_epoch:
                assert det.lr_at(epoch, i, steps_per_epoch=steps_per_epoch) == pytest.approx(study[epoch][i], rel=1e-9), (epoch, i)
    assert det.lr_at(0, 0) == pytest.approx(0.02e-3)
    assert det.lr_at(0, 500) == pytest.approx(0.02 * (1e-3 + (1 - 1e-3) * 0.5))
    assert [det.lr_at(e, 0) for e in (1, 15, 16, 21, 22, 25)] == pytest.approx([0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002])
    assert det.lr_at(3, 0, batch_size=32) == pytest.approx(0.04)


def test_make_optimizer_is_the_study_sgd():
    model = det.build_detector("tiny-fasterrcnn", 2)
    optimizer = det.make_optimizer(model, batch_size=8)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.01, 0.9, 1e-4, False)


def test_predict_shapes_and_dtypes():
    model = det.build_detector("tiny-fasterrcnn", 3)
    images, _ = rectangles(2)
    images[1] = images[1][:, :, :48]  # a second size: each image's boxes come back in its own pixels
    for threshold in (0.0, 1.1):
        out = det.predict(model, images, score_threshold=threshold)
        assert len(out) == 2
        for result, image in zip(out, images):
            k = len(result["scores"])
            assert result["boxes"].shape == (k, 4) and result["labels"].shape == (k,)
            assert (result["boxes"].dtype, result["scores"].dtype, result["labels"].dtype) == (np.float32, np.float32, np.int64)
            assert (result["scores"] >= threshold).all() and np.all(np.diff(result["scores"]) <= 0)
            assert ((result["labels"] >= 1) & (result["labels"] <= 2)).all()
            assert (result["boxes"][:, 2] <= image.shape[-1]).all() and (result["boxes"][:, 3] <= image.shape[-2]).all()
        if threshold > 1:
            assert all(len(r["scores"]) == 0 for r in out)
    assert model.training is False


def test_resnet50_fpn_is_the_study_shape_without_download(tmp_path):
    from torchvision.ops import FrozenBatchNorm2d

    model = det.build_detector("fasterrcnn_resnet50_fpn", 51)
    assert model.roi_heads.box_predictor.cls_score.out_features == 51
    trainable = {name.split(".")[0] for name, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert len(trainable) == det.DETECTION_RECIPE["trainable_backbone_layers"] == 3
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    with pytest.raises(SynthrayError, match="resnet50-0676ba61.pth"):
        det.build_detector("fasterrcnn_resnet50_fpn", 51, backbone_weights=tmp_path)
    with pytest.raises(SynthrayError, match="did you mean"):
        det.build_detector("fasterrcnn_resnet50", 51)


def test_resnet50_backbone_weights_from_a_local_folder(tmp_path):
    from torchvision.models import resnet50

    weights = resnet50(weights=None).state_dict()
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()}
    torch.save(weights, tmp_path / "resnet50-0676ba61.pth")
    model = det.build_detector("fasterrcnn_resnet50_fpn", 51, backbone_weights=tmp_path)
    assert torch.equal(model.backbone.body.conv1.weight, weights["conv1.weight"])
    assert torch.equal(model.backbone.body.layer4[2].bn3.running_var, weights["layer4.2.bn3.running_var"])
