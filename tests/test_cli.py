"""The command line as a user meets it: real subprocesses, one-line errors, nothing written on bad input."""

import subprocess
import sys

import pytest


def synthray(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "synthray", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["grid.generator=[nope]"], "unknown generator 'nope'"),
        (["grid.arch=[not_a_model]"], "unknown architecture 'not_a_model'"),
        (["grid.probe=[nope]"], "unknown probe 'nope'"),
        (["data.source=imagefolder", "data.root=/no/such/folder"], "real data folder not found"),
        (["grid.arch=[a"], "malformed override"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(tmp_path, args, needle):
    storage = tmp_path / "runs"
    out = synthray("run", f"storage={storage}", *args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("synthray: error:")
    assert not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("what, expected", [("generators", "tiny-sd"), ("archs", "tiny-cnn"), ("probes", "highpass"), ("experiments", "paper")])
def test_list(what, expected):
    out = synthray("list", what)
    assert out.returncode == 0 and expected in out.stdout


def test_list_generators_shows_release_dates():
    out = synthray("list", "generators")
    line = next(l for l in out.stdout.splitlines() if l.startswith("sd15 "))
    assert "2022-10-20" in line and "model-default,paper" in line


def test_resume_without_sweeps_is_one_line(tmp_path):
    out = synthray("resume", f"storage={tmp_path}")
    assert out.returncode == 2 and "no sweep under" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_config_prints_the_composed_config_that_run_would_use(tmp_path):
    from omegaconf import OmegaConf

    from synthray.config import compose

    overrides = ["experiment=paper", f"storage={tmp_path}", "recipe.epochs=7"]
    done = synthray("config", *overrides)
    assert done.returncode == 0, done.stderr
    assert OmegaConf.to_container(OmegaConf.create(done.stdout)) == OmegaConf.to_container(compose(overrides))
    part = synthray("config", *overrides, "--package", "recipe.epochs")
    assert part.returncode == 0 and part.stdout == "7\n"
    bad = synthray("config", "--package", "recipe.nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "config has no key 'recipe.nope'" in bad.stderr
    assert not list(tmp_path.iterdir()), "config writes nothing"
