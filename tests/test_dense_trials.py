"""The dense tasks as trials of the grid (issue 26): the task axis, smoke-sized detection and segmentation trials end
to end on CPU with the tiny twins (tiny SD, tiny SAM 3, tiny Faster R-CNN and DeepLabV3), their result columns, a
rerun that builds nothing, and a dense training killed after an epoch that resumes to the weights of one never
stopped, on Ray Train."""

from __future__ import annotations

import time

import pytest
import torch

from synthray.core.registry import SynthrayError
from synthray.graph.planner import plan
from tests.conftest import tiny_cfg

DENSE = ["grid.generator=[tiny-sd]", "training.inline_rows=100000"]


def _keys(graph):
    return {t.label: t.result.key for t in graph}


def test_the_task_axis_keeps_classification_keys_and_gives_a_dense_task_one_point_per_dataset(tmp_path):
    arch = "grid.arch=[tiny-cnn,bagnet9]"
    before = _keys(plan(tiny_cfg(tmp_path, arch)))
    both = plan(tiny_cfg(tmp_path, arch, "grid.task=[classification,detection,segmentation]", "grid.probe=[rgb,lowpass]"))
    after = _keys(both)
    assert {k: after[k] for k in before} == before  # no classification result key moved
    dense = [t for t in both if "task" in t.point]
    # one point per generator and task, whatever grid.arch lists; the lowpass points are not the dense tasks'
    assert sorted(t.label for t in dense) == sorted(f"{g}/classname/{m}/rgb/{task}" for g in ("real-holdout", "tiny-sd")
                                                    for m, task in (("tiny-fasterrcnn", "detection"), ("tiny-deeplabv3", "segmentation")))
    det = next(t for t in dense if t.point["task"] == "detection" and t.point["generator"] == "tiny-sd")
    kinds = {s.kind for s in det.specs()}
    assert {"labels", "dense-models", "dense-evaluations", "synthetic", "real", "results"} <= kinds
    assert {"models", "evaluations", "features"}.isdisjoint(kinds)
    assert det.synth_model.labels.source.spec is det.synthetic and det.real_model.labels.source.split == "train"
    assert det.evaluations["real_to_real"].model is det.real_model  # the Real->Real baseline, as for classification
    assert len(det.synth_model.classes) == 4  # the smoke experiment labels the first 4 classes


@pytest.mark.parametrize("override, message", [
    ("grid.task=[detecton]", r"^unknown task 'detecton' \(did you mean detection"),
    ("tasks.detection.model=tv:resnet50", r"^tasks.detection.model=tv:resnet50 is not a detection model; choices: "),
])
def test_a_bad_task_is_one_line(tmp_path, override, message):
    with pytest.raises(SynthrayError, match=message):
        plan(tiny_cfg(tmp_path, "grid.task=[detection]", override))


def test_a_dense_task_needs_the_rgb_probe_and_its_own_recipe_keys(tmp_path):
    from synthray.sweep.plan import validate

    with pytest.raises(SynthrayError, match=r"^grid.task has detection, which runs on probe rgb only, but grid.probe is \['lowpass'\]"):
        validate(tiny_cfg(tmp_path, "grid.task=[detection]", "grid.probe=[lowpass]"), dry=True)
    with pytest.raises(SynthrayError, match=r"^tasks.segmentation.recipe.epoch: not a segmentation recipe key"):
        validate(tiny_cfg(tmp_path, "grid.task=[segmentation]", "+tasks.segmentation.recipe.epoch=3"), dry=True)


def _artifacts(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "train-runs" not in p.parts)


@pytest.mark.slow
@pytest.mark.parametrize("task, columns, per_class", [
    ("detection", ("map", "map_50"), {"map_per_class": 4, "map_50_per_class": 4}),
    ("segmentation", ("miou", "pixel_acc"), {"iou_per_class": 5}),  # the background first
])
def test_a_smoke_dense_trial_runs_end_to_end_and_a_rerun_reuses_everything(ray_cluster, shared_storage, one_torch_thread,
                                                                            task, columns, per_class):
    from synthray.sweep.trial import plan_trial, run_point

    cfg = tiny_cfg(shared_storage, *DENSE, f"grid.task=[{task}]")
    trial = plan_trial(cfg, {"generator": "tiny-sd", "prompt_style": "classname", "arch": str(cfg.tasks[task].model),
                             "probe": "rgb", "task": task})
    row = run_point(cfg, trial.point)
    assert row["task"] == task and row["n_labelled"] > 0
    for prefix in ("synth_to_real", "real_to_synth", "real_to_real"):
        for name in columns:
            assert 0.0 <= row[f"{prefix}_{name}"] <= 1.0, (prefix, name, row[f"{prefix}_{name}"])
        for name, n in per_class.items():
            assert len(row[f"{prefix}_{name}"]) == n
    assert len(row["dense_classes"]) == 4
    # each evaluation scores the model its spec names, on the split it names
    meta = trial.plan.evaluations["synth_to_real"].artifact(trial.store).meta()
    assert meta["model"] == trial.plan.synth_model.ref and meta["data"].startswith(f"real/{trial.plan.real.key}/test")
    stored = _artifacts(shared_storage)
    started = time.perf_counter()
    again = run_point(cfg, trial.point)
    assert time.perf_counter() - started < 5 and again == row and _artifacts(shared_storage) == stored


class _Killed(Exception):
    pass


def _stop_after_first_epoch(session_cls):
    class Stopping(session_cls):
        def report(self, metrics, folder):
            super().report(metrics, folder)  # the epoch's checkpoint is stored, then the worker dies
            raise _Killed()

    return Stopping


@pytest.mark.slow
def test_a_dense_training_killed_after_an_epoch_resumes_to_the_weights_ray_train_gives_unstopped(ray_cluster, shared_storage,
                                                                                                  one_torch_thread, tmp_path):
    """Segmentation draws crops, flips and dropout; the resumed run must draw what the unstopped one drew."""
    from synthray.core.artifacts import DatasetRef, Store, read_checked
    from synthray.core.models import Models
    from synthray.core.safe_load import load_tensors
    from synthray.graph.build import Context, build
    from synthray.graph.specs import Split
    from synthray.sweep.trial import plan_trial
    from synthray.training.dense import dense_job, dense_loop
    from synthray.training.inline import InlineSession

    # Its own lr: a model no other test built, trained here on Ray Train (inline_rows=0) on the shared labels
    cfg = tiny_cfg(shared_storage, *DENSE, "grid.task=[segmentation]", "training.inline_rows=0", "+tasks.segmentation.recipe.lr=0.01")
    planned = plan_trial(cfg, {"generator": "tiny-sd", "prompt_style": "classname", "arch": "tiny-deeplabv3",
                               "probe": "rgb", "task": "segmentation"}).plan
    spec, store = planned.synth_model, Store.from_cfg(cfg)
    ray_train = build(spec, Context(store, Models.from_cfg(cfg)))  # inline_rows=0: a Ray Train worker group
    assert ray_train.meta()["epochs"] == 2 and ray_train.meta()["history"][0]["where"]

    ctx = Context(store, Models.from_cfg(cfg))
    labels = build(spec.labels, ctx)
    data = DatasetRef(build(Split(spec.data.spec, "data").spec, ctx), "data")
    config, dataset = dense_job(spec, data, labels)
    run = str(tmp_path / "run")
    with pytest.raises(_Killed), _stop_after_first_epoch(InlineSession)({"train": dataset}, run) as session:
        dense_loop(config, session)
    with InlineSession({"train": dataset}, run) as session:  # a rerun: resumes after epoch 1
        dense_loop(config, session)
    assert session.metrics["resumed_from_epoch"] == 1
    with session.last_checkpoint() as d:
        resumed = torch.load(f"{d}/checkpoint.pt", weights_only=True)["model"]
    unstopped = load_tensors(read_checked(ray_train.file("model.pt")), "model.pt")
    assert resumed.keys() == unstopped.keys()
    for name in resumed:
        assert torch.equal(resumed[name], unstopped[name]), name


@pytest.mark.slow
def test_a_sweep_with_a_dense_task_runs_its_points_under_tune_and_reports_both_tasks(ray_cluster, shared_storage,
                                                                                     one_torch_thread, tmp_path):
    """grid.task=[classification, detection]: Tune gets the planned points (a dense point takes its task's model, not
    each of grid.arch); the results table has the task column and both tasks' figures; the report draws the dense
    figure and the pseudo-label gallery, and renders in headless Chromium."""
    from synthray.report.page import write_report
    from synthray.sweep.runner import run_sweep
    from tests.browser import assert_renders

    # Its own flip probability: detection models no other test trained, so Tune runs their trials.
    cfg = tiny_cfg(shared_storage, *DENSE, "grid.task=[classification,detection]", "+tasks.detection.recipe.hflip_prob=0.25")
    table, _ = run_sweep(cfg)
    assert list(table.columns[:5]) == ["generator", "prompt_style", "arch", "probe", "task"]
    assert sorted(table["arch"]) == ["tiny-cnn", "tiny-fasterrcnn"] and set(table["status"]) == {"done"}
    dense = table[table["task"] == "detection"].iloc[0]
    assert 0 <= dense["synth_to_real_map"] <= 1 and table["synth_to_real_acc"].notna().sum() == 1
    page = write_report([], tmp_path / "report", str(shared_storage))
    text = page.read_text()
    assert 'id="dense-vs-classification"' in text and 'id="pseudo-labels"' in text
    figure = text.split('id="dense-vs-classification"')[1].split("</section>")[0]
    assert "<img" in figure and "Not drawn" not in figure
    check = assert_renders(page, tmp_path / "report.png", min_images=12)  # 6 real and 6 synthetic pseudo-labels at least
    assert check["images"] >= 12


@pytest.mark.slow
def test_plan_prices_the_study_dense_setting(tmp_path):
    """`synthray plan experiment=paper-dense`: the label stage, both dense models' trainings and evaluations, and
    the classifier beside them, in GPU-hours (from a laptop: the data folder is not here)."""
    import re

    from synthray.sweep.cost import plan_lines

    lines = plan_lines(["experiment=paper-dense", f"storage={tmp_path}"])
    text = "\n".join(lines)
    for stage, name in (("train", "fasterrcnn_resnet50_fpn"), ("train", "deeplabv3_resnet50"), ("train", "tv:resnet50"),
                        ("evaluate", "fasterrcnn_resnet50_fpn"), ("evaluate", "deeplabv3_resnet50"), ("label", "segmenter")):
        row = next(line for line in lines if re.match(rf"\s+{stage}\s+{re.escape(name)}\s", line))
        hours = re.search(r"\s(\d+\.\d\d)\s+[\d.]+ img/s", row)  # GPU-hours, then the figure they come from
        assert hours and float(hours.group(1)) > 0, row
    total = re.search(r"^total: ([\d.]+) GPU-hours \(.*train ([\d.]+).*label ([\d.]+)\)", text, re.M)
    assert total and float(total.group(2)) > 100 and float(total.group(3)) > 1, text
    # 13 generators x 2 prompt styles x (classification + detection + segmentation), rgb only
    assert "plan: 78 trials" in text
