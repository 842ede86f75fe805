"""The VAE control as the study runs it (gen/vae_reencode.py, issue 24): `experiment=paper-controls` re-encodes the
whole real training split with the SD1.5, SDXL and FLUX VAEs, stores Pillow's default JPEG (quality 75, 4:2:0), on
the pixel, high-pass and low-pass views, beside the real model trained on those same images; the earlier control
(500 held-out images a class, real-holdout, q95, rgb, six VAEs) is `experiment=paper-controls-holdout`, under the keys
it was stored with (`tests/data/controls_keys.json`, planned at dcd5020)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from synthray.config import compose
from synthray.core.artifacts import DatasetRef
from synthray.core.images import old_subsampling, read_images
from synthray.core.registry import SynthrayError
from synthray.graph.planner import plan
from synthray.graph.real import real_data
from tests.conftest import tiny_cfg

STUDY = ["vae-reencode:sd15", "vae-reencode:sdxl", "vae-reencode:flux1-dev"]
GOLDEN = json.loads((Path(__file__).parent / "data" / "controls_keys.json").read_text())
ROOT = "data.root=/mnt/data/imagenet"  # not on this machine: its fingerprint reads `unread <root>`, as when stored
# Models, their evaluations and results also hash the recipe, which switches of their own re-key (recipe.shuffle,
# test_keys.py): the holdout switch is held to the old definition for those, and to the stored keys for the data.
RECIPE_KEYED = ("models", "evaluations", "results")
# Since 5ef53b3, bad_images=keep (experiment=paper's) feeds flagged rows to the generated side's features and
# CLIPScores, re-keying those; drop computes them as when stored. The real and generated datasets move with neither.
METRICS_AS_STORED = ["generation.bad_images=drop"]


def _synthetic(graph):
    return [s for s in graph.specs.values() if s.kind == "synthetic"]


@pytest.mark.slow
def test_paper_controls_plans_the_studys_vae_control(tmp_path):
    graph = plan(compose(["experiment=paper-controls", ROOT, f"storage={tmp_path}"]))
    points = {(t.point["generator"], t.point["prompt_style"], t.point["probe"]) for t in graph.trials}
    assert points == {(g, "classname", p) for g in STUDY for p in ("rgb", "highpass", "lowpass")}
    assert len(graph) == 3 * 3 * 4  # x the paper's four architectures
    datasets = _synthetic(graph)
    assert sorted(s.generator for s in datasets) == sorted(STUDY)
    for spec in datasets:
        quality = spec.settings["quality"]
        assert spec.settings["format"] == "jpeg" and quality == 75
        assert spec.settings.get("subsampling", old_subsampling(quality)) == "4:2:0"  # what the worker encodes with
        assert spec.settings["reencode_split"] == "train" and spec.table is None and spec.real.control_fraction == 0.0
        assert set(spec.prompts) == {"template", "names"}  # the rows are the real training split's, read in the trial
    # The baseline is experiment=paper's own real model, on the same real data: reused, not trained again.
    paper = plan(compose(["experiment=paper", ROOT, f"storage={tmp_path}", "grid.generator=[sd15]",
                          "grid.prompt_style=[classname]", "grid.probe=[rgb,highpass,lowpass]"]))
    assert {t.real_model.key for t in graph} == {t.real_model.key for t in paper}
    assert {t.real.key for t in graph} == {t.real.key for t in paper}


def test_protocol_row_holds_for_paper_controls():
    from synthray.protocol import mismatches

    assert mismatches(compose(["experiment=paper-controls"])) == []  # its q75 row wins over the generated images' q95
    assert mismatches(compose(["experiment=paper-controls", "generation.reencode_split=control"])) == [
        "VAE control: generation.reencode_split is 'control', the study's is 'train'"]


@pytest.mark.slow
def test_the_holdout_switch_keeps_the_stored_keys(tmp_path):
    graph = plan(compose(["experiment=paper-controls-holdout", ROOT, f"storage={tmp_path}"]))
    stored = GOLDEN["artifacts"]["paper-controls"]

    def kinds(refs, *names):
        return [r for r in refs if r.split("/", 1)[0] in names]

    assert kinds(graph.artifacts(), "real", "synthetic") == kinds(stored, "real", "synthetic")
    assert len(kinds(stored, "synthetic")) == 7  # real-holdout and six VAEs
    as_stored = plan(compose(["experiment=paper-controls-holdout", ROOT, f"storage={tmp_path}", *METRICS_AS_STORED]))
    data = ("real", "synthetic", "features", "clipscores")
    assert kinds(as_stored.artifacts(), *data) == kinds(stored, *data)
    assert {r.split("/", 1)[0] for r in stored} - set(data) == set(RECIPE_KEYED)
    # The rest equals the earlier experiments/paper-controls.yaml spelled out over experiment=paper.
    earlier = plan(compose(["experiment=paper", ROOT, f"storage={tmp_path}", "data.control_fraction=0.4",
                            "grid.generator=[real-holdout,vae-reencode:sd15,vae-reencode:sdxl,vae-reencode:sd3-medium,"
                            "vae-reencode:flux1-dev,vae-reencode:sana,vae-reencode:qwen-image]",
                            "grid.prompt_style=[classname]", "grid.probe=[rgb]"]))
    assert graph.artifacts() == earlier.artifacts()
    assert len(graph.artifacts()) == len(stored)
    assert all("reencode_split" not in s.settings and s.settings["quality"] == 95 for s in _synthetic(graph))


@pytest.mark.slow
def test_plan_counts_the_training_split_and_prices_the_vae(tmp_path):
    from synthray.sweep.cost import estimate, load_throughputs

    cfg = compose(["experiment=paper-controls", ROOT, f"storage={tmp_path}"])
    counts = {"train": 123_456, "test": 10_000}
    graph = plan(cfg, counts)
    assert {s.rows for s in _synthetic(graph)} == {123_456}
    rows = [r for r in estimate(cfg, load_throughputs(), real=counts, graph=graph) if r.stage == "generate"]
    assert [r.name for r in rows] == STUDY and all(r.images == 123_456 and r.figure for r in rows)
    assert all("(control: the real training split)" in r.work and r.gpu_hours > 0 for r in rows)


def test_bad_uses_of_the_setting_are_one_line(tmp_path):
    from synthray.graph.synthetic import planned_dataset

    captions = tmp_path / "captions.csv"
    captions.write_text("class_id,caption\n" + "".join(f"{d},a digit\n" for d in range(10)))
    cfg = tiny_cfg(tmp_path, "generation.reencode_split=train", f"prompts.captions={captions}")
    with pytest.raises(SynthrayError, match="prompt_style=caption has no rows for it; use classname") as err:
        planned_dataset(cfg, "vae-reencode:tiny-sd", "caption")
    assert "\n" not in str(err.value)
    # The training split needs no held-out images; the held-out draw still does.
    cfg = tiny_cfg(tmp_path, "data.control_fraction=0")
    planned_dataset(tiny_cfg(tmp_path, "data.control_fraction=0", "generation.reencode_split=train"),
                    "vae-reencode:tiny-sd", "classname").check()
    with pytest.raises(SynthrayError, match="holds none out; set data.control_fraction=0.4"):
        planned_dataset(cfg, "vae-reencode:tiny-sd", "classname").check()
    with pytest.raises(SynthrayError, match="unknown generation.reencode_split 'all'; choices: control, train"):
        tiny_cfg(tmp_path, "generation.reencode_split=all")


def test_split_rows_name_each_training_image_once_and_read_it_back(shared_storage):
    """The rows a whole-split dataset is made of: one per real training image, in the split's order, each reading
    back its own image's pixels (what the VAE then re-encodes)."""
    import numpy as np

    from synthray.generation.controls import SplitImages, split_rows

    cfg = tiny_cfg(shared_storage)
    uri = DatasetRef(real_data(cfg), "train").uri
    real = read_images(uri)
    rows = split_rows("vae-reencode:tiny-sd", uri, [str(d) for d in range(10)], "a {name}")
    assert rows["prompt_id"].tolist() == real["id"].tolist() and rows["label"].tolist() == real["label"].tolist()
    assert rows["id"].is_unique and rows["seed"].is_unique and rows["prompt"].iloc[0] == f"a {real['label'].iloc[0]}"
    picked = rows.sample(12, random_state=0)
    images = SplitImages(uri)(picked)
    for image, i in zip(images, picked.index):
        expected = Image.open(io.BytesIO(real["image"].iloc[i])).convert("RGB")
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.slow
def test_the_reencoded_training_split_is_every_training_image_once_at_pillows_jpeg(tmp_path):
    """End to end on CPU: the tiny SD VAE re-encodes every real training image of two digits once, stored as
    Pillow stores a .JPEG it is told nothing about (its quantisation tables and 4:2:0 chroma)."""
    from PIL import JpegImagePlugin

    from synthray.graph.synthetic import generate_dataset

    classes = tmp_path / "two-digits.csv"  # two classes keep it quick: ~250 training images
    classes.write_text("id,name\n3,three\n8,eight\n")
    cfg = tiny_cfg(tmp_path, f"data.classes={classes}", "data.control_fraction=0", "generation.reencode_split=train",
                   "generation.jpeg_quality=75", "generation.jpeg_subsampling=4:2:0")
    real = read_images(DatasetRef(real_data(cfg), "train").uri, columns=["id", "class_id"])
    made = generate_dataset(cfg, "vae-reencode:tiny-sd")
    rows = read_images(made.uri)
    assert len(rows) == len(real) == made.artifact.meta()["rows"] and len(real) > 200
    assert rows["prompt_id"].tolist() == real["id"].tolist() and rows["class_id"].tolist() == real["class_id"].tolist()
    assert rows["seed"].nunique() == len(rows)
    first = Image.open(io.BytesIO(rows["image"].iloc[0]))
    default = io.BytesIO()
    first.convert("RGB").save(default, format="JPEG")  # Pillow's defaults: the study's `.save(<name>.JPEG)`
    assert first.size == (32, 32) and first.quantization == Image.open(default).quantization
    assert JpegImagePlugin.get_sampling(first) == 2  # 4:2:0
    for data in rows["image"].iloc[1:50]:
        assert Image.open(io.BytesIO(data)).quantization == first.quantization
