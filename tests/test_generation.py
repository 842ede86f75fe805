"""Generation: the real diffusers pipeline class built tiny, loaded back by from_pretrained, run on Ray Data."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthray.generation.generators import RealHoldoutGenerator, build_generator, resolve_model
from synthray.generation.stage import build_prompt_table, ensure_real, ensure_tiny_model, generate, synthetic_artifact
from synthray.images import dataset_digest, decode, read_images, to_uint8
from synthray.registry import SynthrayError
from tests.conftest import tiny_cfg


@pytest.fixture(scope="module")
def tiny_sd(shared_storage):
    cfg = tiny_cfg(shared_storage)
    entry = dict(cfg.generators["tiny-sd"])
    ensure_tiny_model(cfg, entry)
    spec = {"name": "tiny-sd", "kind": "diffusers", "pipeline": entry["pipeline"], "dtype": entry["dtype"],
            "model_path": resolve_model(cfg, entry), "params": {"steps": 2, "guidance": 2.0, "resolution": 32}}
    return build_generator(spec)


def test_tiny_sd_is_the_real_pipeline_loaded_from_disk(tiny_sd):
    from diffusers import StableDiffusionPipeline

    assert type(tiny_sd.pipe) is StableDiffusionPipeline
    assert len(tiny_sd.pipe.tokenizer) == 514  # 256 byte symbols, their </w> forms, start and end
    rows = pd.DataFrame({"prompt": ["a digit one", "a digit two"], "seed": [1, 2]})
    images = tiny_sd(rows)
    assert [im.shape for im in images] == [(32, 32, 3), (32, 32, 3)]
    assert images[0].dtype == np.float32 and 0.0 <= images[0].min() and images[0].max() <= 1.0 and images[0].std() > 0


def test_batched_output_equals_per_row(tiny_sd):
    """Per-row seeds make a row's image independent of its batch, up to float kernels that are not
    batch-invariant (diffusers' own test allows 1e-4 on floats; here at most one grey level, in few pixels)."""
    rows = pd.DataFrame({"prompt": ["one", "two", "three"], "seed": [11, 12, 13]})
    batched = tiny_sd(rows)
    single = [tiny_sd(rows.iloc[[i]])[0] for i in range(3)]
    for a, b in zip(batched, single):
        diff = np.abs(to_uint8(a)[0].astype(int) - to_uint8(b)[0].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_real_holdout_draws_held_out_images_of_the_class(shared_storage):
    cfg = tiny_cfg(shared_storage)
    real = ensure_real(cfg)
    gen = RealHoldoutGenerator({"real_path": str(real.path)})
    table = build_prompt_table(cfg, "real-holdout", "classname")
    images = gen(table)
    holdout = read_images(real.path / "control")
    pool = {bytes(np.asarray(decode(b)).tobytes()): c for b, c in zip(holdout["image"], holdout["class_id"])}
    for img, cid in zip(images, table["class_id"]):
        assert pool[np.asarray(img).tobytes()] == cid
    per_class = [np.asarray(im).tobytes() for im, c in zip(images, table["class_id"]) if c == "3"]
    assert len(set(per_class)) == len(per_class), "no repeats while the pool lasts"


def test_missing_weights_fail_early(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(SynthrayError, match="not in the local Hugging Face cache"):
        resolve_model(cfg, {"model": "no-such-org/no-such-model"})
    with pytest.raises(SynthrayError, match="no model_index.json"):
        resolve_model(cfg, {"model": str(tmp_path)})


def test_generation_stage_on_ray_data(ray_cluster, shared_storage, tmp_path):
    cfg = tiny_cfg(shared_storage, "generation.num_actors=2")
    art = generate(cfg, "tiny-sd", "classname")
    files = sorted((art.path / "data").glob("*.parquet"))
    assert len(files) == 4  # 60 rows in shards of 16
    table = pq.read_table(files[0]).to_pandas()  # plain pyarrow/pandas read the shards
    assert {"id", "image", "label", "class_id", "prompt", "seed", "generator", "protocol"} <= set(table.columns)
    assert Image.open(__import__("io").BytesIO(table["image"][0])).format == "JPEG"
    assert art.meta()["rows"] == 60 and art.meta()["digest"] == dataset_digest(art.path / "data")

    # Another storage root, one actor instead of two, and an interruption: the same bytes.
    other_cfg = tiny_cfg(tmp_path, "generation.num_actors=1")
    other = synthetic_artifact(other_cfg, "tiny-sd", "classname")
    assert other.key == art.key
    other.partial.joinpath("data").mkdir(parents=True)
    kept = other.partial / "data" / files[1].name
    os.link(files[1], kept)  # a shard left behind by a stopped run
    generate(other_cfg, "tiny-sd", "classname")
    assert other.meta()["digest"] == art.meta()["digest"]
    assert (other.path / "data" / files[1].name).stat().st_ino == files[1].stat().st_ino, "finished shards are not redone"


def test_quality_guard_flags_nan_and_black():
    ok = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert to_uint8(ok)[1] == "ok" and to_uint8(ok)[0].max() == 128
    nan = ok.copy()
    nan[0, 0, 0] = np.nan
    assert to_uint8(nan)[1] == "nan"
    assert to_uint8(np.zeros((4, 4, 3), dtype=np.float32))[1] == "black"
    assert to_uint8(Image.new("RGB", (4, 4)))[1] == "black"


def test_generation_fails_past_the_bad_fraction(ray_cluster, shared_storage, tmp_path):
    """A pipeline whose VAE decodes everything to black (as a safety checker would) fails the stage, counted."""
    import torch
    from diffusers import StableDiffusionPipeline

    base = tiny_cfg(shared_storage)
    ensure_tiny_model(base, dict(base.generators["tiny-sd"]))
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(base, dict(base.generators["tiny-sd"])))
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.zero_()
        pipe.vae.decoder.conv_out.bias.fill_(-10.0)  # decoded pixels clamp to 0
    pipe.save_pretrained(tmp_path / "black-sd")
    entry = {"kind": "diffusers", "pipeline": "StableDiffusionPipeline", "model": str(tmp_path / "black-sd"),
             "dtype": "float32", "steps": 2, "guidance": 2.0, "resolution": 32}
    cfg = tiny_cfg(tmp_path / "runs", "prompts.n_per_class=2", *[f"generators.black-sd.{k}={v}" for k, v in entry.items()])
    with pytest.raises(SynthrayError, match=r"20 of 20 images are NaN or all black \({'black': 20}\)"):
        generate(cfg, "black-sd", "classname")
    assert not synthetic_artifact(cfg, "black-sd", "classname").is_complete()


def test_killed_generation_resumes_byte_identical(ray_cluster, tmp_path):
    """Kill the driver (SIGKILL) while shards are being written, rerun, compare with an uninterrupted run."""
    import subprocess
    import sys
    import time

    overrides = ("prompts.n_per_class=12", "generation.shard_size=8")
    reference = generate(tiny_cfg(tmp_path / "reference", *overrides), "tiny-sd", "classname")
    cfg = tiny_cfg(tmp_path / "killed", *overrides)
    art = synthetic_artifact(cfg, "tiny-sd", "classname")
    script = ("import sys; from tests.conftest import tiny_cfg; from synthray.generation.stage import generate; "
              "import ray; ray.init(); generate(tiny_cfg(sys.argv[1], *sys.argv[2:]), 'tiny-sd', 'classname')")
    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "killed"), *overrides], env=env,
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = art.partial / "data"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and len(list(shards.glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    survivors = {p.name: p.stat().st_ino for p in shards.glob("part-*.parquet")}
    assert 2 <= len(survivors) < 15 and not art.is_complete()

    generate(cfg, "tiny-sd", "classname")
    assert art.meta()["digest"] == reference.meta()["digest"]
    for name, inode in survivors.items():
        assert (art.path / "data" / name).stat().st_ino == inode, "finished shards are kept, not redone"


def test_shards_are_readable_by_hf_datasets_and_export_to_imagefolder(ray_cluster, shared_storage, tmp_path):
    import datasets

    from synthray.cli import main

    art = generate(tiny_cfg(shared_storage, "generation.num_actors=2"), "tiny-sd", "classname")
    files = sorted(str(p) for p in (art.path / "data").glob("*.parquet"))
    hf = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == 60 and {"image", "label", "prompt", "seed"} <= set(hf.column_names)

    assert main(["export", str(art.path), str(tmp_path / "folder")]) == 0
    images = sorted((tmp_path / "folder").rglob("*.jpg"))
    assert len(images) == 60 and sorted({p.parent.name for p in images}) == [str(d) for d in range(10)]
    assert Image.open(images[0]).size == (32, 32)


TINY_TWINS = [name for name in tiny_cfg("/unused").generators if name.startswith("tiny-")]


@pytest.mark.parametrize("name", TINY_TWINS)
def test_every_tiny_family_generates_through_the_ray_data_stage(ray_cluster, shared_storage, name):
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1")
    art = generate(cfg, name, "classname")
    table = read_images(art.path / "data")
    assert len(table) == 10 and set(table["generator"]) == {name}
    assert art.meta()["quality"] == {"ok": 10}
    assert decode(table["image"][0]).size == (32, 32)


def test_protocols():
    from synthray.generation.generators import sampling_params

    cfg = tiny_cfg("/unused")
    sd15, schnell = dict(cfg.generators["sd15"]), dict(cfg.generators["flux1-schnell"])
    assert sampling_params(sd15, "model-default") == {"steps": 50, "guidance": 7.5, "resolution": 512}
    assert sampling_params(sd15, "paper") == {"steps": 50, "guidance": 2.0, "resolution": 512}
    assert sampling_params(schnell, "paper") == {"steps": 4, "guidance": 2.0, "resolution": 512}
    assert sampling_params(dict(cfg.generators["qwen-image"]), "model-default")["resolution"] == 1328
    with pytest.raises(SynthrayError, match="unknown generation protocol"):
        sampling_params(sd15, "fast")


def test_png_and_stored_size(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1", "generation.image_format=png", "generation.stored_size=24")
    art = generate(cfg, "tiny-sd", "classname")
    table = read_images(art.path / "data")
    img = Image.open(__import__("io").BytesIO(table["image"][0]))
    assert img.format == "PNG" and img.size == (24, 24)
