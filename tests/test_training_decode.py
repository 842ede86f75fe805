"""Decoding JPEGs on the training worker (`training.jpeg_decode: gpu`) and the per-epoch time split.

There is no GPU here: the worker-side path (encoded bytes shipped through Ray Data, decoded in batches by
`torchvision.io.decode_jpeg`, resized with tensor ops) runs on a CPU device, which is the same function with
libjpeg-turbo instead of nvjpeg. What it must match is Pillow's `images.decode_array`, the default CPU path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthray.config import compose
from synthray.core import storage
from synthray.core.artifacts import Artifact, DatasetRef, Store
from synthray.core.images import decode_array, encode, shard_files, write_table
from synthray.core.registry import SynthrayError
from synthray.graph.identity import training_spec
from synthray.graph.planner import model_artifact
from synthray.sweep.plan import validate
from synthray.training.device_decode import decode_on_device, shard_batches, to_device
from tests.conftest import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]



def _sections(cfg):
    """The recipe and training sections a model's spec carries to the training stage."""
    return cfg.recipe, cfg.training

def smooth(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random picture (upsampled noise), like a generated image; pure noise would be a worst case."""
    low = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(low).resize((width, height), Image.BICUBIC)


def mixed_images(rng: np.random.Generator) -> list[bytes]:
    """Every kind of row the decoder meets: JPEGs of both chroma layouts, larger, smaller, equal to and not the
    shape of the target, a grayscale JPEG, and PNGs (which take Pillow's path on the worker too)."""
    out = []
    for subsampling in ("4:4:4", "4:2:0"):
        for w, h in ((64, 64), (40, 40), (32, 32), (24, 24), (80, 48), (36, 60)):
            out.append(encode(smooth(rng, w, h), "jpeg", 95, subsampling))
    out.append(encode(smooth(rng, 48, 48).convert("L"), "jpeg", 95))
    out.append(encode(smooth(rng, 48, 48), "png"))
    out.append(encode(smooth(rng, 32, 32), "png"))
    return out


def test_worker_decode_matches_pillow_within_a_level():
    data = mixed_images(np.random.default_rng(0))
    size = 32
    ref = np.stack([decode_array(b, size) for b in data])
    got = decode_on_device(data, size, "cpu")
    assert got.shape == ref.shape == (len(data), size, size, 3) and got.dtype == torch.uint8 and got.is_contiguous()
    diff = np.abs(got.numpy().astype(int) - ref.astype(int))
    print(f"max pixel difference {diff.max()}, {100 * (diff > 0).mean():.2f}% of values differ")
    assert diff.max() <= 2 and (diff > 0).mean() < 0.05
    assert np.array_equal(got.numpy()[-2:], ref[-2:]), "PNG rows take Pillow's path exactly"
    assert np.array_equal(got.numpy()[2], ref[2]), "an image already at the size is only decoded: no resize"
    assert decode_on_device([], size, "cpu").shape == (0, size, size, 3)


@pytest.mark.slow
def test_jpeg_decode_gpu_enters_the_key_and_cpu_stays_out(tmp_path):
    from synthray.graph import identity

    data = DatasetRef(Artifact(Store(str(tmp_path)), "real", {"d": 1}), "train")

    def key(*overrides):
        return model_artifact(compose([f"storage={tmp_path}", *overrides]), "tiny-cnn", data, 10, "").key

    assert "jpeg_decode" not in training_spec(compose([f"storage={tmp_path}"]))["numerics"]
    assert key() == key("training.jpeg_decode=cpu"), "the default computes what was computed before the setting"
    assert key("device=gpu") == key("device=gpu", "training.jpeg_decode=cpu")
    gpu = key("device=gpu", "training.jpeg_decode=gpu")
    assert gpu != key("device=gpu")
    assert training_spec(compose([f"storage={tmp_path}", "device=gpu", "training.jpeg_decode=gpu"]))["numerics"]["jpeg_decode"] == "gpu"
    # How many CPUs decode never changes a pixel (Ray Data keeps the order), so it is not in the key.
    assert key("training.decode_cpus=3") == key()
    # A key from before the setting (its numerics had no jpeg_decode) is the key of jpeg_decode=cpu.
    legacy = {k: v for k, v in identity.numerics(compose([f"storage={tmp_path}"])).items() if k != "jpeg_decode"}
    assert identity.without_legacy(legacy, identity.LEGACY_NUMERICS) == training_spec(compose([f"storage={tmp_path}"]))["numerics"]


@pytest.mark.parametrize("override, message", [
    ("training.jpeg_decode=gpu", "training.jpeg_decode=gpu decodes JPEGs with nvjpeg on the training GPU, but training.device=cpu"),
    ("training.jpeg_decode=nvjpeg", "unknown training.jpeg_decode 'nvjpeg'; choices: cpu, gpu"),
    ("training.decode_cpus=0", "training.decode_cpus must be a whole number >= 1 or null, got 0"),
    ("training.decode_cpus=1.5", "training.decode_cpus takes a whole number, got '1.5'"),
])
def test_bad_decode_settings_are_one_line(tmp_path, override, message):
    with pytest.raises(SynthrayError, match=message) as err:
        validate(compose([f"storage={tmp_path}", override]))
    assert "\n" not in str(err.value)


def test_gpu_decode_on_a_cpu_training_fails_before_anything_runs(tmp_path):
    from synthray.graph.planner import train

    data = DatasetRef(Artifact(Store(str(tmp_path)), "real", {"d": 1}), "train")
    with pytest.raises(SynthrayError, match="training.jpeg_decode=gpu") as err:
        train(compose([f"storage={tmp_path}", "training.jpeg_decode=gpu"]), "tiny-cnn", data, 10, label="x")
    assert "\n" not in str(err.value) and not (tmp_path / "models").exists()


def jpeg_dataset(root: Path, rows: int = 120) -> DatasetRef:
    """A small dataset artifact of JPEGs (plus a PNG and a grayscale JPEG) with a quality column, one row flagged."""
    def make(out):
        rng = np.random.default_rng(1)
        for shard, start in enumerate(range(0, rows, 40)):
            images = [encode(smooth(rng, 40, 40), "jpeg", 95, "4:2:0") for _ in range(40)]
            if shard == 1:
                images[3] = encode(smooth(rng, 40, 40), "png")
                images[4] = encode(smooth(rng, 48, 40).convert("L"), "jpeg", 95)
            write_table(f"{out.uri}/data/shard-{shard:05d}.parquet",
                        {"id": [f"t/{start + i}" for i in range(40)], "image": images,
                         "label": [int(v) for v in rng.integers(0, 10, 40)],
                         "quality": ["black" if start + i == 7 else "ok" for i in range(40)]})
        return {"rows": rows}

    art = Artifact(Store(storage.normalize(root)), "decode-data", {"rows": rows})
    return DatasetRef(art.build(make), "data")


@pytest.mark.slow
@pytest.mark.parametrize("cache_gb", [0.0, 1.0], ids=["streamed", "cached"])
def test_encoded_rows_reach_the_worker_in_the_same_order(ray_cluster, tmp_path, cache_gb):
    """Both decoders see the same rows in the same order, batch by batch, with the loop's shuffle arguments."""
    from synthray.training.trainer import _datasets, split_counts

    data = jpeg_dataset(tmp_path / "data")
    images = data.uri
    seed, fraction = 0, 0.2
    rows = split_counts(images, fraction, seed)
    assert rows[0] + rows[1] == 119  # one row flagged by the quality guard
    common = [f"training.cache_decoded_gb={cache_gb}", "recipe.load_size=32", "recipe.test_transform.resize=32",
              f"recipe.selection_fraction={fraction}"]
    plain = _datasets(*_sections(tiny_cfg(tmp_path, *common)), images, rows, fraction, None)
    worker = _datasets(*_sections(tiny_cfg(tmp_path, *common, "device=gpu", "training.jpeg_decode=gpu")), images, rows, fraction, None)
    raw = next(iter(shard_batches(worker["train"], 4, "gpu")))
    assert isinstance(raw["image"][0], bytes), "jpeg_decode=gpu ships the encoded bytes to the worker"
    worst = 0
    for part, count in zip(("train", "selection"), rows):
        shuffle = {"local_shuffle_buffer_size": 4 * 16, "local_shuffle_seed": 7, "prefetch_batches": 1}
        a = [to_device(b, "cpu", 32, torch.device("cpu")) for b in shard_batches(plain[part], 16, "cpu", **shuffle)]
        b = [to_device(b, "gpu", 32, torch.device("cpu")) for b in shard_batches(worker[part], 16, "gpu", **shuffle)]
        assert [len(y) for _, y in a] == [len(y) for _, y in b] and sum(len(y) for _, y in a) == count
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(ya, yb) and xa.shape == xb.shape == (len(ya), 32, 32, 3)
            worst = max(worst, int((xa.int() - xb.int()).abs().max()))
    print(f"{'cached' if cache_gb else 'streamed'}: max pixel difference, Pillow vs worker decode: {worst}")
    assert worst <= 2  # the images are 40 px: every JPEG row was resized on the worker


def _bench():
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "bench" / "training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_prints_the_split_and_reads_records_from_before_it():
    old = {"epoch": 1, "images_per_s": 100.0, "train_loss": 1.0}  # a history record written before the split
    new = {"epoch": 2, "images_per_s": 200.0, "data_wait_s": 1.0, "decode_s": 0.0, "step_s": 3.0, "eval_s": 0.5}
    lines = _bench().time_split("m", [old, new])
    assert lines[0] == "m epoch 1: no time split recorded (100 img/s)"
    assert lines[1] == "m epoch 2: data wait 1.00 s  decode 0.00 s  step 3.00 s  eval 0.50 s  (200 img/s)"
    assert lines[2].startswith("m total: data wait 1.00 s (22%)")


@pytest.mark.slow
@pytest.mark.deep  # three trainings (40 s); the order and pixels of the worker path are checked above in seconds
def test_training_with_worker_decode_records_where_the_time_went(ray_cluster, tmp_path, monkeypatch):
    """The Ray Train loop with jpeg_decode=gpu end to end, on a CPU device: the device check (nvjpeg needs
    training.device=gpu) is lifted so that the worker decodes with libjpeg-turbo instead. Both decoders' runs
    record the time split in every epoch's history, and the worker-decoded model is the same cached or streamed."""
    from synthray.graph.planner import train
    from synthray.training import recipe

    data = jpeg_dataset(tmp_path / "data")
    args = ["recipe.epochs=2", "recipe.batch_size=16", "training.cache_decoded_gb=0", "recipe.selection_fraction=0.2"]
    plain = train(tiny_cfg(tmp_path / "cpu", *args), "tiny-cnn", data, 10, label="pillow")
    check = recipe.jpeg_decode
    monkeypatch.setattr(recipe, "jpeg_decode", lambda t: str(t.jpeg_decode) if t.jpeg_decode == "gpu" else check(t))
    worker = train(tiny_cfg(tmp_path / "gpu", *args, "training.jpeg_decode=gpu"), "tiny-cnn", data, 10, label="worker")
    assert worker.spec["numerics"]["jpeg_decode"] == "gpu" and "jpeg_decode" not in plain.spec["numerics"]
    for art in (plain, worker):
        meta = art.meta()
        assert meta["rows"] == plain.meta()["rows"] and meta["epochs"] == 2 and 0 <= meta["selection_acc_best"] <= 1
        for h in meta["history"]:
            assert all(h[k] >= 0 for k in ("data_wait_s", "decode_s", "step_s", "eval_s"))
            loop_s = h["data_wait_s"] + h["decode_s"] + h["step_s"]
            assert loop_s == pytest.approx(meta["rows"] / h["images_per_s"], rel=1e-6)
    assert all(h["decode_s"] > 0 for h in worker.meta()["history"])
    # The cache setting is not in the key, so it must not change the bytes: cached encoded rows decode the same.
    cached = train(tiny_cfg(tmp_path / "gpu-cached", *args, "training.jpeg_decode=gpu", "training.cache_decoded_gb=1"),
                   "tiny-cnn", data, 10, label="worker, cached")
    assert cached.key == worker.key
    for weights in ("model.pt", "last.pt"):
        a, b = (torch.load(art.file(weights), weights_only=True) for art in (worker, cached))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights


@pytest.mark.slow
def test_streaming_keeps_the_shuffled_encoded_rows_when_they_fit(ray_cluster, tmp_path):
    """Decoded too big to cache but encoded small: the shuffled encoded rows are kept, each epoch streams only the
    decode, and the batches are exactly those of a stream that re-reads the shards."""
    from synthray.training.trainer import _datasets, _encoded_bytes, split_counts

    data = jpeg_dataset(tmp_path / "data")
    rows = split_counts(data.uri, 0.2, 0)
    decoded = sum(rows) * 32 * 32 * 3
    encoded = _encoded_bytes(data.uri, shard_files(data.uri))
    assert encoded < decoded
    between = (encoded + decoded) / 2 / 2**30
    common = ["recipe.load_size=32", "recipe.test_transform.resize=32", "recipe.selection_fraction=0.2"]
    streamed = _datasets(*_sections(tiny_cfg(tmp_path, *common, "training.cache_decoded_gb=0")), data.uri, rows, 0.2, None)
    kept = _datasets(*_sections(tiny_cfg(tmp_path, *common, f"training.cache_decoded_gb={between}")), data.uri, rows, 0.2, None)
    for part in ("train", "selection"):
        for epoch in range(2):
            shuffle = {"local_shuffle_buffer_size": 64, "local_shuffle_seed": epoch, "prefetch_batches": 1}
            a = list(shard_batches(streamed[part], 16, "cpu", **shuffle))
            b = list(shard_batches(kept[part], 16, "cpu", **shuffle))
            assert len(a) == len(b) > 0
            assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))


# (width, height, whether the earlier geometry put the square elsewhere): 500x375 and 640x480 rounded the long side
# up (299, not 298), 500x334 floored the crop offset (55, not 56); 333x500 came out the same.
@pytest.mark.parametrize("width, height, moved", [(500, 375, True), (500, 334, True), (333, 500, False), (640, 480, True)])
def test_the_test_input_is_torchvisions_resize_and_center_crop_on_every_path(width, height, moved):
    """The study's test transform (classifier/dataset.py): ToTensor, Resize(224, BICUBIC), CenterCrop(224), on the
    float image. synthray's test input (geometry `torchvision`, the default) equals it within one level on the CPU
    path (Pillow decode, Ray Data's UDF), the decode-on-worker path (torchvision.io, here on a CPU device) and the
    crop of `test_batch`; the earlier geometry (`round`) is off by tens of levels at edges."""
    from torchvision import transforms as T

    from synthray.training.augment import centre_offset
    from synthray.training.inputs import decode_images

    jpeg = encode(smooth(np.random.default_rng(width * height), width, height), "jpeg", 95)
    decoded = Image.open(__import__("io").BytesIO(jpeg)).convert("RGB")
    study = T.Compose([T.ToTensor(), T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    expected = np.clip(study(decoded).numpy().transpose(1, 2, 0) * 255, 0, 255)
    on_cpu = decode_array(jpeg, 224, "torchvision").astype(np.float64)
    udf = decode_images({"image": np.array([jpeg], dtype=object), "label": np.array([3])}, 224, geometry="torchvision")
    on_worker = decode_on_device([jpeg], 224, "cpu", "torchvision")[0].numpy().astype(np.float64)
    assert np.abs(on_cpu - expected).max() <= 1.0
    assert np.array_equal(udf["image"][0], on_cpu.astype(np.uint8))
    assert np.abs(on_worker - expected).max() <= 1.0  # libjpeg-turbo here, nvjpeg on a GPU: one level at most apart
    legacy = decode_array(jpeg, 224, "round").astype(np.float64)
    assert (np.abs(legacy - expected).max() > 10) == moved, "the earlier geometry differed where it moved the square"
    # The second crop of `test_batch` (resize 256, crop 224 and the like) starts where torchvision's would.
    for length, crop in ((256, 224), (225, 224), (227, 224), (298, 224)):
        assert centre_offset(length, crop, {"geometry": "torchvision"}) == int(round((length - crop) / 2.0))
