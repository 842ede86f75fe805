"""One resolver for every model name, and hub weights staged once to object storage for nodes without the hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from synthray.core.artifacts import Store
from synthray.core.models import Models, check_model, model_identity, staged_uri
from synthray.core.registry import SynthrayError
from tests.rig import BUCKET, bucket_objects

REPO = "synthray-tests/tiny-sd"


def test_identity_is_the_name_and_revision_never_a_cache_path(tmp_path):
    assert model_identity("org/model") == {"hub": "org/model", "revision": "main"}
    assert model_identity("org/model@0123abc") == {"hub": "org/model", "revision": "0123abc"}
    assert model_identity("tiny:sd", resolution=32) == {"tiny": "sd", "version": 1, "resolution": 32}
    assert model_identity("s3://bucket/weights/sd15/") == {"uri": "s3://bucket/weights/sd15"}
    assert model_identity(str(tmp_path)) == {"folder": str(tmp_path)}


def test_unknown_tiny_family_and_missing_weights_are_one_line(tmp_path):
    models = Models(Store(str(tmp_path / "store")))
    with pytest.raises(SynthrayError, match="unknown tiny model family 'sdd'"):
        check_model(models, "tiny:sdd", "pipeline", "generators.x.model")
    with pytest.raises(SynthrayError) as err:
        check_model(models, str(tmp_path), "pipeline", "generators.x.model")
    assert "generators.x.model" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SynthrayError) as err:
        check_model(models, "synthray-tests/nowhere", "encoder", "metrics.encoders.clip.model")
    assert "stage-weights" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def hub_cache_with_tiny_sd(tmp_path, monkeypatch):
    """A local Hugging Face cache holding a tiny SD pipeline as `synthray-tests/tiny-sd` (the hub's layout)."""
    import huggingface_hub.constants

    from synthray.tiny.pipelines import build_tiny_sd

    cache = tmp_path / "hf"
    commit = "1" * 40
    repo = cache / f"models--{REPO.replace('/', '--')}"
    build_tiny_sd(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_staged_weights_load_on_a_node_without_the_hub(s3_server, hub_cache_with_tiny_sd, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    from diffusers import StableDiffusionPipeline

    from synthray.cli import main

    hub = f"s3://{BUCKET}/hub"
    assert main(["stage-weights", REPO, f"hub.cache={hub}"]) == 0
    assert f"staged {REPO}" in capsys.readouterr().out
    objects = bucket_objects(s3_server, prefix="hub/")
    assert "hub/models--synthray-tests--tiny-sd/main/_MANIFEST.json" in objects
    assert any(k.endswith("model_index.json") for k in objects)

    # Another node: an empty Hugging Face cache and its own scratch folder.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    node = Models(Store(f"s3://{BUCKET}/runs", scratch=str(tmp_path / "node-scratch")), hub_cache=hub)
    check_model(node, REPO, "pipeline", "generators.x.model")
    folder = node.locate(REPO, "pipeline")
    assert Path(folder).is_relative_to(tmp_path / "node-scratch")
    assert StableDiffusionPipeline.from_pretrained(folder).unet is not None
    assert node.locate(REPO, "pipeline") == folder  # downloaded once per node
    with pytest.raises(SynthrayError, match="stage-weights"):
        check_model(Models(node.store), REPO, "pipeline", "generators.x.model")  # no hub.cache: a one-line miss
    assert staged_uri(hub, REPO) == f"{hub}/models--synthray-tests--tiny-sd/main"


def test_tiny_twins_are_artifacts_copied_to_each_node(s3_server, tmp_path):
    a = Models(Store(f"s3://{BUCKET}/twins", scratch=str(tmp_path / "a")))
    b = Models(Store(f"s3://{BUCKET}/twins", scratch=str(tmp_path / "b")))
    first = a.locate("tiny:clip", "encoder")
    second = b.locate("tiny:clip", "encoder")  # built once, in storage; each node copies it to its own scratch
    assert Path(first).is_relative_to(tmp_path / "a") and Path(second).is_relative_to(tmp_path / "b")
    assert sorted(os.listdir(first)) == sorted(os.listdir(second))
    assert (Path(first) / "model.safetensors").read_bytes() == (Path(second) / "model.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "a")
