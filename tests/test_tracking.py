"""tracking=mlflow|wandb: every trial's per-epoch metrics and its final row, read back through the trackers' own files
and clients (MLflow's local file store, W&B offline)."""

from __future__ import annotations

import json

import pytest

from synthray.config import compose
from synthray.registry import SynthrayError
from synthray.sweep.plan import validate
from synthray.sweep.runner import run_sweep
from tests.conftest import tiny_cfg


@pytest.mark.slow
def test_mlflow_and_wandb_receive_every_epoch_and_the_results_row(ray_cluster, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    uri = (tmp_path / "mlruns").as_uri()
    cfg = tiny_cfg(tmp_path / "runs", "grid.generator=[real-holdout]", "recipe.epochs=3", "tracking=[mlflow,wandb]",
                   f"tracking_uri={uri}", "tracking_project=tracked")
    table, _ = run_sweep(cfg)
    assert (table["status"] == "done").all()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    [run] = client.search_runs([experiment.experiment_id])
    final = run.data.metrics
    assert final["synth_to_real_acc"] == pytest.approx(float(table["synth_to_real_acc"].iloc[0]))
    epochs = client.get_metric_history(run.info.run_id, "epoch")
    assert [m.value for m in epochs] == [1.0, 2.0, 3.0], "one report per epoch of the synthetic model"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    assert run.data.params["generator"] == "real-holdout"

    # W&B offline: the run's transaction log (what `wandb sync` uploads) holds the epochs' and the final row's values.
    [log] = list((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    data = log.read_bytes()
    assert b"train_loss" in data and b"synth_to_real_acc" in data
    assert json.dumps(float(table["synth_to_real_acc"].iloc[0])).encode() in data


@pytest.mark.parametrize("override, needle", [
    ("tracking=neptune", "unknown tracking 'neptune'"),
    ("tracking=[mlflow,comet]", "unknown tracking 'comet'"),
])
def test_bad_tracking_is_one_line(tmp_path, override, needle):
    with pytest.raises(SynthrayError, match=needle):
        validate(compose([f"storage={tmp_path}", override]))
