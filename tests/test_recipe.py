"""The recipe's schedule, batch geometry and batched augmentations, checked against torchvision and closed forms."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from synthray.config import compose
from synthray.core.registry import SynthrayError
from synthray.sweep.plan import validate
from synthray.training import augment
from synthray.training.recipe import batch_geometry, lr_at, steps_per_epoch


def test_paper_recipe_numbers_come_from_its_config_file():
    r = compose(["recipe=paper"]).recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.epochs) == ("adam", 1e-3, 0.0, 1024, 80)
    # The study's --start_lr 1e-5 and --minimum_lr 1e-8 are factors on the learning rate.
    assert (r.warmup_epochs, r.warmup_start_lr, r.min_lr, r.grad_clip, r.cutmix.prob) == (5, 1e-8, 1e-11, 1.0, 1.0)
    assert r.lr_schedule == "paper"
    assert r.train_transform.random_resized_crop.size == 224 and r.train_transform.color_jitter == [0.3, 0.3, 0.3]
    assert list(r.train_transform.one_of) == ["grayscale", "solarize", "gaussian_blur"]
    assert (r.test_transform.resize, r.test_transform.crop) == (224, 224)
    assert compose(["recipe=paper", "recipe.epochs=7"]).recipe.epochs == 7


@pytest.mark.slow
def test_changing_a_recipe_value_changes_the_model_key(tmp_path):
    from synthray.core.artifacts import Artifact, DatasetRef, Store
    from synthray.graph.planner import model_artifact

    real = Artifact(Store(str(tmp_path)), "real", {"d": 1})
    data, test = DatasetRef(real, "train"), DatasetRef(real, "test")

    def key(*overrides):  # `test`: where recipe=paper picks its best epoch (the study's protocol)
        return model_artifact(compose([f"storage={tmp_path}", *overrides]), "tiny-cnn", data, 10, "", test).key

    keys = {key(*o) for o in ([], ["recipe.epochs=7"], ["recipe.lr=1e-4"], ["recipe=paper"])}
    assert len(keys) == 4
    for execution in (["training.max_failures=3"], [f"storage={tmp_path / 'elsewhere'}"], ["lease_s=5"]):
        assert key(*execution) in keys, f"{execution} cannot change the weights, so it stays out of the key"
    # The device sets the numerics (bf16 autocast, channels-last on GPU): part of the key, read from config only.
    assert key("device=gpu") not in keys and key("device=gpu") == key("training.device=gpu")


def test_the_synthray_schedule_warms_up_per_step_then_cosines_to_the_floor():
    r = compose(["recipe=paper", "recipe.lr_schedule=synthray", "recipe.warmup_start_lr=1e-5", "recipe.min_lr=1e-8"]).recipe
    spe = 100
    lrs = np.array([lr_at(s, spe, r) for s in range(80 * spe)])
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[5 * spe] == pytest.approx(1e-3)  # warm-up ends after 5 epochs
    assert np.all(np.diff(lrs[:5 * spe]) > 0) and np.all(np.diff(lrs[5 * spe:]) <= 0)
    assert lrs[1] != lrs[0] and lrs[spe + 1] != lrs[spe]  # stepped every optimiser step, not every epoch
    assert lrs[-1] == pytest.approx(1e-8, abs=1e-9)
    assert lr_at(80 * spe, spe, r) == pytest.approx(1e-8)
    assert lrs[5 * spe + 75 * spe // 2] == pytest.approx((1e-3 + 1e-8) / 2, rel=1e-3)  # cosine midpoint


def test_global_batch_is_kept_across_worker_counts():
    for workers, acc in [(1, 1), (2, 1), (4, 2), (8, 4)]:
        assert batch_geometry(1024, workers, acc) * workers * acc == 1024
    assert steps_per_epoch(10_000, 4, 256) == steps_per_epoch(10_000, 1, 1024) == 10
    with pytest.raises(SynthrayError, match="not divisible"):
        batch_geometry(1024, 3, 1)


@pytest.mark.parametrize("override, message", [
    ("training.num_workers=3", "recipe.batch_size=1024 is not divisible by training.num_workers=3"),
    ("recipe.train_transform.one_of=[sharpen]", "unknown 'sharpen'"),
    ("recipe.test_transform.crop=192", "training images are 224 px but test images 192 px"),
    ("recipe.selection_fraction=1.0", r"selection_fraction must be in \[0, 1\)"),
    ("recipe.optimizer=lion", "recipe.optimizer 'lion'"),
    ("training.inline_rows=-1", r"training.inline_rows must be a whole number >= 0 \(0: always Ray Train\)"),
])
def test_bad_recipe_values_are_one_line(tmp_path, override, message):
    with pytest.raises(SynthrayError, match=message) as err:
        validate(compose([f"storage={tmp_path}", "recipe=paper", override]))
    assert "\n" not in str(err.value)


def _images(n=4, size=40, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_crop_boxes_follow_random_resized_crop_bounds():
    rng = np.random.default_rng(0)
    boxes = augment.crop_boxes(rng, 2000, 256, 256, (0.08, 1.0), (0.75, 4 / 3))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 256).all() and (left + w <= 256).all()
    area = h * w / 256**2
    assert area.min() > 0.07 and area.max() <= 1.0 and 0.4 < area.mean() < 0.6  # uniform scale, mean ~0.54
    assert ((w / h) > 0.7).all() and ((w / h) < 1.4).all()


def test_resized_crop_is_exact_on_identity_flip_and_linear_ramps():
    x = augment.to_unit(_images())
    full = np.array([[0, 0, 40, 40]] * 4)
    no, yes = np.zeros(4, bool), np.ones(4, bool)
    torch.testing.assert_close(augment.resized_crop(x, full, 40, no), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(augment.resized_crop(x, full, 40, yes), x.flip(-1), atol=1e-5, rtol=0)
    # Bilinear sampling reproduces a linear image exactly, so each output pixel is the ramp at its source
    # coordinate: this pins the crop geometry. Bicubic (a = -0.75) is within 1e-3 of it.
    ramp = (torch.arange(64.0) / 64).expand(1, 3, 64, 64).contiguous()
    top, left, h, w, size = 8, 10, 40, 30, 24
    source = (left + (torch.arange(size) + 0.5) * w / size - 0.5) / 64
    box = np.array([[top, left, h, w]])
    out = augment.resized_crop(ramp, box, size, np.zeros(1, bool), mode="bilinear")
    torch.testing.assert_close(out[0, 0, 5], source, atol=1e-5, rtol=0)
    out = augment.resized_crop(ramp, box, size, np.ones(1, bool), mode="bicubic")
    torch.testing.assert_close(out[0, 0, 5], source.flip(0), atol=1e-3, rtol=0)


def test_photometric_ops_match_torchvision():
    x = augment.to_unit(_images())
    torch.testing.assert_close(augment.grayscale(x).expand_as(x), TF.rgb_to_grayscale(x, 3), atol=1e-6, rtol=0)
    factors = np.array([[0.7, 1.3, 0.8], [1.2, 0.7, 1.3], [1.0, 1.0, 1.0], [0.9, 1.1, 0.0]])
    expected = torch.stack([TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, b), c), s)
                            for img, (b, c, s) in zip(x, factors)])
    torch.testing.assert_close(augment.color_jitter(x, factors), expected, atol=1e-5, rtol=0)
    sigma = np.array([0.2, 0.7, 1.3, 2.0])
    expected = torch.stack([TF.gaussian_blur(img, [7, 7], [s, s]) for img, s in zip(x, sigma)])
    torch.testing.assert_close(augment.gaussian_blur(x, sigma, 7), expected, atol=1e-5, rtol=0)


def test_one_of_applies_exactly_one_operation_per_image():
    x = augment.to_unit(_images(n=64))
    spec = {"solarize_threshold": 0.5, "gaussian_blur": {"kernel": 7, "sigma": [0.2, 2.0]}}
    out = augment.one_of(x, ["grayscale", "solarize"], spec, np.random.default_rng(1))
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    solarized = torch.tensor([torch.equal(o, torch.where(i >= 0.5, 1 - i, i)) for o, i in zip(out, x)])
    assert (gray ^ solarized).all() and 10 < int(gray.sum()) < 54


def test_cutmix_pastes_the_reversed_batch_and_returns_the_kept_area():
    x = augment.to_unit(_images(n=6))
    mixed, lam = augment.cutmix(x, np.random.default_rng(3), 1.0)
    pasted = (mixed != x).any(dim=1)  # (N, H, W): where a pixel came from the reversed batch
    assert 0 <= lam <= 1
    assert float(pasted[0].float().mean()) == pytest.approx(1 - lam, abs=0.05)
    box = pasted[0]
    assert torch.equal(mixed[:, :, box], x.flip(0)[:, :, box]) and torch.equal(mixed[:, :, ~box], x[:, :, ~box])


def test_train_and_test_batches_have_the_model_shape_and_are_seeded():
    r = compose(["recipe=paper"]).recipe
    images = _images(n=5, size=256)
    a = augment.train_batch(images, r, np.random.default_rng(7))
    b = augment.train_batch(images, r, np.random.default_rng(7))
    assert a.shape == (5, 3, 224, 224) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, augment.train_batch(images, r, np.random.default_rng(8)))
    test = augment.test_batch(_images(n=2, size=224), r)
    assert test.shape == (2, 3, 224, 224)
    mean = torch.tensor(r.normalize.mean).view(1, 3, 1, 1)
    std = torch.tensor(r.normalize.std).view(1, 3, 1, 1)
    torch.testing.assert_close(test * std + mean, augment.to_unit(_images(n=2, size=224)), atol=1e-6, rtol=0)


def test_the_study_lr_schedule_to_the_letter():
    """recipe.lr_schedule=study is classifier/train.py's LambdaLR: start and floor as factors, (rows // batch)
    steps per epoch, progress not clamped."""
    import math

    from synthray.training.recipe import lr_at

    def study(n_steps, n_steps_max, n_warmup_steps, start_lr, min_lr):  # classifier/train.py, verbatim
        if n_steps < n_warmup_steps:
            return float(n_steps) / float(max(1, n_warmup_steps)) * (1 - start_lr) + start_lr
        progress = float(n_steps - n_warmup_steps) / float(max(1, n_steps_max - n_warmup_steps))
        return max(min_lr, 0.5 * (1.0 + math.cos(math.pi * progress)))

    recipe = {"lr": 1e-3, "warmup_start_lr": 1e-8, "min_lr": 1e-11, "epochs": 80, "warmup_epochs": 5,
              "batch_size": 1024, "lr_schedule": "study"}
    rows = 100_000  # 97 steps per epoch in the study's count, 98 real ones
    real_steps = math.ceil(rows / 1024) * 80
    for step in [0, 1, 200, 484, 485, 486, 4000, 7759, 7760, 7800, real_steps - 1]:
        expected = 1e-3 * study(step, (rows // 1024) * 80, (rows // 1024) * 5, 1e-5, 1e-8)
        assert math.isclose(lr_at(step, 98, recipe, rows), expected, rel_tol=1e-12, abs_tol=1e-20), step
    assert lr_at(real_steps - 1, 98, recipe, rows) > lr_at(7760, 98, recipe, rows)  # past the study's end it climbs


def test_the_study_schedule_refuses_an_epoch_of_no_steps():
    from synthray.training.recipe import lr_at

    recipe = {"lr": 1e-3, "warmup_start_lr": 1e-8, "min_lr": 1e-11, "epochs": 80, "warmup_epochs": 5,
              "batch_size": 1024, "lr_schedule": "study"}
    with pytest.raises(SynthrayError, match="0 for 500 rows and batch 1024; use recipe.lr_schedule=synthray"):
        lr_at(0, 1, recipe, rows=500)


def _step_ops():
    """bench/step_ops.py, the op counter the GPU figures rely on (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_ops", Path(__file__).parents[1] / "bench" / "step_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_batched_augmentation_runs_the_same_ops_and_one_upload_for_any_batch():
    # A GPU launches a kernel per op: a count that grew with the batch would make a step launch-bound (issue 25).
    # Each host-to-device copy of a random parameter from pageable memory waits for the GPU's queue: one per step.
    step_ops = _step_ops()
    r = step_ops.square_recipe()  # recipe=paper on the 256 px square input, the batched path
    assert step_ops.augment_ops(r, 32) == step_ops.augment_ops(r, 64)
    assert step_ops.augment_transfers(r, 32) == step_ops.augment_transfers(r, 64) == 1


def test_upload_moves_every_parameter_bit_exactly_in_one_buffer():
    host = {"theta": torch.randn(5, 2, 3), "flip": np.array([True, False, True]), "choice": np.arange(7),
            "factors": torch.rand(3, 3, dtype=torch.float64), "empty": np.zeros(0)}
    got = augment.upload(host, torch.device("cpu"))
    for name, value in host.items():
        want = torch.as_tensor(value)
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    assert len({t.untyped_storage().data_ptr() for t in got.values() if t.numel()}) == 1
