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
@pytest.mark.slow
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(tmp_path, args, needle):
    storage = tmp_path / "runs"
    out = synthray("run", f"storage={storage}", *args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("synthray: error:")
    assert not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("what, expected",
                         [("generators", "tiny-sd"), ("archs", "tiny-cnn"), ("probes", "highpass"), ("experiments", "paper")])
def test_list(what, expected):
    out = synthray("list", what)
    assert out.returncode == 0 and expected in out.stdout


def test_list_generators_shows_release_dates():
    out = synthray("list", "generators")
    line = next(row for row in out.stdout.splitlines() if row.startswith("sd15 "))
    assert "2022-10-20" in line and "model-default,paper" in line


@pytest.mark.slow
def test_resume_without_sweeps_is_one_line(tmp_path):
    out = synthray("resume", f"storage={tmp_path}")
    assert out.returncode == 2 and "no sweep under" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
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


def test_version():
    import importlib

    package = importlib.import_module("synthray")  # this file's synthray() is the command
    out = synthray("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"synthray {package.__version__}"


def test_every_command_dispatches_through_set_defaults():
    import argparse

    from synthray.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert callable(parser.get_default("func")), name


@pytest.mark.slow
def test_report_takes_storage_as_an_option_and_in_the_old_spelling(tmp_path):
    for args in (["--storage", str(tmp_path)], [f"storage={tmp_path}"]):
        out = synthray("report", *args, "--out", str(tmp_path / "out"))
        assert out.returncode == 2 and out.stderr.startswith("synthray: error: no sweep under "), out.stderr
        assert str(tmp_path) in out.stderr and len(out.stderr.strip().splitlines()) == 1
    both = synthray("report", f"storage={tmp_path}", "--storage", str(tmp_path))
    assert both.returncode == 2 and "storage given 2 times" in both.stderr


@pytest.mark.slow
def test_resume_says_what_it_accepts(tmp_path):
    out = synthray("resume", f"storage={tmp_path}", "recipe.epochs=3")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "resume takes only storage=<dir>" in out.stderr and "recipe.epochs=3" in out.stderr
    by_option = synthray("resume", "some-sweep", "--storage", str(tmp_path))
    assert by_option.returncode == 2 and "no sweep 'some-sweep' under" in by_option.stderr
    assert "storage=<dir>" in synthray("resume", "--help").stdout


def test_stage_weights_refuses_a_name_it_does_not_know(tmp_path):
    out = synthray("stage-weights", "not-a-model", f"hub.cache={tmp_path}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "unknown name 'not-a-model'" in out.stderr and "sd15" in out.stderr and "org/name[@revision]" in out.stderr
    assert not list(tmp_path.iterdir())
