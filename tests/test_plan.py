"""`synthray plan`: a dry run that prints trials, reuse, GPU-hours and peak GPUs, and launches or writes nothing."""

import re

import pytest

from synthray.cli import main
from synthray.config import compose
from synthray.sweep.cost import Figure, estimate, format_plan, load_throughputs

SD15_SOURCE = "BASELINES.md H100 25-step figure scaled to 50 steps"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty working folder, and no S3 credentials anywhere (so an s3:// storage fails fast, not on a timeout)."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return cwd


def _number(pattern, text):
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no match for {pattern!r} in:\n{text}"
    return float(found.group(1).replace(",", ""))


@pytest.mark.slow
def test_plan_paper_on_a_laptop(offline, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("synthray plan must not start or join Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    assert main(["plan", "experiment=paper"]) == 0
    out = capsys.readouterr().out
    assert "416 trials (13 generators x 2 prompt styles x 4 archs x 4 probes)" in out
    assert "storage s3://my-bucket/synthray not reachable" in out and "every trial counted as to run" in out
    assert _number(r"^total: ([\d.,]+) GPU-hours", out) > 0
    assert _number(r"^peak: (\d+) GPUs", out) > 0
    assert SD15_SOURCE in out
    assert "no figure for" not in out  # every generator and architecture of the paper grid has its own figure
    assert list(offline.iterdir()) == []


def test_plan_smoke_on_cpu_counts_trials_and_no_gpus(offline, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["plan", f"storage={store}"]) == 0
    out = capsys.readouterr().out
    assert "plan: 2 trials, 0 already complete (reused), 2 to run" in out
    assert re.search(r"^peak: 0 GPUs", out, re.MULTILINE)
    assert _number(r"^total: ([\d.,]+) GPU-hours", out) == 0
    assert not store.exists() and list(offline.iterdir()) == []


def test_plan_reads_reuse_from_storage(offline, tmp_path, capsys):
    from synthray.core import storage
    from synthray.core.artifacts import MANIFEST
    from synthray.sweep.trial import plan_trials

    store = tmp_path / "store"
    cfg = compose([f"storage={store}", "device=gpu"])
    tiny = next(t for t in plan_trials(cfg) if t.point["generator"] == "tiny-sd")
    storage.write_bytes(tiny.synthetic.file(MANIFEST), b"{}")  # the tiny-sd dataset is complete
    assert main(["plan", f"storage={store}", "device=gpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny-sd/classname/tiny-cnn/rgb: reused dataset" in out
    assert re.search(r"^  generate\s+tiny-sd\s+0 dataset\(s\)", out, re.MULTILINE)
    assert "no figure for tiny-cnn: default used" in out
    assert _number(r"^peak: (\d+) GPUs", out) > 0


@pytest.mark.slow
def test_estimate_is_pure_and_uses_defaults(monkeypatch):
    cfg = compose(["experiment=paper", "grid.generator=[sd15,sd21]", "grid.prompt_style=[classname]", "grid.arch=[resnet50]",
                   "grid.probe=[rgb]"])
    figures = load_throughputs()
    del figures["generators"]["sd21"]
    notes = []
    rows = estimate(cfg, figures, None, {"train": 1000, "test": 100}, notes)
    assert notes == ["no figure for sd21: default used"]
    gen = {r.name: r for r in rows if r.stage == "generate"}
    assert gen["sd21"].figure == figures["generators"]["default"]
    assert gen["sd15"].gpu_hours == pytest.approx(200 * 500 / figures["generators"]["sd15"].img_s / 3600)
    train = next(r for r in rows if r.stage == "train")
    assert train.images == 2 * 100_000 * 80 + 1000 * 80  # two synthetic models, one real model shared by both trials
    # Everything complete: nothing to run, nothing to pay, no GPU demand.
    done = estimate(cfg, figures, lambda label: True, {"train": 1000, "test": 100})
    assert sum(r.gpu_hours for r in done) == 0
    assert any(line.startswith("peak: 0 GPUs") for line in format_plan(cfg, done))
    assert isinstance(figures["archs"]["resnet50"], Figure) and figures["archs"]["resnet50"].img_s == 3969


@pytest.mark.parametrize("args, needle", [
    (["plan", "experiment=nope"], "unknown experiment 'nope'"),
    (["plan", "grid.arch=[a"], "malformed override"),
    (["plan", "grid.generator=[nope]"], "unknown generator 'nope'"),
    (["plan", "--throughputs", "/no/such.yaml"], "throughputs file not found"),
])
def test_plan_bad_input_is_one_line(offline, capsys, args, needle):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert list(offline.iterdir()) == []


@pytest.mark.parametrize("overrides, needle", [
    (["grid.probe=[texture]", "grid.arch=[tv:resnet50]"], "probe 'texture' trains only"),
    (["prompts.n_per_class=0"], "prompts.n_per_class must be a whole number >= 1"),
    (["generation.image_format=gif"], "generation.image_format"),
    (["metrics.features_of=nope"], "metrics.features_of"),
])
def test_plan_and_run_refuse_the_same_inputs_with_the_same_line(offline, tmp_path, capsys, overrides, needle):
    """`synthray plan` runs `synthray run`'s checks (validate(cfg, dry=True)): the same bad input, the same line."""
    store = tmp_path / "store"
    errors = {}
    for command in ("plan", "run"):
        assert main([command, f"storage={store}", *overrides]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        errors[command] = err[0]
    assert errors["plan"] == errors["run"]
    assert not store.exists() and list(offline.iterdir()) == []


def test_a_dry_plan_skips_only_what_the_cluster_reads(offline, tmp_path, capsys):
    """Storage, data.root and hub weights that this machine cannot reach do not stop a plan; they do stop a run."""
    overrides = [f"storage={tmp_path / 'store'}", "data.source=imagefolder", "data.root=/no/such/folder"]
    assert main(["plan", *overrides]) == 0
    assert "not readable here" in capsys.readouterr().out
    assert main(["run", *overrides]) == 2
    assert "real data folder not found" in capsys.readouterr().err
