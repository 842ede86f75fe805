import re
from pathlib import Path

import pytest

from synthray.config import compose, list_experiments
from synthray.core.registry import SynthrayError
from synthray.sweep.plan import trials, validate


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    """Tune runs trials in their own folders, so a relative storage root must be pinned where the user ran."""
    monkeypatch.chdir(tmp_path)
    cfg = compose(["storage=runs", "data.root=imagenet"])
    assert cfg.storage == str(tmp_path / "runs") and cfg.data.root == str(tmp_path / "imagenet")
    assert compose([]).storage == str(tmp_path / "synthray-runs")


def test_default_is_smoke_and_overrides_apply(tmp_path):
    cfg = compose([f"storage={tmp_path}", "grid.arch=[tiny-cnn,resnet18]", "recipe.epochs=3", "generators.sd15.model=/w"])
    assert cfg.experiment == "smoke" and cfg.name == "smoke"
    assert list(cfg.grid.arch) == ["tiny-cnn", "resnet18"]
    assert cfg.recipe.epochs == 3
    assert cfg.generators.sd15.model == "/w"
    assert len(trials(cfg)) == 2 * 1 * 2 * 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo=1", "unknown config key 'foo'"),
        ("grid.archs=[a]", "did you mean grid.arch"),
        ("grid.arch=[a", "malformed override"),
        ("recipe.epochs=abc", "takes a number"),
        ("recipe.epochs=1,2", "Hydra sweep"),
        ("experiment=nope", "unknown experiment 'nope'"),
        ("experiment=no/such.yaml", "experiment file not found: .*no/such.yaml"),
        ("recipe=nope", "unknown recipe 'nope'"),
        ("device=tpu", r"override 'device=tpu': unknown device 'tpu' \(did you mean gpu, cpu\?\); choices: cpu, gpu"),
        ("generation.image_format=jpg", "unknown generation.image_format 'jpg' .did you mean jpeg.*choices: jpeg, png"),
        ("prompts.n_per_class=1.5", "prompts.n_per_class takes a whole number, got '1.5'"),
        ("storage=null", "storage cannot be null"),
    ],
)
def test_bad_overrides_are_one_line(override, message):
    with pytest.raises(SynthrayError, match=message) as err:
        compose([override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grid.generator=[nope]", "unknown generator 'nope'.*choices: .*real-holdout"),
        ("grid.arch=[resnet5]", "did you mean .*resnet50"),
        ("grid.probe=[depthh]", "unknown probe 'depthh' .did you mean depth.*choices: depth, highpass, lowpass, rgb, texture"),
        ("grid.prompt_style=[fancy]", "unknown prompt style"),
        ("grid.arch=[]", "grid.arch is empty"),
        ("recipe.epochs=0", "recipe.epochs must be a whole number >= 1"),
        ("data.classes=/no/such.csv", "class list"),
        ("metrics.features=[clipp]", "unknown feature encoder 'clipp' .*choices: clip, dinov2, inception, pixels"),
        ("grid.probe=[texture]", "probe 'texture' trains only bagnet9/bagnet17/bagnet33 .*grid.arch has tiny-cnn"),
        ("metrics.geneval=/no/such.csv", "metrics.geneval: no such file"),
    ],
)
def test_validation_names_the_problem(tmp_path, override, message):
    with pytest.raises(SynthrayError, match=message):
        validate(compose([f"storage={tmp_path}", override]))
    assert not any(tmp_path.iterdir()), "validation must write nothing"


def test_paper_experiment_fails_clearly_without_data_or_weights(tmp_path, monkeypatch):
    assert {"smoke", "paper"} <= set(list_experiments())
    cfg = compose(["experiment=paper"])
    assert cfg.storage == "s3://my-bucket/synthray" and cfg.hub.cache == "s3://my-bucket/hub" and cfg.device == "gpu"
    assert cfg.training.device == cfg.generation.device == cfg.metrics.device == cfg.probes.depth.device == "gpu"
    # The example bucket and hub cache are placeholders: run it on local storage, with no staged weights.
    cfg = compose(["experiment=paper", f"storage={tmp_path}", "hub.cache=null"])
    assert len(trials(cfg)) == 13 * 2 * 4 * 4  # the paper's 13 generators (paper-extended: 15)
    with pytest.raises(SynthrayError, match="real data folder not found"):
        validate(cfg)
    # With the data in place, the next thing missing is the hub weights.
    root = tmp_path / "imagenet"
    from synthray.data.real import load_classes

    for wnid in load_classes("tiny-imagenet-200")["id"]:
        (root / "train" / wnid).mkdir(parents=True)
        (root / "val" / wnid).mkdir(parents=True)
    paper = ["experiment=paper", f"storage={tmp_path}/runs", "hub.cache=null", f"data.root={root}", "grid.generator=[sd15]"]
    # The caption style's captioner is the study's gpt-4.1-nano: its key comes from the environment.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SynthrayError, match=r"captioner.backend=openai needs \$OPENAI_API_KEY, which is not set"):
        validate(compose(paper))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-real-key")
    with pytest.raises(SynthrayError, match="not in the local Hugging Face cache; stage them .synthray stage-weights") as err:
        validate(compose(paper))
    assert "\n" not in str(err.value)
    with pytest.raises(SynthrayError, match=f"generators.sd15.model={tmp_path}/missing: not a diffusers save_pretrained folder"):
        validate(compose([*paper, "grid.probe=[rgb]", f"generators.sd15.model={tmp_path}/missing"]))
    assert not Path(tmp_path / "runs").exists()


def test_an_experiment_extends_another_and_keeps_its_recipe(tmp_path, monkeypatch):
    (tmp_path / "short-paper.yaml").write_text("defaults: [paper]\nrecipe: {epochs: 5}\ngrid: {probe: [rgb]}\n")
    (tmp_path / "loop-a.yaml").write_text("defaults: [loop-b]\n")
    (tmp_path / "loop-b.yaml").write_text("defaults: [loop-a]\n")
    monkeypatch.setenv("SYNTHRAY_EXPERIMENTS", str(tmp_path))
    cfg = compose(["experiment=short-paper"])
    assert (cfg.recipe.name, cfg.recipe.epochs, cfg.recipe.lr, cfg.recipe.batch_size) == ("paper", 5, 1e-3, 1024)
    assert list(cfg.grid.probe) == ["rgb"] and cfg.data.classes == "tiny-imagenet-200-paper"
    with pytest.raises(SynthrayError, match="its defaults include itself"):
        compose(["experiment=loop-a"])


@pytest.mark.parametrize("override, needle", [
    ("grid.axes.recipe=[smoke,paper]", "grid.axes.recipe is a section; sweep one of its keys"),
    ("grid.axes.storage=[a,b]", "grid.axes.storage: not a sweepable key"),
    ("grid.axes.generation.guidanc=[1,2]", "grid.axes: unknown config key 'generation.guidanc'"),
    ("grid.axes.generation.guidance=[1,1]", "grid.axes.generation.guidance lists a value twice"),
    ("grid.axes.generation.guidance=[a,2]", "generation.guidance must be a number >= 0, got 'a' (at generation.guidance=a)"),
])
def test_bad_grid_axes_are_one_line(tmp_path, override, needle):
    with pytest.raises(SynthrayError, match=re.escape(needle)):
        validate(compose([f"storage={tmp_path}", override]))
    assert not any(tmp_path.iterdir())


def test_an_experiment_file_anywhere(tmp_path, monkeypatch):
    """`experiment=<path>.yaml` composes a YAML file outside the experiment folders; its defaults find paper."""
    (tmp_path / "exps").mkdir()
    (tmp_path / "exps" / "mine.yaml").write_text("defaults: [paper]\nrecipe: {epochs: 5}\ngrid: {probe: [rgb]}\n")
    monkeypatch.chdir(tmp_path)
    for given in ("exps/mine.yaml", str(tmp_path / "exps" / "mine.yaml")):
        cfg = compose([f"experiment={given}", "recipe.lr=0.5"])
        assert (cfg.experiment, cfg.name, cfg.recipe.name, cfg.recipe.epochs, cfg.recipe.lr) == ("mine", "mine", "paper", 5, 0.5)
        assert list(cfg.grid.probe) == ["rgb"] and cfg.data.classes == "tiny-imagenet-200-paper"
    assert compose(["experiment=exps/mine.yaml"]) == compose(["experiment=exps/mine.yaml", "experiment=exps/mine.yaml"])


@pytest.mark.parametrize("text, needle", [
    ("device: tpu\n", "unknown device 'tpu' (did you mean gpu, cpu?); choices: cpu, gpu"),
    ("nope: 1\n", "unknown config key 'nope'"),
    ("data: {on_corrupt: ignore}\n", "unknown data.on_corrupt 'ignore'; choices: fail, skip"),
    ("defaults: [papr]\n", "unknown experiment 'papr' (did you mean paper"),
    ("recipe: paper\n", "select a recipe in the defaults list, e.g. defaults: [{override /recipe: paper}]"),
])
def test_a_bad_experiment_file_is_one_line_naming_it(tmp_path, text, needle):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SynthrayError) as err:
        compose([f"experiment={tmp_path / 'bad.yaml'}"])
    assert str(err.value).startswith(f"experiment {tmp_path / 'bad.yaml'}: ") and needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_config_and_plan_take_an_experiment_file(tmp_path):
    import subprocess
    import sys

    (tmp_path / "mine.yaml").write_text("# @package _global_\ndefaults: [smoke]\ngrid: {arch: [resnet18]}\n")
    for command in ("config", "plan"):
        done = subprocess.run([sys.executable, "-m", "synthray", command, f"experiment={tmp_path / 'mine.yaml'}",
                               f"storage={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "resnet18" in done.stdout and "unknown experiment" not in done.stderr
