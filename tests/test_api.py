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
    for name in ("compose", "plan", "generate", "run", "resume", "load_results", "report"):
        assert callable(getattr(synthray, name)) and getattr(synthray, name).__doc__
    with pytest.raises(AttributeError):
        synthray.no_such_name  # noqa: B018


def test_compose_and_plan(tmp_path):
    cfg = synthray.compose(f"storage={tmp_path}", "recipe.epochs=3", experiment="smoke")
    assert cfg.recipe.epochs == 3 and cfg.storage == str(tmp_path)
    graph = synthray.plan(cfg)
    assert [t.label for t in graph] == ["real-holdout/classname/tiny-cnn/rgb", "tiny-sd/classname/tiny-cnn/rgb"]
    # One real-data spec and one real model shared by both trials; every spec says what it costs and needs.
    kinds = [ref.split("/")[0] for ref in graph.specs]
    assert kinds.count("real") == 1 and kinds.count("synthetic") == 2 and kinds.count("results") == 2
    assert all(spec.work() is None or spec.work().images > 0 for spec in graph.specs.values())
    assert {spec.resources().device for spec in graph.specs.values()} == {"cpu"}
    assert not list(tmp_path.iterdir()), "plan writes nothing"


def test_generate_one_dataset_in_one_call(tmp_path):
    cfg = synthray.compose(f"storage={tmp_path}", "prompts.n_per_class=2", experiment="smoke")
    data = synthray.generate(cfg, "real-holdout")
    assert data.artifact.meta()["rows"] == 20 and data.artifact.is_complete()
    assert synthray.generate(cfg, "real-holdout").artifact.key == data.artifact.key  # reused


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
