"""The Python API as a notebook meets it: only `import synthray` and its public names."""

import sys

import pandas as pd
import pytest

import synthray

# The smoke experiment, small enough for a 2-core CI machine (as tests/conftest.py's TINY); every stage runs.
SMALL = ["prompts.n_per_class=6", "generation.shard_size=16", "generation.batch_size=4", "recipe.epochs=2",
         "recipe.batch_size=32", "metrics.max_samples=200"]


def test_version_and_lazy_names():
    assert isinstance(synthray.__version__, str) and synthray.__version__[0].isdigit()
    for name in ("compose", "plan", "run", "resume", "load_results", "report"):
        assert callable(getattr(synthray, name)) and getattr(synthray, name).__doc__
    with pytest.raises(AttributeError):
        synthray.no_such_name  # noqa: B018


def test_compose_and_plan(tmp_path):
    cfg = synthray.compose(f"storage={tmp_path}", "recipe.epochs=3", experiment="smoke")
    assert cfg.recipe.epochs == 3 and cfg.storage == str(tmp_path)
    trials = synthray.plan(cfg)
    assert [t.label for t in trials] == ["real-holdout/classname/tiny-cnn/rgb", "tiny-sd/classname/tiny-cnn/rgb"]
    assert not list(tmp_path.iterdir()), "plan writes nothing"


@pytest.mark.slow  # about 45 s on 2 cores: two trials, each generated, trained and evaluated
def test_run_then_load_results_leaves_sys_streams_alone(ray_cluster, tmp_path):
    cfg = synthray.compose("experiment=smoke", f"storage={tmp_path}", *SMALL)
    stdout, stderr = sys.stdout, sys.stderr
    results = synthray.run(cfg, name="api")
    assert sys.stdout is stdout and sys.stderr is stderr

    assert isinstance(results, pd.DataFrame) and len(results) == 2
    assert set(results["generator"]) == {"real-holdout", "tiny-sd"} and (results["status"] == "done").all()
    for col in ("synth_to_real_acc", "real_to_synth_acc", "real_to_real_acc"):
        assert results[col].between(0, 1).all(), results[col]
    sweep = results.attrs["sweep"]
    assert sweep.startswith("api-") and (tmp_path / "sweeps" / sweep / "logs" / "sweep.log").is_file()

    by_name = synthray.load_results(sweep, storage=str(tmp_path))
    pd.testing.assert_frame_equal(by_name, results)
    pd.testing.assert_frame_equal(synthray.load_results(str(tmp_path / "sweeps" / sweep)), results)
    pd.testing.assert_frame_equal(synthray.load_results(results.attrs["results"]), results)
    pd.testing.assert_frame_equal(synthray.load_results(storage=str(tmp_path)), results)  # the newest
