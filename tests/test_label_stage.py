"""The label stage as a spec of the stage graph: the tiny SAM 3 twin labels the real digits' test split, once; its
key follows the segmenter and the split, never where it runs; its prompts follow `labels.prompts`."""

from __future__ import annotations

import pytest

from synthray.core.images import read_images
from synthray.core.registry import SynthrayError
from synthray.graph.labels import label_prompts, label_spec
from synthray.graph.specs import Split
from tests.conftest import tiny_cfg

LABELS = ["labels.model=tiny:sam3", "labels.device=cpu", "labels.classes=4", "labels.threshold=0.1"]


def _spec(cfg):
    from synthray.data.real import load_classes
    from synthray.graph.real import real_spec

    classes = load_classes(str(cfg.data.classes))
    return label_spec(cfg, Split(real_spec(cfg), "test"), 0, list(classes["id"]), list(classes["name"]))


def test_prompts_are_the_class_names_or_a_class_list_and_cover_the_first_ids_in_sorted_order(tmp_path):
    section = tiny_cfg(tmp_path, "labels.classes=3").labels
    ids, names = ["n2", "n10", "n1", "n3"], ["two", "ten", "one", "three"]
    # sorted ids: n1, n10, n2 -> label indices 2, 1, 0 (the study: sorted(...)[:50])
    assert label_prompts(section, ids, names) == {"0": "two", "1": "ten", "2": "one"}
    coarse = tmp_path / "coarse.csv"
    coarse.write_text("id,name\nn1,bird\nn2,dog\nn10,dog\n")
    section = tiny_cfg(tmp_path, "labels.classes=3", f"labels.prompts={coarse}").labels
    assert label_prompts(section, ids, names) == {"0": "dog", "1": "dog", "2": "bird"}
    section = tiny_cfg(tmp_path, "labels.classes=null", f"labels.prompts={coarse}").labels
    with pytest.raises(SynthrayError, match=r"^labels.prompts=.*coarse.csv has no prompt for class n3 \(1 of the 4 labelled"):
        label_prompts(section, ids, names)


def test_the_study_coarse_labels_cover_its_classes():
    from synthray.data.real import load_classes

    paper, coarse = load_classes("tiny-imagenet-200-paper"), load_classes("tiny-imagenet-200-coarse")
    assert list(paper["id"]) == list(coarse["id"])
    assert dict(zip(coarse["id"], coarse["name"]))["n02099601"] == "dog"


def test_the_key_follows_the_segmenter_not_where_it_runs(tmp_path):
    base = _spec(tiny_cfg(tmp_path, *LABELS))
    assert base.key == _spec(tiny_cfg(tmp_path / "other", *LABELS, "labels.num_actors=3", "labels.gpus_per_actor=0.5")).key
    assert base.key != _spec(tiny_cfg(tmp_path, *LABELS, "labels.threshold=0.5")).key
    assert base.key != _spec(tiny_cfg(tmp_path, *LABELS, "labels.classes=5")).key
    assert base.key != _spec(tiny_cfg(tmp_path, *LABELS, "labels.model=tiny:depth")).key
    assert base.work().stage == "label" and base.resources().gpus == 0  # on cpu: no GPU asked for


@pytest.mark.slow
def test_labels_of_the_real_test_split_are_built_once(ray_cluster, shared_storage, tmp_path):
    from synthray.core.artifacts import Store
    from synthray.core.models import Models
    from synthray.graph.build import Context, build
    from synthray.labels.segmenter import label_arrays

    cfg = tiny_cfg(shared_storage, *LABELS)
    spec = _spec(cfg)
    ctx = Context(Store.from_cfg(cfg), Models.from_cfg(cfg))
    art = build(spec, ctx)
    labels = read_images(art.file("data"), usable_only=False)
    test = read_images(build(spec.source.spec, ctx).file("test"))
    chosen = test[test["label"] < 4]  # digits' ids 0..9 sort as their labels
    assert sorted(labels["id"]) == sorted(chosen["id"]) and len(labels) > 0
    assert (labels["n"] > 0).any()  # the random twin, at threshold 0.1, finds something
    row = labels.iloc[int(labels["n"].argmax())]
    arrays = label_arrays(row)
    assert arrays["boxes"].shape == (row["n"], 4) and arrays["masks"].shape == (row["n"], row["height"], row["width"])
    assert (arrays["scores"] > 0.1).all()
    meta = art.meta()
    assert meta["classes"] == 4 and meta["placement"]
    # A second build in a new context reads the artifact: no shard written again.
    manifest = art.manifest()
    again = build(spec, Context(ctx.store, ctx.models))
    assert again.manifest() == manifest


def test_plan_prices_the_label_stage_on_gpu(tmp_path):
    from types import SimpleNamespace

    from synthray.sweep.cost import estimate, load_throughputs

    cfg = tiny_cfg(tmp_path, *LABELS, "labels.device=gpu")
    spec = _spec(cfg)
    spec = type(spec)(source=spec.source, settings=spec.settings, rows=5000, resources_=spec.resources_, pool=spec.pool)
    graph = SimpleNamespace(specs={spec.ref: spec})
    (row,) = estimate(cfg, load_throughputs(), graph=graph)
    assert (row.stage, row.name, row.images) == ("label", "segmenter", 5000)
    assert row.figure.img_s == 25 and row.gpu_hours == pytest.approx(5000 / 25 / 3600)
    assert "1 split(s), up to 5,000 images each" in row.work


def test_overlay_tints_each_mask_and_outlines_each_box():
    import numpy as np

    from synthray.report.labels import COLOURS, SIZE, Labelled, overlay

    masks = np.zeros((2, 20, 40), bool)
    masks[0, 2:8, 2:10] = True
    masks[1, 10:18, 20:38] = True
    item = Labelled("a", 3, np.full((20, 40, 3), 128, np.uint8), np.array([[2, 2, 10, 8], [20, 10, 38, 18]], np.float32),
                    np.array([0.9, 0.4], np.float32), masks)
    drawn = overlay(item)
    assert drawn.shape == (SIZE // 2, SIZE, 3)  # the longer side scaled to SIZE
    inside = drawn[4 * 4 + 4, 4 * 5]  # a pixel inside the first mask, away from its box outline and score
    assert np.allclose(inside, 0.55 * 128 + 0.45 * np.array(COLOURS[0]), atol=1)
    assert (drawn[0:4, :] == 128).all()  # untouched outside every label


@pytest.mark.slow
def test_pseudo_label_gallery_of_real_and_synthetic_images_renders(ray_cluster, shared_storage, tmp_path):
    from synthray.core.artifacts import Store
    from synthray.core.models import Models
    from synthray.graph.build import Context, build
    from synthray.report.labels import labelled_images, write_page
    from synthray.sweep.trial import plan_trial
    from tests.browser import assert_renders

    cfg = tiny_cfg(shared_storage, *LABELS)
    ctx = Context(Store.from_cfg(cfg), Models.from_cfg(cfg))
    real = _spec(cfg)
    synthetic = plan_trial(cfg, {"generator": "tiny-sd", "prompt_style": "classname", "arch": "tiny-cnn", "probe": "rgb"}).plan.synthetic
    synth_labels = type(real)(source=Split(synthetic, "data"), settings=real.settings, resources_=real.resources_, pool=real.pool)
    groups = {}
    for name, spec in (("real", real), ("tiny-sd, classname", synth_labels)):
        art, source = build(spec, ctx), build(spec.source.spec, ctx)
        groups[name] = labelled_images(art.file("data"), source.file(spec.source.split), 6)
        assert len(groups[name]) == 6 and all(g.label < 4 for g in groups[name])
    page = write_page(groups, tmp_path / "labels.html", class_names=[str(i) for i in range(10)])
    check = assert_renders(page, tmp_path / "labels.png", min_images=12)
    assert check["images"] == 12
