"""Stored artifacts stay valid: the planner gives every artifact of the smoke, probes and paper experiments the
kind/key that synthray gave it at 28018d9 (`tests/data/artifact_keys.json`, from `tests/data/capture_keys.py`).

The two exceptions, both leaks of a path into keys, are keyed anew and their old keys are still read:
- the real data's absolute folder (`data.root`): now a fingerprint of its files' names and sizes;
- the GenEval CSV's path (`metrics.geneval`): it only joins a column into the table, so it is keyed as unset.

One change of computation re-keys what it changes: the test transform's geometry (`recipe.test_transform.geometry`)
is now torchvision's Resize + CenterCrop, the study's, where synthray rounded the long side and floored the crop
offset (a 500x375 image became 299x224, not 298x224). Models (their selection), evaluations and results computed
with it get new keys; `geometry=round` is the earlier computation, under the stored keys, which it still reads.
`recipe=paper` also draws a new training order every epoch now (`recipe.shuffle: epoch`, the study's): its models
get new keys; `recipe.shuffle=once` is the earlier order, under the stored keys. So do its native-size input
(`recipe.load_size=256` is the earlier square), its colour jitter in a random order per image (`fixed`) and its
antialiased crop (`random_resized_crop.antialias=false`).
`experiment=paper` also trains on NaN and all-black generated images now (`generation.bad_images: keep`, the
study's): its models on generated rows, their evaluations and results get new keys (they train on other rows, where
a dataset has any); `generation.bad_images=drop` is the earlier filter, under the stored keys. Its other new switch,
`generation.empty_prompt_at_cfg0: true`, moves no key of it: no generator of the paper runs unconditionally.
"""

import json
from pathlib import Path

import pytest

from synthray.config import compose
from synthray.graph.planner import plan, tiny_models

GOLDEN = json.loads((Path(__file__).parent / "data" / "artifact_keys.json").read_text())
# Kinds of artifact that stages added since 28018d9 made none of (evaluations: predictions, once made inside the
# result's build): new artifacts, not re-keyed ones. Their own keys hash their inputs' keys, compared here.
NEW_KINDS = ("evaluations",)


def stored_kinds(refs):
    return [r for r in refs if r.split("/", 1)[0] not in NEW_KINDS]


LEGACY_GEOMETRY = "recipe.test_transform.geometry=round"  # the stored keys' test geometry
# What each experiment was when its keys were stored: experiment=paper has since turned CLIPScore on and reads the
# published GenEval CSV (issue 24), settings of its own, not re-keyings of what was stored.
AS_STORED = {"smoke": [LEGACY_GEOMETRY], "probes": [LEGACY_GEOMETRY],
             "paper": [LEGACY_GEOMETRY, "recipe.shuffle=once", "recipe.load_size=256",
                       "recipe.train_transform.color_jitter_order=fixed",
                       "recipe.train_transform.random_resized_crop.antialias=false",
                       "metrics.clipscore.model=null", "metrics.clipscore.scale=torchmetrics", "metrics.geneval=null",
                       "generation.bad_images=drop"]}  # experiment=paper keeps them now (the study's); stored: dropped


def graph_of(name, tmp_path, *overrides):
    return plan(compose([*GOLDEN["experiments"][name], f"storage={tmp_path}", *(overrides or AS_STORED[name])]))


@pytest.mark.parametrize("name", ["smoke", "probes"])
def test_planner_keys_equal_the_stored_ones(name, tmp_path):
    graph = graph_of(name, tmp_path)
    assert stored_kinds(graph.artifacts()) == GOLDEN["artifacts"][name]
    assert any(r.startswith("evaluations/") for r in graph.artifacts())
    assert all(spec.legacy_key == spec.key for spec in graph.specs.values())  # nothing of theirs was a leak


@pytest.mark.slow
def test_paper_keys_equal_the_stored_ones_under_their_legacy_keys(tmp_path):
    """experiment=paper at 28018d9 had 15 generators: paper-extended now (the golden file says so).
    data.root=/mnt/data/imagenet is not on this machine: its fingerprint reads `unread <root>`, so every spec
    downstream of the real data has a new key; each one's legacy key is the one stored at 28018d9."""
    graph = graph_of("paper", tmp_path)
    legacy = {f"{s.kind}/{s.legacy_key}" for s in graph.specs.values()}
    for spec in graph.specs.values():
        legacy |= tiny_models(spec.identity(legacy=True))
    assert stored_kinds(sorted(legacy)) == GOLDEN["artifacts"]["paper"]
    moved = {s.kind for s in graph.specs.values() if s.key != s.legacy_key}
    kept = {s.kind for s in graph.specs.values() if s.key == s.legacy_key}
    assert "real" in moved and "synthetic" in kept  # diffusers datasets never read the real data: kept


@pytest.mark.parametrize("name", ["smoke", "probes"])
def test_the_torchvision_test_geometry_rekeys_models_evaluations_and_results_only(name, tmp_path):
    """The default geometry changes what selection and evaluation compute, so those artifacts get new keys; the
    generated and real data, views, captions and features keep theirs (the GPU-hours of generation are reused)."""
    old, new = set(graph_of(name, tmp_path).artifacts()), set(graph_of(name, tmp_path, "experiment=" + name).artifacts())
    moved = {r.split("/", 1)[0] for r in old - new}
    assert moved == {"models", "evaluations", "results"}, moved
    assert {r for r in old if r.split("/", 1)[0] not in moved} == {r for r in new if r.split("/", 1)[0] not in moved}


def test_paper_and_its_earlier_spelling_study_give_the_same_keys(tmp_path):
    """`paper` names the study's settings everywhere; `study`, the earlier spelling of the same values, is still
    read, and keys record it, so models and views built with it keep their keys."""
    from synthray.graph.identity import training_spec
    from synthray.graph.probes import probe_setup

    def cfg(word):
        return compose(["experiment=smoke", f"storage={tmp_path}", "recipe=paper", f"recipe.lr_schedule={word}",
                        f"probes.lowpass.mask={word}", "probes.lowpass.cutoff=0.1", "data.classes=tiny-imagenet-200-" + word])

    paper, study = cfg("paper"), cfg("study")
    assert training_spec(paper) == training_spec(study) and training_spec(paper)["recipe"]["lr_schedule"] == "study"
    assert probe_setup(paper, "lowpass").identity == probe_setup(study, "lowpass").identity
    assert plan(paper).artifacts() == plan(study).artifacts()


def test_channels_last_takes_explicit_values_and_its_earlier_auto_keeps_keys(tmp_path):
    """Generation's `by-pipeline` and training's `true` were both spelled `auto`, with two meanings; `auto` is still
    read as what it meant in each section, with the same keys."""
    def keys(*overrides):
        return stored_kinds(plan(compose(["experiment=smoke", f"storage={tmp_path}", LEGACY_GEOMETRY, *overrides])).artifacts())

    assert keys("generation.channels_last=auto", "training.channels_last=auto") == keys() == GOLDEN["artifacts"]["smoke"]
    assert keys("training.channels_last=false") != keys()


def test_results_stored_under_a_geneval_path_are_read_and_survive_moving_the_csv(tmp_path):
    """Results keyed by an earlier synthray with `metrics.geneval`'s path in their key are found under that legacy
    key, recorded under their key by the run that reuses them, and still found once the CSV moves."""
    from synthray.core.artifacts import Artifact
    from synthray.sweep.trial import plan_trials

    csv = tmp_path / "a.csv"
    csv.write_text("generator,geneval\ntiny-sd,0.5\n")

    def trials(path):
        return plan_trials(compose(["experiment=smoke", f"storage={tmp_path / 'runs'}", f"metrics.geneval={path}"]))

    def results(path):
        return [t.result for t in trials(path)]

    for trial in trials(csv):  # what the earlier synthray stored: the same result, under the legacy key only
        legacy = trial.plan.result.identity(legacy=True)
        assert legacy["metrics"]["geneval"] == str(csv) and trial.result.legacy[0] != trial.result.key
        Artifact(trial.store, "results", legacy).build(lambda out: {"synth_to_real_acc": 0.5})
        assert not (tmp_path / "runs" / "results" / trial.result.key).exists()
    reused = results(csv)
    assert all(a.is_complete() and a.meta()["synth_to_real_acc"] == 0.5 for a in reused)
    for a in reused:
        a.adopt()  # what the run that reuses it does
    moved = tmp_path / "elsewhere.csv"
    csv.rename(moved)
    after = results(moved)
    assert [a.key for a in after] == [a.key for a in reused] and all(a.is_complete() for a in after)
    assert all(a.meta()["synth_to_real_acc"] == 0.5 for a in after)


def test_specs_check_themselves_in_one_line(tmp_path):
    """`Spec.check()`: what would stop a spec's stage, found before anything launches (`validate` runs it on
    every distinct spec of the graph)."""
    from dataclasses import replace

    from synthray.core.registry import SynthrayError
    from synthray.graph.specs import ModelSpec, RealSpec

    graph = plan(compose(["experiment=smoke", f"storage={tmp_path}", "data.source=imagefolder",
                          f"data.root={tmp_path / 'nowhere'}", "data.control_fraction=0.4"]))
    real = next(s for s in graph.specs.values() if isinstance(s, RealSpec))
    assert real.files == f"unread {tmp_path / 'nowhere'}"  # never a real key: nothing is reused for it
    with pytest.raises(SynthrayError, match="real data folder not found: data.root=") as err:
        real.check()
    model = next(s for s in graph.specs.values() if isinstance(s, ModelSpec))
    model.check()
    with pytest.raises(SynthrayError, match="unknown architecture 'resnet5o'") as err:
        replace(model, arch={"arch": "resnet5o"}).check()
    assert "\n" not in str(err.value)


def test_a_control_without_held_out_images_is_refused_by_its_spec_in_plan_and_run_alike(tmp_path):
    """SyntheticSpec.check: a control generator (real-holdout) with data.control_fraction=0 has nothing to draw;
    `synthray plan` (a dry check) and `run` refuse it with the same line."""
    from synthray.cli import main

    args = ["experiment=smoke", f"storage={tmp_path}", "data.control_fraction=0", "grid.generator=[real-holdout]"]
    control = next(s for s in plan(compose(args)).specs.values() if s.kind == "synthetic")
    with pytest.raises(Exception, match="draws held-out real images, but data.control_fraction=0.0 holds none out"):
        control.check()
    for command in ("plan", "run"):
        assert main([command, *args]) == 2
