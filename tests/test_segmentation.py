"""Segmentation building blocks (synthray.training.segmentation) on the real tiny torchvision DeepLabV3, no mocks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from synthray.core.registry import SynthrayError
from synthray.labels.segmenter import mask_png
from synthray.training import segmentation as seg

SMALL = {**seg.SEGMENTATION_RECIPE, "base_size": 26, "crop_size": 24}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def blobs(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n normalised images (n, 3, size, size), each dark with one bright square of class 1 or 2 (red or green)."""
    rng = np.random.default_rng(seed)
    images, targets = np.zeros((n, size, size, 3), np.uint8), np.zeros((n, size, size), np.int64)
    for i in range(n):
        top, left, cls = *rng.integers(0, size // 2, 2), 1 + i % 2
        images[i, top : top + size // 2, left : left + size // 2, cls - 1] = 255
        targets[i, top : top + size // 2, left : left + size // 2] = cls
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(seg.SEGMENTATION_RECIPE[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std, torch.from_numpy(targets)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loss_goes_down_on_blobs():
    x, y = blobs(4)
    model = seg.build_segmenter("tiny-deeplabv3", 3)
    opt = seg.make_optimizer(model)
    losses = seg.train_steps(model, opt, [(x, y)] * 20, "cpu")
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


def test_same_seed_same_weights_and_exact_resume():
    x, y = blobs(4)
    batches = [(x[:2], y[:2]), (x[2:], y[2:])] * 3
    total = 10  # the schedule runs past the batches, so the lr changes every step

    def run(seed: int = 0):
        model = seg.build_segmenter("tiny-deeplabv3", 3)
        opt = seg.make_optimizer(model)
        return model, opt, seg.train_steps(model, opt, batches, "cpu", total_iterations=total, seed=seed)

    model, _, losses = run()
    again, _, losses_again = run()
    assert losses == losses_again
    assert_same(weights(model), weights(again))
    other, _, _ = run(seed=1)  # dropout draws depend on the seed
    assert not all(torch.equal(a, b) for a, b in zip(weights(model).values(), weights(other).values()))

    first = seg.build_segmenter("tiny-deeplabv3", 3)
    opt = seg.make_optimizer(first)
    head = seg.train_steps(first, opt, batches[:3], "cpu", total_iterations=total)
    buf = io.BytesIO()
    torch.save(seg.state(first, opt, 3), buf)
    seg.train_steps(first, opt, batches[3:4], "cpu", total_iterations=total, start=3)  # must not leak into the saved state
    buf.seek(0)
    fresh = seg.build_segmenter("tiny-deeplabv3", 3, seed=7)  # other initial weights, all overwritten by restore
    fresh_opt = seg.make_optimizer(fresh)
    start = seg.restore(fresh, fresh_opt, torch.load(buf, weights_only=True))
    tail = seg.train_steps(fresh, fresh_opt, batches[start:], "cpu", total_iterations=total, start=start)
    assert start == 3 and head + tail == losses
    assert_same(weights(fresh), weights(model))


def _row(label, masks, height=6, width=8):
    return {"label": label, "n": len(masks), "height": height, "width": width, "masks": [mask_png(m) for m in masks],
            "boxes": [[0.0, 0.0, 1.0, 1.0]] * len(masks), "scores": [0.9] * len(masks)}


def test_class_map_hand_made_rows():
    index = {"n01443537": 0, "n01629819": 1}
    a, b = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    a[1:3, 1:4] = True
    b[2:5, 3:7] = True  # overlaps a at (2, 3)
    out = seg.class_map(_row("n01629819", [a, b]), index, 51)
    expected = np.where(a | b, 2, 0)
    assert out.dtype == np.int64 and out.shape == (6, 8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(seg.class_map(_row("n01443537", [a]), index, 51), np.where(a, 1, 0))
    np.testing.assert_array_equal(seg.class_map(_row("n01443537", []), index, 51), np.zeros((6, 8), np.int64))
    assert seg.class_map(_row(1, [b]), {"1": 4}, 51).max() == 5  # labels as ints match ids stored as text
    with pytest.raises(SynthrayError, match="not in the class subset"):
        seg.class_map(_row("n09999999", [a]), index, 51)
    with pytest.raises(SynthrayError, match="outside"):
        seg.class_map(_row("n01629819", [a]), index, 2)
    with pytest.raises(SynthrayError, match="n=2"):
        seg.class_map({**_row("n01443537", [a]), "n": 2}, index, 51)


def _pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (40, 60, 3), dtype=np.uint8)
    target = np.zeros((40, 60), np.int64)
    target[10:30, 5:25] = 3
    image[10:30, 5:25, 0] = 250  # the class-3 pixels are red, so image and map can be checked to move together
    return image, target


def test_train_transform_deterministic_crop_and_aligned():
    image, target = _pair()
    a = seg.train_transform(image, target, np.random.default_rng(5), SMALL)
    b = seg.train_transform(image, target, np.random.default_rng(5), SMALL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 24, 24) and a[0].dtype == torch.float32
    assert a[1].shape == (24, 24) and a[1].dtype == torch.int64
    red = 1.0  # normalised red: the blob's 250 gives 2.16, the background's < 60 gives < -1.09
    padded = 0
    for s in range(20):
        x, y = seg.train_transform(image, target, np.random.default_rng(s), SMALL)
        assert set(y.unique().tolist()) <= {0, 3, 255}
        padded += int((y == 255).any())
        assert (x[0][y == 255] == (0 - 0.485) / 0.229).all()  # padding is image 0 under the ignored target
        inner = torch.nn.functional.max_pool2d((y != 3).float()[None, None], 3, 1, 1)[0, 0] == 0  # away from blob edges
        if inner.any():
            assert (x[0][inner] > red).all()
    assert padded  # sizes down to 0.5 x 26 = 13 < 24 happen, and get padded with 255


def test_val_transform_matches_torchvision():
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    image, target = _pair()
    x, y = seg.val_transform(image, target, SMALL)
    assert x.shape == (3, 26, 39) and y.shape == (26, 39)  # shorter side 26, longer int(26 * 60 / 40)
    ref = F.normalize(F.pil_to_tensor(F.resize(Image.fromarray(image), 26)).float() / 255, SMALL["mean"], SMALL["std"])
    ref_t = F.pil_to_tensor(F.resize(Image.fromarray(target.astype(np.uint8)), 26, interpolation=InterpolationMode.NEAREST))[0]
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)
    assert torch.equal(y, ref_t.long())


def test_lr_at_matches_study_schedule():
    total, lr = 50, seg.SEGMENTATION_RECIPE["lr"]
    assert seg.lr_at(0, total) == lr
    assert seg.lr_at(25, total) == pytest.approx(lr * 0.5**0.9)
    assert seg.lr_at(total, total) == 0.0 and seg.lr_at(total + 3, total) == 0.0
    # torch's PolynomialLR, stepped once per iteration after the optimizer step, as segmentation/train.py does
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=0.9)
    for t in range(total + 1):
        assert seg.lr_at(t, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), t
        opt.step()
        sched.step()
    with pytest.raises(SynthrayError, match="warmup"):
        seg.lr_at(0, total, {**seg.SEGMENTATION_RECIPE, "warmup_epochs": 1})


def test_optimizer_groups_and_scheduled_lrs():
    model = seg.build_segmenter("tiny-deeplabv3", 3)
    opt = seg.make_optimizer(model)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.02, 0.2])
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    x, y = blobs(2)
    seg.train_steps(model, opt, [(x, y)], "cpu", start=5, total_iterations=10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02 * 0.5**0.9, 0.02 * 0.5**0.9, 0.2 * 0.5**0.9])


def test_predict_shapes():
    model = seg.build_segmenter("tiny-deeplabv3", 5)
    out = seg.predict(model, torch.randn(2, 3, 32, 40))
    assert out.shape == (2, 32, 40) and out.dtype == torch.int64 and 0 <= out.min() and out.max() < 5
    assert not model.training


@pytest.mark.slow
def test_deeplabv3_resnet50_builds_offline_with_aux_head(tmp_path):
    from torchvision.models import resnet50
    from torchvision.models.segmentation.fcn import FCNHead

    model = seg.build_segmenter("deeplabv3_resnet50", 51)
    assert isinstance(model.aux_classifier, FCNHead)
    assert model.classifier[-1].out_channels == 51 and model.aux_classifier[-1].out_channels == 51
    assert len(seg.make_optimizer(model).param_groups) == 3
    # The study's backbone is torchvision's ImageNet ResNet-50; a resnet50 state dict (fc included) loads as is.
    donor = resnet50()
    torch.save(donor.state_dict(), tmp_path / "resnet50.pt")
    loaded = seg.build_segmenter("deeplabv3_resnet50", 51, backbone_weights=str(tmp_path / "resnet50.pt"))
    assert torch.equal(loaded.backbone.layer4[2].conv3.weight, donor.layer4[2].conv3.weight)
    assert torch.equal(loaded.backbone.bn1.running_var, donor.bn1.running_var)


def test_backbone_weights_from_a_local_file(tmp_path):
    donor = seg.build_segmenter("tiny-deeplabv3", 3, seed=3)
    path = tmp_path / "backbone.pt"
    torch.save({**donor.backbone.state_dict(), "fc.weight": torch.zeros(2, 2)}, path)  # a classifier's fc is dropped
    model = seg.build_segmenter("tiny-deeplabv3", 3, backbone_weights=str(path))
    assert_same(weights(model.backbone), weights(donor.backbone))
    assert not torch.equal(model.classifier[-1].weight, donor.classifier[-1].weight)  # heads stay random
    torch.save({"conv1.0.weight": torch.zeros(1)}, path)
    with pytest.raises(SynthrayError, match="do not fit tiny-deeplabv3"):
        seg.build_segmenter("tiny-deeplabv3", 3, backbone_weights=str(path))
    with pytest.raises(SynthrayError, match="did you mean tiny-deeplabv3"):
        seg.build_segmenter("tiny_deeplabv3", 3)
