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

from synthray import storage
from synthray.artifacts import Store
from synthray.images import encode, write_table
from synthray.models import Models, check_model
from synthray.probes.depth import DEFAULT_DEPTH_MODEL, DepthEstimator, build_tiny_depth, depth_worker
from synthray.registry import SynthrayError


def random_images(seed: int, *sizes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model has nothing to split across threads; on a busy 2-core machine they only wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
