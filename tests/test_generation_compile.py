"""Speed settings of the generation stage: compiled and fused pipelines draw the eager images (up to float noise),
the dataset key records every setting that can change bits, and compiled code is cached on the node and in storage."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from synthray.core import storage
from synthray.core.images import read_images
from synthray.core.models import Models
from synthray.core.registry import SynthrayError
from synthray.generation.compiled import kernels_identity
from synthray.generation.kinds import build_generator, sampling_params
from synthray.graph.synthetic import build_prompt_table, generator_entry, synthetic_artifact
from tests.conftest import tiny_cfg

ROWS = pd.DataFrame({"prompt": ["a digit one", "a digit two", "a digit three"], "seed": [1, 2, 3]})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two float images in [0, 1]; 35 dB is far below a visible change."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def generator(cfg, name: str, **speed):
    """A generator of `name` as an actor builds it, with the speed settings `speed` (the spec keys)."""
    entry = generator_entry(cfg, name)
    path = Models.from_cfg(cfg).locate(str(entry["model"]), "pipeline", resolution=int(entry["resolution"]))
    spec = {"name": name, "kind": "diffusers", "pipeline": entry["pipeline"], "dtype": entry["dtype"], "model_path": path,
            "params": sampling_params(entry, "model-default"), "call": entry.get("call"),
            "guidance_kwarg": entry.get("guidance_kwarg"), **speed}
    return build_generator(spec)


def kernels(cfg, name: str) -> dict:
    return synthetic_artifact(cfg, name, "classname", build_prompt_table(cfg, name, "classname")).spec["kernels"]


@pytest.mark.slow
def test_dataset_key_records_the_speed_settings_that_change_bits():
    legacy = {"vae_tiling": False, "channels_last": True, "compile": False}  # what every key held before
    assert kernels(tiny_cfg("/unused", "generation.channels_last=true"), "tiny-sd") == legacy
    assert kernels(tiny_cfg("/unused", "generation.fuse_qkv=true"), "tiny-lumina2") == legacy  # no fused path there
    # auto: NHWC off for the StableDiffusionPipeline UNet (measured slower), on elsewhere as before
    assert kernels(tiny_cfg("/unused"), "tiny-sd")["channels_last"] is False
    assert kernels(tiny_cfg("/unused"), "tiny-sdxl") == legacy
    # `true` compiled with max-autotune before and compiles with inductor's default mode now: a new key
    assert kernels(tiny_cfg("/unused", "generation.compile=true"), "tiny-sd")["compile"] == "default"
    cfg = tiny_cfg("/unused", "generation.compile=max-autotune", "generation.compile_vae=true", "generation.fuse_qkv=true",
                   "generation.compile_cpu=true", "generation.compile_cache=node", "generation.compile_timeout_s=null")
    assert kernels(cfg, "tiny-sd") == {"vae_tiling": False, "channels_last": False, "compile": "max-autotune",
                                       "compile_vae": True, "fuse_qkv": True,
                                       "compile_scope": "regions"}  # where it runs and its time budget are not in the key
    # The whole-model compile (every compiled key before regions) keeps its key; reduce-overhead always compiles whole.
    assert "compile_scope" not in kernels(tiny_cfg("/unused", "generation.compile=default", "generation.compile_scope=whole"), "tiny-sd")
    assert "compile_scope" not in kernels(tiny_cfg("/unused", "generation.compile=reduce-overhead"), "tiny-sd")
    assert kernels(tiny_cfg("/unused", "generation.attention=math"), "tiny-sd")["attention"] == "math"
    assert "compile_vae" not in kernels_identity(tiny_cfg("/unused", "generation.compile_vae=true").generation, "FluxPipeline")


@pytest.mark.parametrize("override, message", [
    ("generation.compile=fast", "generation.compile must be false, true, default, max-autotune or reduce-overhead; got 'fast'"),
    ("generation.channels_last=maybe", "generation.channels_last must be by-pipeline, true or false; got 'maybe'"),
    ("generation.compile_cache=s3", "unknown generation.compile_cache 's3'"),
    ("generation.fuse_qkv=yes", "generation.fuse_qkv takes true or false, got 'yes'"),
    ("generation.compile_scope=blocks", "generation.compile_scope"),
    ("generation.compile_timeout_s=0", "generation.compile_timeout_s must be a number of seconds > 0 or null; got 0"),
    ("generation.attention=sage", "generation.attention"),
])
def test_bad_speed_settings_are_one_line(override, message):
    with pytest.raises(SynthrayError, match=message) as err:  # at compose (the schema) or as the plan checks
        cfg = tiny_cfg("/unused", override)
        sampling_params(generator_entry(cfg, "tiny-sd"), "model-default", cfg.generation)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-pixart", "tiny-flux"])
def test_fused_qkv_draws_the_same_images(shared_storage, name):
    cfg = tiny_cfg(shared_storage)
    fused = generator(cfg, name, fuse_qkv=True)
    denoiser = getattr(fused.pipe, "unet", None) or fused.pipe.transformer
    fused_modules = [m for m in denoiser.modules() if getattr(m, "fused_projections", False)]
    assert fused_modules, "the fused path is taken"
    for a, b in zip(generator(cfg, name)(ROWS), fused(ROWS)):
        assert psnr(a, b) >= 35


NO_COMPILER = not (shutil.which("g++") or shutil.which("clang++"))


@pytest.mark.slow
@pytest.mark.skipif(NO_COMPILER, reason="inductor on CPU needs a C++ compiler (g++ or clang++)")
@pytest.mark.parametrize("name", ["tiny-sd", pytest.param("tiny-flux", marks=pytest.mark.deep)])  # a UNet and a DiT
def test_compiled_on_cpu_draws_the_eager_images_and_caches_the_code(shared_storage, tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "unused"))  # restored after: inductor reads it per use
    cfg = tiny_cfg(shared_storage)
    eager = generator(cfg, name)(ROWS)
    where = {"scratch": str(tmp_path / "node-a"), "storage": str(tmp_path / "storage")}
    fast = generator(cfg, name, compile="default", compile_scope="regions", compile_vae=True, compile_cpu=True, fuse_qkv=True, **where)
    assert fast.compile_cache.local.is_relative_to(tmp_path / "node-a" / "compile-cache")
    for a, b in zip(eager, fast(ROWS)):
        assert psnr(a, b) >= 35
    # By regions (the default scope): blocks compiled one by one, none inside another compiled one.
    denoiser = getattr(fast.pipe, "unet", None) or fast.pipe.transformer
    compiled = {type(m).__name__ for m in denoiser.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    if name == "tiny-sd":
        assert {"BasicTransformerBlock", "ResnetBlock2D"} <= compiled, compiled
        assert not compiled & {"UNet2DConditionModel", "Transformer2DModel", "CrossAttnDownBlock2D"}, "no region holds another"
    assert compiled and type(denoiser).__name__ not in compiled
    shared = storage.list_files(str(tmp_path / "storage" / "compile-cache"))
    assert len(shared) == 1 and next(iter(shared)).endswith("/cpu.tar"), shared  # published after the first batch

    # A new node: its empty scratch is filled from storage before anything compiles.
    other = generator(cfg, name, compile="default", compile_scope="regions", compile_cpu=True, scratch=str(tmp_path / "node-b"),
                      storage=where["storage"])
    assert sum(1 for p in other.compile_cache.local.rglob("*") if p.is_file()) > 10


def test_compile_asked_on_cpu_needs_a_compiler(shared_storage, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ or clang++ here
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(SynthrayError, match="needs a C\\+\\+ compiler"):
        generator(tiny_cfg(shared_storage), "tiny-sd", compile="default", compile_cpu=True, scratch=str(tmp_path))
    generator(tiny_cfg(shared_storage), "tiny-sd", compile="default", scratch=str(tmp_path))  # CPU, not asked: eager


@pytest.mark.slow
@pytest.mark.deep  # a minute and a half of CPU compiling; the direct test above covers the cache on a node
def test_compiled_stage_on_ray_data_uses_the_node_cache(ray_cluster, shared_storage, tmp_path):
    """The stage passes the node's scratch and the storage root to its actors: compiled code lands in both."""
    from synthray.graph.synthetic import generate_dataset

    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1", f"scratch={tmp_path / 'scratch'}", "generation.compile=default",
                   "generation.compile_cpu=true")
    ref = generate_dataset(cfg, "tiny-sd", "classname")
    art = ref.artifact
    assert art.spec["kernels"]["compile"] == "default" and art.meta()["quality"] == {"ok": 10}
    assert len(read_images(ref.uri)) == 10
    assert any((tmp_path / "scratch" / "compile-cache").rglob("*.py"))
    assert storage.list_files(storage.join(str(shared_storage), "compile-cache"))


@pytest.mark.skipif(NO_COMPILER, reason="inductor on CPU needs a C++ compiler (g++ or clang++)")
def test_a_compile_past_its_budget_fails_the_stage_in_one_line_and_writes_nothing(shared_storage, tmp_path, monkeypatch):
    """generation.compile_timeout_s: the first batch (the one that compiles) is given up at the deadline, so the stage
    stops with one line naming the setting; no shard is written and the dataset key holds nothing."""
    from synthray.graph.synthetic import generate_dataset

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "unused"))
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1", f"scratch={tmp_path / 'scratch'}", "generation.compile=default",
                   "generation.compile_cpu=true", "generation.compile_timeout_s=0.001", "generation.compile_cache=node")
    with pytest.raises(SynthrayError, match=r"generate tiny-sd: compiling took over generation.compile_timeout_s=0.001 s") as err:
        generate_dataset(cfg, "tiny-sd", "classname")
    assert "\n" not in str(err.value)
    art = synthetic_artifact(cfg, "tiny-sd", "classname", build_prompt_table(cfg, "tiny-sd", "classname"))
    assert not art.is_complete()
    assert not [f for f in storage.list_files(art.uri) if f.endswith(".parquet")]


@pytest.mark.slow
def test_forced_attention_backends_need_cuda_on_cpu(shared_storage):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    with pytest.raises(SynthrayError, match="^generation.attention=flash needs a CUDA GPU; without one use default or math$"):
        generator(tiny_cfg(shared_storage), "tiny-sd", attention="flash")
    math = generator(tiny_cfg(shared_storage), "tiny-sd", attention="math")(ROWS)
    for a, b in zip(generator(tiny_cfg(shared_storage), "tiny-sd")(ROWS), math):
        assert psnr(a, b) >= 35
