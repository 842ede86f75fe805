"""`generators.<name>.<field>` overrides are checked like every other key: typos fail, `+` adds a generator."""

from __future__ import annotations

import pytest

from synthray.config import compose
from synthray.core.registry import SynthrayError

MINE = "{kind:diffusers,pipeline:StableDiffusionPipeline,model:'tiny:sd',dtype:float32,steps:2,guidance:2.0,resolution:32,released:null}"


def test_existing_field_changes():
    assert compose(["generators.tiny-sd.steps=3"]).generators["tiny-sd"].steps == 3


def test_numeric_field_takes_a_number():
    with pytest.raises(SynthrayError, match=r"generators.tiny-sd.steps takes a number, got 'many'"):
        compose(["generators.tiny-sd.steps=many"])


def test_allowed_field_not_yet_set_is_added():
    assert compose(["generators.sd15.distilled=true"]).generators.sd15.distilled is True


def test_field_typo_suggests_the_field():
    with pytest.raises(SynthrayError, match=r"unknown config key 'generators.tiny-sd.stesp' \(did you mean generators.tiny-sd.steps"):
        compose(["generators.tiny-sd.stesp=3"])


def test_field_of_another_kind_is_unknown():
    with pytest.raises(SynthrayError, match=r"unknown config key 'generators.collapsed.steps'"):
        compose(["generators.collapsed.steps=3"])


def test_unknown_generator_without_plus_fails_with_a_hint():
    with pytest.raises(SynthrayError, match=r"unknown generator 'tiny-sdd' \(did you mean tiny-sd.*\+generators.tiny-sdd="):
        compose(["generators.tiny-sdd.kind=diffusers"])


def test_plus_adds_a_generator():
    cfg = compose([f"+generators.mine={MINE}", "generators.mine.steps=5"])
    assert cfg.generators.mine.model == "tiny:sd"
    assert cfg.generators.mine.steps == 5


def test_added_generator_with_a_typo_fails():
    with pytest.raises(SynthrayError, match=r"unknown config key 'generators.bad.noize' \(did you mean generators.bad.noise"):
        compose(["+generators.bad={kind:collapsed,noize:1}"])


def test_added_generator_with_unknown_kind_fails():
    with pytest.raises(SynthrayError, match=r"generator 'bad': unknown generator kind 'difusers'"):
        compose(["+generators.bad={kind:difusers}"])


def test_call_takes_free_form_sub_keys():
    cfg = compose(["generators.tiny-sd.call.negative_prompt=x"])
    assert cfg.generators["tiny-sd"].call.negative_prompt == "x"


def test_only_call_takes_sub_keys():
    with pytest.raises(SynthrayError, match=r"unknown config key 'generators.tiny-sd.model.x'"):
        compose(["generators.tiny-sd.model.x=1"])


def test_experiment_generators_can_be_overridden_and_are_checked(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("generators:\n  mine: {kind: diffusers, model: 'tiny:sd', steps: 2}\n")
    (tmp_path / "typo.yaml").write_text("generators:\n  typo: {kind: collapsed, prototpyes: 2}\n")
    monkeypatch.setenv("SYNTHRAY_EXPERIMENTS", str(tmp_path))
    cfg = compose(["experiment=mine", "generators.mine.steps=7"])
    assert (cfg.generators.mine.model, cfg.generators.mine.steps) == ("tiny:sd", 7)
    with pytest.raises(SynthrayError, match=r"unknown config key 'generators.typo.prototpyes'"):
        compose(["experiment=typo"])
