"""Feature encoders and CLIPScore on tiny offline twins, saved and loaded back the way real checkpoints are (no Ray)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthray.core import storage
from synthray.core.artifacts import Store
from synthray.core.models import Models, check_model
from synthray.core.registry import SynthrayError
from synthray.metrics.clipscore import ClipScorer
from synthray.metrics.encoders import DEFAULT_MODELS, FEATURE_MODELS
from synthray.tiny.encoders import build_tiny_encoder
from synthray.tiny.tokenizers import write_clip_tokenizer

KINDS = ["clip", "dinov2", "inception"]
# Sizes that exercise landscape, portrait, up- and down-scaling before the center crop.
SIZES = [(32, 32), (20, 40), (64, 48), (100, 30), (300, 200), (17, 90)]


def _models(root: Path, allow_download: bool = False) -> Models:
    return Models(Store(storage.normalize(root)), allow_download=allow_download)


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Each tiny twin, built once through `Models.locate('tiny:<kind>')` into a content-addressed artifact."""
    models = _models(tmp_path_factory.mktemp("storage"))
    return {kind: models.locate(f"tiny:{kind}", "encoder") for kind in KINDS}


@pytest.fixture(scope="module")
def encoders(tiny) -> dict:
    return {kind: FEATURE_MODELS.get(kind)(tiny[kind], device="cpu") for kind in KINDS}


def test_registry_and_defaults():
    assert FEATURE_MODELS.names() == sorted(DEFAULT_MODELS) == sorted(KINDS)
    assert DEFAULT_MODELS["clip"] == "openai/clip-vit-large-patch14"
    assert DEFAULT_MODELS["dinov2"] == "facebook/dinov2-large"


def test_tiny_resolves_to_one_artifact(tiny):
    for kind, path in tiny.items():  # <storage>/tiny-models/<key>/model
        assert json.loads((Path(path).parent / "spec.json").read_text())["tiny"] == kind
        assert Path(path).name == "model" and Path(path).parents[1].name == "tiny-models"
    assert len({Path(p).parent for p in tiny.values()}) == len(KINDS)
    # Same spec, same key: a second resolve reuses the folder instead of rebuilding it.
    models = _models(Path(tiny["clip"]).parents[2])
    art = models.tiny_artifact("tiny:clip")
    assert art.is_complete() and Path(art.uri) == Path(tiny["clip"]).parent
    before = art.manifest()
    assert models.locate("tiny:clip", "encoder") == tiny["clip"] and art.manifest() == before
    check_model(models, "tiny:clip", "encoder", "metrics.encoders.clip.model")
    with pytest.raises(SynthrayError, match="unknown tiny model family 'clipp'"):
        models.locate("tiny:clipp", "encoder")
    with pytest.raises(SynthrayError, match="unknown tiny model family 'clipp'"):
        check_model(models, "tiny:clipp", "encoder", "metrics.encoders.clip.model")


@pytest.mark.parametrize("kind", KINDS)
def test_features_shape_determinism_and_weights_from_disk(kind, tiny, encoders):
    enc = encoders[kind]
    images = _images(0)
    feats = enc(images)
    assert feats.shape == (len(images), enc.dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    np.testing.assert_array_equal(enc(images), feats)
    # A second load gives the same features: the weights come from disk, not a fresh random init.
    np.testing.assert_allclose(FEATURE_MODELS.get(kind)(tiny[kind], device="cpu")(images), feats, rtol=1e-5, atol=1e-6)
    # One batched preprocessing call gives each image the bytes it gets alone.
    np.testing.assert_array_equal(enc.preprocess.batch(images, torch.device("cpu")).numpy(),
                                  torch.stack([enc.preprocess(im, torch.device("cpu")) for im in images]).numpy())
    # Batching does not change features, and different images give different features.
    batched = FEATURE_MODELS.get(kind)(tiny[kind], device="cpu", batch_size=4)(images)
    np.testing.assert_allclose(batched, feats, rtol=1e-4, atol=1e-5)
    other = enc(_images(1))
    assert not np.allclose(other, feats)
    assert len({row.tobytes() for row in feats}) == len(images)
    assert enc([]).shape == (0, enc.dim)
    with pytest.raises(ValueError, match="uint8"):
        enc([images[0].astype(np.float32)])


def test_preprocessing_matches_reference_transforms(tiny, encoders):
    """Our torch transform equals the HF image processor / timm eval transform to within one uint8 level."""
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config
    from transformers import AutoImageProcessor

    cpu = torch.device("cpu")
    for kind in KINDS:
        enc = encoders[kind]
        if kind == "inception":
            ref = create_transform(**resolve_model_data_config(enc.model), is_training=False)
            expected = [ref(Image.fromarray(im)) for im in _images(2)]
        else:
            proc = AutoImageProcessor.from_pretrained(tiny[kind])
            expected = [proc(images=im, return_tensors="pt")["pixel_values"][0] for im in _images(2)]
        for im, want in zip(_images(2), expected):
            got = enc.preprocess(im, cpu)
            assert got.shape == want.shape == (3, 32, 32), kind
            level = 1.0 / 255.0 / min(enc.preprocess.std)
            assert (got - want).abs().max() <= level + 1e-4, kind


def test_clip_tokenizer_is_the_full_offline_vocab(tiny, tmp_path):
    scorer = ClipScorer(tiny["clip"], device="cpu")
    expected = write_clip_tokenizer(tmp_path / "tok")
    assert len(scorer.tokenizer) == expected == scorer.model.config.text_config.vocab_size


def test_clipscore_range_and_prompt_dependence(tiny):
    scorer = ClipScorer(tiny["clip"], device="cpu")
    image = _images(3)[0]
    prompts = ["a photo of a cat", "a red truck on a road", "digit seven", "a bowl of soup", "zebra", "x" * 1000]
    scores = scorer([image] * len(prompts), prompts)  # the last prompt needs truncation to 77 tokens
    assert scores.shape == (len(prompts),) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 100)).all()
    assert len(set(scores.tolist())) > 1
    np.testing.assert_array_equal(scorer([image] * len(prompts), prompts), scores)
    with pytest.raises(ValueError, match="prompts"):
        scorer([image], prompts)


def test_missing_weights_fail_in_one_line(tmp_path):
    model = "synthray-tests/no-such-encoder"
    with pytest.raises(SynthrayError) as err:
        check_model(_models(tmp_path), model, "encoder", "metrics.encoders.clip.model")
    assert model in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SynthrayError) as err:  # a worker on a node without the weights
        _models(tmp_path).locate(model, "encoder")
    assert model in str(err.value) and "\n" not in str(err.value)
    check_model(_models(tmp_path, allow_download=True), model, "encoder", "metrics.encoders.clip.model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SynthrayError) as err:
        check_model(_models(tmp_path), str(empty), "encoder", "metrics.encoders.clip.model")
    message = str(err.value)
    assert str(empty) in message and "weights not found" in message and "\n" not in message


def test_hub_id_resolves_from_the_local_cache(tiny, tmp_path, monkeypatch):
    """A hub id found in the HF cache resolves offline to its snapshot; a snapshot without weights is a miss."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "0" * 40
    for name in ("full", "partial"):  # the HF cache layout: refs/main names the commit of snapshots/<commit>
        repo = tmp_path / "hub" / f"models--synthray-tests--{name}"
        shutil.copytree(tiny["dinov2"], repo / "snapshots" / commit)
        if name == "partial":  # an interrupted download: the config arrived, the weights did not
            (repo / "snapshots" / commit / "model.safetensors").unlink()
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    models = _models(tmp_path)
    check_model(models, "synthray-tests/full", "encoder", "metrics.encoders.dinov2.model")
    path = models.locate("synthray-tests/full", "encoder")
    assert Path(path).resolve() == (tmp_path / "hub" / "models--synthray-tests--full" / "snapshots" / commit).resolve()
    assert FEATURE_MODELS.get("dinov2")(path, device="cpu")(_images(0)).shape == (len(SIZES), 32)
    with pytest.raises(SynthrayError, match="'synthray-tests/partial' are not in the local Hugging Face cache"):
        check_model(models, "synthray-tests/partial", "encoder", "metrics.encoders.dinov2.model")
    with pytest.raises(SynthrayError, match="synthray-tests/partial"):
        models.locate("synthray-tests/partial", "encoder")


def test_build_tiny_encoder_is_seeded(tmp_path):
    a = build_tiny_encoder("dinov2", tmp_path / "a")
    b = build_tiny_encoder("dinov2", tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


@pytest.mark.parametrize("kind", KINDS)
def test_device_preprocessing_matches_the_cpu_path(kind, encoders):
    """The GPU path (upload uint8, resize, crop and normalise on the device), run here on the CPU, gives the CPU
    path's pixels but for fixed-point rounding, and features far closer to them than bf16 autocast does."""
    enc, cpu = encoders[kind], torch.device("cpu")
    images = _images(4) + [np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    want = torch.stack([enc.preprocess(im, cpu) for im in images])
    got = enc.preprocess.on_device(images, cpu)
    assert got.shape == want.shape and got.dtype == torch.float32
    levels = (got - want).abs() * 255.0 * torch.tensor(enc.preprocess.std).view(1, 3, 1, 1)
    assert levels.max() <= 2.0 + 1e-3 and (levels > 0.5).float().mean() < 0.01, kind
    # Images of several sizes are batched by size and put back in their order.
    torch.testing.assert_close(got, torch.cat([enc.preprocess.on_device([im], cpu) for im in images]))
    with torch.inference_mode():
        ref, dev = enc.embed(want), enc.embed(got)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = enc.embed(want).float()
    assert (dev - ref).abs().max() < (bf16 - ref).abs().max() / 3, kind
    assert torch.nn.functional.cosine_similarity(dev, ref).min() > 1 - 1e-5, kind
    with pytest.raises(ValueError, match="uint8"):
        enc.preprocess.on_device([images[0].astype(np.float32)], cpu)


def test_device_preprocessing_needs_a_fixed_size():
    from synthray.metrics.encoders import Preprocess

    free = Preprocess(32, None, (0.5,) * 3, (0.5,) * 3)  # shortest edge only: sizes differ per image
    assert not free.fixed and Preprocess(32, (32, 32), (0.5,) * 3, (0.5,) * 3).fixed
    with pytest.raises(ValueError, match="fixed size"):
        free.on_device(_images(0), torch.device("cpu"))
