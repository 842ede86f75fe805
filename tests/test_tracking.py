"""tracking=mlflow|wandb: every trial's per-epoch metrics and its final row, read back through the trackers' own files
and clients (MLflow's local file store, W&B offline). The sweep that checks it is test_sweep.py's grid-axis test."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from synthray.config import compose
from synthray.core.registry import SynthrayError
from synthray.sweep.plan import validate

TRACKED = ["tracking=[mlflow,wandb]", "tracking_project=tracked"]  # with tracking_uri=<file: URI> and the env below


def track_offline(tmp_path, monkeypatch) -> list[str]:
    """Overrides and environment for a sweep that logs to MLflow's local file store and W&B offline, under tmp_path.
    (The sweep that uses them is test_sweep.py's grid-axis test: one sweep serves both.)"""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    return [*TRACKED, f"tracking_uri={(tmp_path / 'mlruns').as_uri()}"]


def assert_tracked(tmp_path, table, sweep_dir, epochs: int) -> None:
    """Every trial's epochs and final row are in MLflow (read back through MlflowClient) and in W&B's offline log,
    and `synthray resume` would get the callbacks back from Tune's saved state."""
    from mlflow.tracking import MlflowClient

    state = pickle.loads((Path(sweep_dir) / "tuner.pkl").read_bytes())  # Tuner.restore takes no callbacks: these
    kept = {type(c).__name__ for c in state["_run_config"].callbacks}
    assert {"ConsoleCallback", "MLflowLoggerCallback", "WandbLoggerCallback"} <= kept, kept

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(table)
    finals = sorted(run.data.metrics["synth_to_real_acc"] for run in runs)
    assert finals == pytest.approx(sorted(table["synth_to_real_acc"].astype(float)))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "epoch")
        assert [m.value for m in history] == [float(e) for e in range(1, epochs + 1)], "one report per epoch"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == epochs
        assert run.data.params["generator"] in set(table["generator"])

    # W&B offline: each run's transaction log (what `wandb sync` uploads) holds the epochs' and the final row's values.
    logs = sorted((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == len(table)
    data = b"".join(log.read_bytes() for log in logs)
    assert b"train_loss" in data and b"synth_to_real_acc" in data
    for value in table["synth_to_real_acc"]:
        assert json.dumps(float(value)).encode() in data


@pytest.mark.parametrize("override, needle", [
    ("tracking=neptune", "unknown tracking 'neptune'"),
    ("tracking=[mlflow,comet]", "unknown tracking 'comet'"),
])
def test_bad_tracking_is_one_line(tmp_path, override, needle):
    with pytest.raises(SynthrayError, match=needle):
        validate(compose([f"storage={tmp_path}", override]))
