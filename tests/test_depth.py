"""The depth probe on a tiny random-weight Depth-Anything twin, saved and loaded like a hub checkpoint (no Ray)."""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthray.core import storage
from synthray.core.artifacts import Store
from synthray.core.images import encode, write_table
from synthray.core.models import Models, check_model
from synthray.core.registry import SynthrayError
from synthray.probes.depth import DEFAULT_DEPTH_MODEL, DepthEstimator, depth_worker
from synthray.tiny.depth import build_tiny_depth


def random_images(seed: int, *sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_depth(tmp_path_factory.mktemp("tiny-depth"))


@pytest.fixture(scope="module")
def estimator(tiny_dir) -> DepthEstimator:
    return DepthEstimator(str(tiny_dir), batch_size=4)


def test_tiny_twin_is_depth_anything_loaded_from_disk(tiny_dir):
    from transformers import AutoModelForDepthEstimation, DepthAnythingForDepthEstimation, DPTImageProcessor

    model = AutoModelForDepthEstimation.from_pretrained(str(tiny_dir))
    assert type(model) is DepthAnythingForDepthEstimation
    assert model.config.backbone_config.model_type == "dinov2"
    assert model.config.depth_estimation_type == "relative"
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert (tiny_dir / "preprocessor_config.json").is_file() and (tiny_dir / "model.safetensors").is_file()
    est = DepthEstimator(str(tiny_dir))
    assert isinstance(est.processor, DPTImageProcessor) and est.device == "cpu"
    assert DEFAULT_DEPTH_MODEL == "depth-anything/Depth-Anything-V2-Large-hf"


def test_views_are_normalised_grey_depth_at_input_size(estimator):
    images = random_images(0, (32, 32), (40, 48), (32, 32), (40, 48), (32, 32))
    views = estimator(images)
    assert len(views) == len(images)
    for image, view in zip(images, views):
        assert view.dtype == np.uint8 and view.shape == image.shape
        assert (view[..., 0] == view[..., 1]).all() and (view[..., 0] == view[..., 2]).all()
        assert view.min() == 0 and view.max() == 255
        assert len(np.unique(view)) > 50  # a real map, not a few flat regions
    again = estimator(images)
    assert all((a == b).all() for a, b in zip(views, again))
    assert not (views[0] == views[2]).all() and not (views[1] == views[3]).all()


def test_views_match_the_processors_own_post_processing(estimator):
    import torch

    image = random_images(1, (40, 48))[0]
    inputs = estimator.processor(images=[image], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (42, 56)  # aspect kept, multiples of 14
    with torch.no_grad():
        outputs = estimator.model(**inputs)
    depth = estimator.processor.post_process_depth_estimation(outputs, target_sizes=[(40, 48)])[0]["predicted_depth"].numpy()
    expected = np.round((depth - depth.min()) / (depth.max() - depth.min()) * 255)
    assert np.abs(estimator([image])[0][..., 0].astype(int) - expected).max() <= 1


def test_mixed_sizes_keep_their_order(estimator):
    images = random_images(2, (32, 32), (40, 48), (24, 36), (32, 32), (40, 48), (32, 32))
    together = estimator(images)
    for image, view in zip(images, together):
        alone = estimator([image])[0]
        assert view.shape == image.shape
        # Float kernels are not batch-invariant: a grey level of difference is allowed, a different map is not.
        assert np.abs(view.astype(int) - alone.astype(int)).max() <= 1


def test_flat_depth_becomes_zero(tiny_dir, monkeypatch):
    import torch

    est = DepthEstimator(str(tiny_dir))

    class Flat(torch.nn.Module):
        def forward(self, pixel_values):
            # A constant map plus float noise far below the depth's magnitude.
            noise = 1e-7 * torch.rand(pixel_values.shape[0], *pixel_values.shape[-2:])
            return type("Out", (), {"predicted_depth": 3.0 + noise})()

    monkeypatch.setattr(est, "model", Flat())
    views = est(random_images(3, (32, 32), (32, 32)))
    assert all(v.shape == (32, 32, 3) and (v == 0).all() for v in views)


def test_depth_worker_replaces_only_the_image_column(tiny_dir, tmp_path):
    images = random_images(4, *[(32, 32)] * 5)
    shard = tmp_path / "part-00000.parquet"
    ids = [f"img-{i}" for i in range(5)]
    write_table(str(shard), {"id": ids, "image": [encode(Image.fromarray(a), "png") for a in images], "label": [0, 1, 2, 1, 0]})
    factory = pickle.loads(pickle.dumps(functools.partial(depth_worker, str(tiny_dir), 3)))  # how Ray ships it
    columns = factory()({"name": shard.name, "src": str(shard)})
    assert set(columns) == {"id", "image", "label"} and len(columns["image"]) == 5
    assert columns["id"] == ids and columns["label"] == [0, 1, 2, 1, 0]
    expected = DepthEstimator(str(tiny_dir), batch_size=3)(images)  # the worker's batches: 3 then 2
    for data, want in zip(columns["image"], expected):
        png = Image.open(io.BytesIO(data))
        assert png.format == "PNG" and png.size == (32, 32)
        assert (np.asarray(png.convert("RGB")) == want).all()
    assert pq.read_schema(shard).names == ["id", "image", "label"]  # the source shard is untouched


def test_tiny_locates_to_one_artifact(tmp_path):
    models = Models(Store(storage.normalize(tmp_path)))
    first = models.locate("tiny:depth", "depth")
    art = models.tiny_artifact("tiny:depth")
    assert Path(first) == Path(art.uri) / "model" and Path(art.uri).parent == tmp_path / "tiny-models"
    assert (Path(first) / "config.json").is_file() and art.is_complete() and art.verify() == []
    assert models.locate("tiny:depth", "depth") == first  # reused, not rebuilt
    check_model(models, "tiny:depth", "depth", "probes.depth.model")
    with pytest.raises(SynthrayError, match="unknown tiny model family 'dept'"):
        models.locate("tiny:dept", "depth")
    with pytest.raises(SynthrayError, match="unknown tiny model family 'dept'"):
        check_model(models, "tiny:dept", "depth", "probes.depth.model")


def test_local_paths_and_missing_hub_weights(tiny_dir, tmp_path):
    models = Models(Store(storage.normalize(tmp_path)))
    assert models.locate(str(tiny_dir), "depth") == str(tiny_dir.resolve())
    check_model(models, str(tiny_dir), "depth", "probes.depth.model")
    empty = tmp_path / "empty"
    with pytest.raises(SynthrayError, match="not a transformers save_pretrained folder") as err:
        check_model(models, str(empty), "depth", "probes.depth.model")
    assert "\n" not in str(err.value) and f"probes.depth.model={empty}" in str(err.value)
    missing = "synthray-tests/no-such-depth-model"
    with pytest.raises(SynthrayError) as err:  # before launch, on the driver
        check_model(models, missing, "depth", "probes.depth.model")
    message = str(err.value)
    assert "\n" not in message and missing in message and "stage-weights" in message and "hub.allow_download=true" in message
    with pytest.raises(SynthrayError) as err:  # on a worker whose node lacks the weights
        models.locate(missing, "depth")
    assert "\n" not in str(err.value) and missing in str(err.value) and "stage-weights" in str(err.value)
    # With downloads allowed the check passes: the worker fetches the weights.
    check_model(Models(models.store, allow_download=True), missing, "depth", "probes.depth.model")


def test_registered_depth_probe_is_the_estimator_on_one_image(tiny_dir, estimator):
    from synthray.probes.transforms import PROBES

    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(PROBES.get("depth")(image, model=str(tiny_dir)), estimator([image])[0])


# --- The study's depth pipeline (issue 12, item 2) -----------------------------------------------------------------


def study_crop_to_square(image):
    """labelling/extract_depth_maps.py `crop_to_square`, verbatim."""
    width, height = image.size
    square_size = min(width, height)
    left = (width - square_size) // 2
    top = (height - square_size) // 2
    right = left + square_size
    bottom = top + square_size
    return image.crop((left, top, right, bottom))


def study_depth_anything(model_path: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """extract_depth_maps.py's loop body and depth_models.py `DepthAnythingV2.__call__`, verbatim but for the
    arrays in and out (fp32: `from_pretrained` without a dtype, no autocast)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(model_path).to("cpu")
    image_processor = AutoImageProcessor.from_pretrained(model_path)
    images = []
    for image in (Image.fromarray(a).convert("RGB") for a in arrays):
        if image.width != image.height:
            image = study_crop_to_square(image)
        images.append(image)
    with torch.no_grad():
        inputs = image_processor(images=images, return_tensors="pt").to("cpu")
        outputs = model(**inputs)
        depth_maps = outputs.predicted_depth
        depth_min = torch.amin(depth_maps, dim=[1, 2], keepdim=True)
        depth_max = torch.amax(depth_maps, dim=[1, 2], keepdim=True)
        depth_maps = (depth_maps - depth_min) / (depth_max - depth_min)
    imgs = []
    for depth_map in depth_maps:
        depth_map = depth_map.cpu().numpy()
        depth_map = (depth_map * 255.0).clip(0, 255).astype(np.uint8)
        depth_map = np.repeat(depth_map[:, :, np.newaxis], 3, axis=2)
        imgs.append(np.asarray(Image.fromarray(depth_map).convert("RGB")))
    return imgs


STUDY_DEPTH = {"dtype": "float32", "input_size": None, "square_crop": True, "output_size": "model", "quantize": "floor"}


def test_study_options_give_the_studys_maps_at_the_models_size(tiny_dir):
    import torch

    images = random_images(5, (40, 48), (48, 40), (56, 56), (30, 70))
    est = DepthEstimator(str(tiny_dir), batch_size=8, **STUDY_DEPTH)
    assert est.dtype == torch.float32
    views = est(images)
    with torch.no_grad():  # the model's own output size: the processor's 56 px square for the tiny twin
        pixels = est.processor(images=[images[0][:40, 4:44]], return_tensors="pt")["pixel_values"]
        out_size = tuple(est.model(pixel_values=pixels).predicted_depth.shape[-2:])
    assert out_size == (56, 56)
    expected = study_depth_anything(str(tiny_dir), images)  # one batch: every centre square becomes 56 x 56
    for view, want in zip(views, expected):
        assert view.shape == (*out_size, 3) and view.dtype == np.uint8 and want.shape == view.shape
        assert (view[..., 0] == view[..., 1]).all() and (view[..., 0] == view[..., 2]).all()
        # Our batches group equal crop sizes; float kernels are not batch-invariant, so a level may differ.
        assert np.abs(view.astype(int) - want.astype(int)).max() <= 1 and (view == want).mean() > 0.99
    alone = [DepthEstimator(str(tiny_dir), **STUDY_DEPTH)([im])[0] for im in images]
    assert all(np.abs(a.astype(int) - v.astype(int)).max() <= 1 for a, v in zip(alone, views))


def test_floor_is_the_studys_truncation_and_input_size_overrides_the_processor(tiny_dir):
    image = random_images(6, (32, 32))[0]
    floor = DepthEstimator(str(tiny_dir), quantize="floor", output_size="model")([image])[0].astype(int)
    rounded = DepthEstimator(str(tiny_dir), quantize="round", output_size="model")([image])[0].astype(int)
    assert ((rounded - floor) >= 0).all() and ((rounded - floor) <= 1).all() and (rounded != floor).any()
    assert floor.max() == 255 and rounded.max() == 255 and floor.shape == (56, 56, 3)
    small = DepthEstimator(str(tiny_dir), input_size=28, output_size="model")([image])[0]
    assert small.shape == (28, 28, 3)  # 28 px in, a 2 x 2 grid of 14 px patches, 28 px out
    assert DepthEstimator(str(tiny_dir), input_size=28)([image])[0].shape == (32, 32, 3)  # resized back to the image


def test_depth_worker_passes_the_options(tiny_dir, tmp_path):
    images = random_images(7, (40, 48), (40, 48))
    shard = tmp_path / "part-00000.parquet"
    write_table(str(shard), {"id": ["a", "b"], "image": [encode(Image.fromarray(a), "png") for a in images], "label": [0, 1]})
    factory = pickle.loads(pickle.dumps(functools.partial(depth_worker, str(tiny_dir), 2, **STUDY_DEPTH)))
    columns = factory()({"name": shard.name, "src": str(shard)})
    expected = DepthEstimator(str(tiny_dir), batch_size=2, **STUDY_DEPTH)(images)
    for data, want in zip(columns["image"], expected):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), want) and want.shape == (56, 56, 3)


def test_depth_options_reach_the_key_only_when_they_change_it(tmp_path):
    from synthray.graph.probes import check_probe, probe_setup
    from tests.conftest import tiny_cfg

    base = probe_setup(tiny_cfg(tmp_path), "depth")
    assert set(base.params) >= {"dtype", "input_size", "square_crop", "output_size", "quantize"}
    assert set(base.identity) == {"model", "batch_size", "device"}  # the key depth views had before the options
    study = [f"probes.depth.{k}={'null' if v is None else str(v).lower()}" for k, v in STUDY_DEPTH.items()]
    setup = probe_setup(tiny_cfg(tmp_path, *study), "depth")
    assert {k: setup.identity[k] for k in ("dtype", "square_crop", "output_size", "quantize")} == {
        "dtype": "float32", "square_crop": True, "output_size": "model", "quantize": "floor"}
    assert "input_size" not in setup.identity  # null is the processor's own size, as before
    for override, message in [("probes.depth.dtype=half", "unknown probes.depth.dtype 'half'; choices: bfloat16, float16, float32"),
                              ("probes.depth.input_size=-1", "probes.depth.input_size must be null"),
                              ("probes.depth.square_crop=1", "probes.depth.square_crop takes true or false"),
                              ("probes.depth.output_size=native", "unknown probes.depth.output_size .native.; choices: input, model"),
                              ("+probes.depth.invert=true", "probes.depth has no key invert")]:
        with pytest.raises(SynthrayError, match=message):
            check_probe(tiny_cfg(tmp_path, override), "depth", ["tiny-cnn"])
