"""Generation: the real diffusers pipeline class built tiny, loaded back by from_pretrained, run on Ray Data."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthray.core.artifacts import Artifact, DatasetRef
from synthray.core.images import dataset_digest, decode, read_images, shard_files, to_uint8
from synthray.core.models import Models, check_model
from synthray.core.registry import SynthrayError
from synthray.generation.kinds import RealHoldoutGenerator, build_generator
from synthray.graph.real import real_data
from synthray.graph.synthetic import build_prompt_table, generate_dataset, synthetic_artifact
from tests.conftest import tiny_cfg


def dataset(cfg, generator: str, style: str = "classname") -> Artifact:
    """The synthetic artifact a trial of (generator, style) plans, not built."""
    return synthetic_artifact(cfg, generator, style, build_prompt_table(cfg, generator, style))


def run_generation(cfg, generator: str, style: str = "classname") -> DatasetRef:
    """The generation stage as a trial runs it: real data (control generators draw from it), prompt table, dataset."""
    return generate_dataset(cfg, generator, style)


def tiny_sd_folder(cfg) -> str:
    entry = cfg.generators["tiny-sd"]
    return Models.from_cfg(cfg).locate(str(entry.model), "pipeline", resolution=int(entry.resolution))


@pytest.fixture(scope="module")
def tiny_sd(shared_storage):
    cfg = tiny_cfg(shared_storage)
    entry = dict(cfg.generators["tiny-sd"])
    spec = {"name": "tiny-sd", "kind": "diffusers", "pipeline": entry["pipeline"], "dtype": entry["dtype"],
            "model_path": tiny_sd_folder(cfg), "params": {"steps": 2, "guidance": 2.0, "resolution": 32}}
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
    real = real_data(cfg)
    gen = RealHoldoutGenerator({"control_uri": DatasetRef(real, "control").uri})
    table = build_prompt_table(cfg, "real-holdout", "classname")
    images = gen(table)
    holdout = read_images(real.file("control"))
    pool = {bytes(np.asarray(decode(b)).tobytes()): c for b, c in zip(holdout["image"], holdout["class_id"])}
    for img, cid in zip(images, table["class_id"]):
        assert pool[np.asarray(img).tobytes()] == cid
    per_class = [np.asarray(im).tobytes() for im, c in zip(images, table["class_id"]) if c == "3"]
    assert len(set(per_class)) == len(per_class), "no repeats while the pool lasts"


def test_missing_weights_fail_early(tmp_path):
    models = Models.from_cfg(tiny_cfg(tmp_path))
    with pytest.raises(SynthrayError, match="not in the local Hugging Face cache; stage them .synthray stage-weights"):
        check_model(models, "no-such-org/no-such-model", "pipeline", "generators.mine.model")
    with pytest.raises(SynthrayError, match=r"generators.mine.model=.*: not a diffusers save_pretrained folder"):
        check_model(models, str(tmp_path), "pipeline", "generators.mine.model")
    assert not any(tmp_path.iterdir()), "the check writes nothing"


@pytest.mark.slow
def test_generation_stage_on_ray_data(ray_cluster, shared_storage, tmp_path):
    cfg = tiny_cfg(shared_storage, "generation.num_actors=2")
    ref = run_generation(cfg, "tiny-sd")
    art = ref.artifact
    assert ref.uri == art.file("data") and ref.ref == f"synthetic/{art.key}/data"
    files = [Path(f) for f in shard_files(ref.uri)]
    assert len(files) == 4  # 60 rows in shards of 16
    table = pq.read_table(files[0]).to_pandas()  # plain pyarrow/pandas read the shards
    assert {"id", "image", "label", "class_id", "prompt", "seed", "generator", "protocol"} <= set(table.columns)
    assert Image.open(__import__("io").BytesIO(table["image"][0])).format == "JPEG"
    assert art.meta()["rows"] == 60 and art.meta()["digest"] == dataset_digest(ref.uri)
    assert art.verify() == [] and {f"data/{f.name}" for f in files} <= set(art.manifest()["files"])

    # Another storage root, one actor instead of two, and an interruption: the same bytes.
    other_cfg = tiny_cfg(tmp_path, "generation.num_actors=1")
    other = dataset(other_cfg, "tiny-sd")
    assert other.key == art.key and other.uri != art.uri
    kept = Path(other.file("data", files[1].name))
    kept.parent.mkdir(parents=True)
    os.link(files[1], kept)  # a shard left behind by a stopped run (files, but no manifest)
    assert not other.is_complete()
    run_generation(other_cfg, "tiny-sd")
    assert other.is_complete() and other.meta()["digest"] == art.meta()["digest"]
    assert kept.stat().st_ino == files[1].stat().st_ino, "finished shards are not redone"
    assert other.manifest()["files"][f"data/{files[1].name}"] == art.manifest()["files"][f"data/{files[1].name}"]


def test_quality_guard_flags_nan_and_black():
    ok = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert to_uint8(ok)[1] == "ok" and to_uint8(ok)[0].max() == 128
    nan = ok.copy()
    nan[0, 0, 0] = np.nan
    assert to_uint8(nan)[1] == "nan"
    assert to_uint8(np.zeros((4, 4, 3), dtype=np.float32))[1] == "black"
    assert to_uint8(Image.new("RGB", (4, 4)))[1] == "black"


@pytest.mark.slow
def test_generation_fails_past_the_bad_fraction(ray_cluster, shared_storage, tmp_path):
    """A pipeline whose VAE decodes everything to black (as a safety checker would) fails the stage, counted."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder(tiny_cfg(shared_storage)))
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.zero_()
        pipe.vae.decoder.conv_out.bias.fill_(-10.0)  # decoded pixels clamp to 0
    pipe.save_pretrained(tmp_path / "black-sd")
    entry = {"kind": "diffusers", "pipeline": "StableDiffusionPipeline", "model": f"'{tmp_path / 'black-sd'}'",
             "dtype": "float32", "steps": 2, "guidance": 2.0, "resolution": 32}
    added = "{" + ",".join(f"{k}:{v}" for k, v in entry.items()) + "}"
    cfg = tiny_cfg(tmp_path / "runs", "prompts.n_per_class=2", f"+generators.black-sd={added}")
    assert cfg.generators["black-sd"].model == str(tmp_path / "black-sd")
    with pytest.raises(SynthrayError, match=r"20 of 20 images are NaN or all black \({'black': 20}\)"):
        run_generation(cfg, "black-sd")
    art = dataset(cfg, "black-sd")
    assert not art.is_complete() and len(shard_files(art.file("data"))) == 2, "the shards stay, uncommitted"


@pytest.mark.slow
def test_killed_generation_resumes_byte_identical(ray_cluster, tmp_path):
    """Kill the driver (SIGKILL) while shards are being written, rerun, compare with an uninterrupted run."""
    import subprocess
    import sys
    import time

    # lease_s: the killed driver's claim on the dataset lapses after 5 s instead of 2 minutes (not part of any key).
    overrides = ("prompts.n_per_class=12", "generation.shard_size=8", "lease_s=5")
    reference = run_generation(tiny_cfg(tmp_path / "reference", *overrides), "tiny-sd")
    cfg = tiny_cfg(tmp_path / "killed", *overrides)
    art = dataset(cfg, "tiny-sd")
    assert art.key == reference.artifact.key
    script = ("import sys; from tests.conftest import tiny_cfg; from tests.test_generation import run_generation; "
              "import ray; ray.init(); run_generation(tiny_cfg(sys.argv[1], *sys.argv[2:]), 'tiny-sd')")
    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "killed"), *overrides], env=env,
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = Path(art.file("data"))
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and len(list(shards.glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    survivors = {p.name: p.stat().st_ino for p in shards.glob("part-*.parquet")}
    assert 2 <= len(survivors) < 15 and not art.is_complete()

    run_generation(cfg, "tiny-sd")
    assert art.is_complete() and art.meta()["digest"] == reference.artifact.meta()["digest"]
    for name, inode in survivors.items():
        assert (shards / name).stat().st_ino == inode, "finished shards are kept, not redone"
    assert art.verify() == []


@pytest.mark.slow
def test_shards_are_readable_by_hf_datasets_and_export_to_imagefolder(ray_cluster, shared_storage, tmp_path):
    import datasets

    from synthray.cli import main

    ref = run_generation(tiny_cfg(shared_storage, "generation.num_actors=2"), "tiny-sd")
    files = shard_files(ref.uri)
    hf = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == 60 and {"image", "label", "prompt", "seed"} <= set(hf.column_names)

    assert main(["export", ref.artifact.uri, str(tmp_path / "folder")]) == 0
    images = sorted((tmp_path / "folder").rglob("*.jpg"))
    assert len(images) == 60 and sorted({p.parent.name for p in images}) == [str(d) for d in range(10)]
    assert Image.open(images[0]).size == (32, 32)


TINY_TWINS = [name for name in tiny_cfg("/unused").generators if name.startswith("tiny-")]


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_TWINS)
def test_every_tiny_family_generates_through_the_ray_data_stage(ray_cluster, shared_storage, name):
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1")
    ref = run_generation(cfg, name)
    table = read_images(ref.uri)
    assert len(table) == 10 and set(table["generator"]) == {name}
    assert ref.artifact.meta()["quality"] == {"ok": 10}
    assert decode(table["image"][0]).size == (32, 32)


def test_protocols():
    from synthray.generation.kinds import sampling_params

    cfg = tiny_cfg("/unused")
    sd15, schnell = dict(cfg.generators["sd15"]), dict(cfg.generators["flux1-schnell"])
    assert sampling_params(sd15, "model-default") == {"steps": 50, "guidance": 7.5, "resolution": 512}
    assert sampling_params(sd15, "paper") == {"steps": 50, "guidance": 2.0, "resolution": 512}
    # gen/gen_images.py: turbo/schnell keep CFG 0.0 at 4 steps; SDXL-Turbo is called with no size (the model's own).
    assert sampling_params(schnell, "paper") == {"steps": 4, "guidance": 0.0, "resolution": 512}
    assert sampling_params(dict(cfg.generators["sdxl-turbo"]), "paper") == {"steps": 4, "guidance": 0.0, "resolution": None}
    assert sampling_params(dict(cfg.generators["sd21"]), "paper")["scheduler"] == "DPMSolverMultistepScheduler"
    assert sampling_params(dict(cfg.generators["qwen-image"]), "model-default")["resolution"] == 1328
    # generation.guidance / steps / scheduler replace every generator's: what a grid axis sweeps.
    assert sampling_params(sd15, "paper", {"guidance": 4, "steps": 20, "scheduler": "DDIMScheduler"}) == {
        "steps": 20, "guidance": 4.0, "resolution": 512, "scheduler": "DDIMScheduler"}
    with pytest.raises(SynthrayError, match="generation.steps must be a whole number"):
        sampling_params(sd15, "paper", {"steps": 2.5})
    with pytest.raises(SynthrayError, match="unknown scheduler 'Eular'"):
        sampling_params(sd15, "paper", {"scheduler": "Eular"})
    with pytest.raises(SynthrayError, match="unknown generation protocol"):
        sampling_params(sd15, "fast")


def test_png_and_stored_size(ray_cluster, shared_storage):
    """The quick tier's one run of the generation stage on Ray Data (10 images, ~6 s)."""
    cfg = tiny_cfg(shared_storage, "prompts.n_per_class=1", "generation.image_format=png", "generation.stored_size=24")
    table = read_images(run_generation(cfg, "tiny-sd").uri)
    img = Image.open(__import__("io").BytesIO(table["image"][0]))
    assert img.format == "PNG" and img.size == (24, 24)


def test_the_study_call_no_size_passed_and_a_swapped_scheduler(shared_storage):
    """SDXL-Turbo in the study gets no width/height (the pipeline's own size); SD2.x get another sampler."""
    import diffusers

    from synthray.core.models import Models
    from synthray.generation.kinds import build_generator

    cfg = tiny_cfg(shared_storage)
    folder = Models.from_cfg(cfg).locate("tiny:sd", "pipeline", resolution=32)
    spec = {"kind": "diffusers", "pipeline": "StableDiffusionPipeline", "model_path": folder, "dtype": "float32",
            "params": {"steps": 2, "guidance": 0.0, "resolution": None, "scheduler": "DDIMScheduler"}}
    gen = build_generator(spec)
    assert isinstance(gen.pipe.scheduler, diffusers.DDIMScheduler)
    own = gen.pipe.unet.config.sample_size * gen.pipe.vae_scale_factor
    rows = pd.DataFrame({"prompt": ["a handwritten digit 3"], "seed": [7]})
    (image,) = gen(rows)
    assert image.shape == (own, own, 3)
