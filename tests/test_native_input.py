"""The study's training input (issue 24): RandomResizedCrop on each image at its decoded native size, antialiased, and
ColorJitter's adjustments in a random order per image, each checked against torchvision; then the same input through
Ray Data to a trained model. `recipe.load_size=256` (a square first), `antialias=false` and `color_jitter_order=fixed`
stay as named switches under the stored keys (tests/test_keys.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from synthray.config import compose
from synthray.core import storage
from synthray.core.artifacts import Artifact, DatasetRef, Store
from synthray.core.images import encode, write_table
from synthray.core.registry import SynthrayError
from synthray.sweep.plan import validate
from synthray.training import augment
from synthray.training.device_decode import shard_batches, to_device
from tests.conftest import tiny_cfg

SHAPES = [(375, 500), (500, 333), (480, 640), (334, 500)]  # (H, W): ImageNet's common shapes


def _pink(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A 1/f ("pink") noise picture, uint8 (H, W, 3): natural images' spectrum, detail at every scale."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / max(height, width))
    channels = [np.real(np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((height, width))))) for _ in range(3)]
    x = np.stack(channels, -1)
    return np.clip(128 + 48 * (x - x.mean()) / x.std(), 0, 255).astype(np.uint8)


def test_crop_boxes_take_a_size_per_image_and_keep_the_square_case():
    n, sizes = 400, np.array(SHAPES * 100)
    boxes = augment.crop_boxes(np.random.default_rng(0), n, sizes[:, 0], sizes[:, 1], (0.08, 1.0), (0.75, 4 / 3))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()
    assert ((h * w) / (sizes[:, 0] * sizes[:, 1])).min() > 0.07
    # One size for all (the square input) draws exactly what it drew before sizes could differ: the stored keys' crops.
    same = augment.crop_boxes(np.random.default_rng(1), 50, np.full(50, 256), np.full(50, 256), (0.08, 1.0), (0.75, 4 / 3))
    assert np.array_equal(same, augment.crop_boxes(np.random.default_rng(1), 50, 256, 256, (0.08, 1.0), (0.75, 4 / 3)))
    # No candidate fits a 1000:1 strip: torchvision's fallback, the whole strip clamped to the ratio range.
    strip = augment.crop_boxes(np.random.default_rng(2), 2, np.array([4, 1000]), np.array([1000, 4]), (0.9, 1.0), (0.75, 4 / 3))
    assert strip.tolist() == [[0, 497, 4, 5], [497, 0, 5, 4]]  # round(4 * 4/3) = 5 wide; round(4 / 0.75) = 5 high


def test_the_crop_is_torchvisions_resized_crop_with_antialiasing():
    rng = np.random.default_rng(3)
    images = [torch.from_numpy(_pink(rng, h, w)).permute(2, 0, 1).float() / 255 for h, w in SHAPES]
    boxes = augment.crop_boxes(rng, len(images), [h for h, _ in SHAPES], [w for _, w in SHAPES], (0.08, 1.0), (0.75, 4 / 3))
    flip = np.array([False, True, False, True])
    got = augment.resized_crops(images, boxes, 224, flip)
    for img, (top, left, h, w), mirrored, out in zip(images, boxes.tolist(), flip, got):
        want = TF.resized_crop(img, top, left, h, w, [224, 224], InterpolationMode.BICUBIC, antialias=True)
        torch.testing.assert_close(out, want.flip(-1) if mirrored else want, atol=1e-5, rtol=0)


def test_colour_jitter_in_each_images_own_order_is_torchvisions():
    x = augment.to_unit(torch.from_numpy(np.random.default_rng(4).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)))
    factors = np.random.default_rng(5).uniform(0.5, 1.5, (6, 3))
    order = np.array(list(itertools.permutations(range(3))))
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    expected = []
    for img, f, o in zip(x, factors, order):
        for which in o:
            img = ops[which](img, float(f[which]))
        expected.append(img)
    torch.testing.assert_close(augment.color_jitter(x, factors, order), torch.stack(expected), atol=1e-5, rtol=0)
    # The orders matter (else the switch would be moot), and the draw gives each of the six about equally.
    assert not torch.allclose(augment.color_jitter(x, factors, order), augment.color_jitter(x, factors), atol=1e-3)
    drawn = augment.jitter_order(np.random.default_rng(6), 6000)
    counts = {tuple(p): int((drawn == p).all(1).sum()) for p in order}
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_native_input_keeps_the_detail_a_square_first_loses():
    """The issue's measure: small crops of a 1/f picture. Squared to 256 px first, then cropped (synthray's earlier
    input), the crop has lost the fine detail the native crop keeps; its high-pass (image minus a 7-tap blur) is
    much weaker. Printed: the high-pass standard deviation in levels, both ways, over the same 64 small boxes."""
    rng = np.random.default_rng(7)
    picture = torch.from_numpy(_pink(rng, 375, 500))
    paper = compose(["recipe=paper"]).recipe
    crop = dict(paper.train_transform.random_resized_crop)

    def high_pass_std(x: torch.Tensor) -> float:
        return float((x - augment.gaussian_blur(x, np.full(len(x), 1.5), 7)).std() * 255)

    n = 64
    native = augment.crop_boxes(np.random.default_rng(8), n, 375, 500, (0.08, 0.1), crop["ratio"])
    study = augment.resized_crops([picture.permute(2, 0, 1).float() / 255] * n, native, 224, np.zeros(n, bool))
    from synthray.core.images import decode_array

    square = torch.tensor(decode_array(encode(Image.fromarray(picture.numpy()), "png"), 256))
    boxes = augment.crop_boxes(np.random.default_rng(8), n, 256, 256, (0.08, 0.1), crop["ratio"])
    earlier = augment.resized_crop(augment.to_unit(square[None].expand(n, -1, -1, -1)), boxes, 224, np.zeros(n, bool))
    a, b = high_pass_std(study), high_pass_std(earlier)
    print(f"high-pass std of small crops, 1/f picture 500x375: native {a:.1f} levels, squared to 256 first {b:.1f}")
    assert a > 1.3 * b


@pytest.mark.parametrize("override, message", [
    ("recipe.load_size=huge", 'recipe.load_size must be a whole number >= 1 or "native", got huge'),
    ("recipe.load_size=0", 'recipe.load_size must be a whole number >= 1 or "native", got 0'),
    ("recipe.train_transform.color_jitter_order=shuffled", "color_jitter_order"),
])
def test_bad_input_settings_are_one_line(tmp_path, override, message):
    with pytest.raises(SynthrayError, match=message) as err:
        validate(compose([f"storage={tmp_path}", "recipe=paper", override]))
    assert "\n" not in str(err.value)


def test_native_input_needs_a_crop_that_takes_any_size(tmp_path):
    with pytest.raises(SynthrayError, match="recipe.load_size=native needs train_transform.random_resized_crop") as err:
        validate(compose([f"storage={tmp_path}", "recipe.load_size=native"]))  # smoke: a shift of a 32 px square
    assert "\n" not in str(err.value)


def mixed_size_dataset(root: Path) -> DatasetRef:
    """60 JPEGs (and a PNG) of six shapes, as a dataset artifact: native input's worst case, no two neighbours alike."""
    def make(out):
        rng = np.random.default_rng(9)
        shapes = [(40, 30), (30, 40), (48, 48), (36, 52), (33, 50), (64, 40)]
        for shard, start in enumerate(range(0, 60, 30)):
            images = [encode(Image.fromarray(_pink(rng, *shapes[(start + i) % 6])), "jpeg", 95, "4:2:0") for i in range(30)]
            if shard == 1:
                images[5] = encode(Image.fromarray(_pink(rng, 44, 28)), "png")
            write_table(f"{out.uri}/data/shard-{shard:05d}.parquet",
                        {"id": [f"m/{start + i}" for i in range(30)], "image": images,
                         "label": [int(v) for v in rng.integers(0, 10, 30)]})
        return {"rows": 60}

    return DatasetRef(Artifact(Store(storage.normalize(root)), "native-data", {"rows": 60}).build(make), "data")


# recipe=paper (native input, antialiased crop, colour jitter in a random order, a permutation per epoch) at 32 px,
# without CutMix, selected on held-out training rows (the digits-sized data has no real test split).
NATIVE = ["recipe=paper", "recipe.train_transform.random_resized_crop.size=32", "recipe.test_transform.resize=32",
          "recipe.test_transform.crop=32", "recipe.cutmix.prob=0.0", "recipe.selection.set=train",
          "recipe.warmup_epochs=0"]


@pytest.mark.slow
def test_native_rows_reach_the_worker_at_their_own_sizes_on_both_decoders(ray_cluster, tmp_path):
    """Ray Data ships variable-sized images (decoded by Pillow in its tasks, or encoded for the worker to decode), in
    the same order, with the same sizes, pixels within a level or two of each other."""
    from synthray.training.inputs import epoch_rows
    from synthray.training.trainer import _datasets

    data = mixed_size_dataset(tmp_path / "data")
    sections = [(c.recipe, c.training) for c in (tiny_cfg(tmp_path, *NATIVE),
                                                 tiny_cfg(tmp_path, *NATIVE, "device=gpu", "training.jpeg_decode=gpu"))]
    plain, worker = (_datasets(r, t, data.uri, (60, 0), 0.0, None)["train"] for r, t in sections)
    got = {}
    for name, dataset, decode in (("plain", plain, "cpu"), ("worker", worker, "gpu")):
        got[name] = [to_device(b, decode, None, torch.device("cpu"))
                     for b in shard_batches(epoch_rows(dataset, 0, 1), 16, decode, native=True, prefetch_batches=1)]
    sizes = set()
    for (xa, ya), (xb, yb) in zip(got["plain"], got["worker"], strict=True):
        assert torch.equal(ya, yb) and [x.shape for x in xa] == [x.shape for x in xb]
        assert max(int((a.int() - b.int()).abs().max()) for a, b in zip(xa, xb)) <= 2
        sizes |= {tuple(x.shape) for x in xa}
    assert sum(len(y) for _, y in got["plain"]) == 60 and len(sizes) == 7  # six JPEG shapes and the PNG's
    batch = augment.train_batch(got["plain"][0][0], dict(sections[0][0]), np.random.default_rng(0))
    assert batch.shape == (16, 3, 32, 32) and torch.isfinite(batch).all()


@pytest.mark.slow
def test_a_model_trains_on_native_sizes_and_reruns_to_the_same_weights(ray_cluster, tmp_path):
    """recipe.load_size=native end to end, on Ray Train and in the calling process (the two paths a model can take):
    the same weights, bit for bit, so the input is a function of the spec alone."""
    from synthray.graph.planner import train

    data = mixed_size_dataset(tmp_path / "data")
    args = [*NATIVE, "recipe.epochs=2", "recipe.batch_size=16", "recipe.selection_fraction=0.2"]
    inline = train(tiny_cfg(tmp_path / "inline", *args), "tiny-cnn", data, 10, label="native, inline")
    on_ray = train(tiny_cfg(tmp_path / "ray", *args, "training.inline_rows=0"), "tiny-cnn", data, 10, label="native, Ray Train")
    assert inline.key == on_ray.key and inline.spec["recipe"]["load_size"] == "native"
    assert inline.meta()["epochs"] == 2
    a, b = (torch.load(art.file("model.pt"), weights_only=True) for art in (inline, on_ray))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
