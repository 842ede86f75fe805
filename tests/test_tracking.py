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


@pytest.mark.slow
@pytest.mark.parametrize("in_job", [True, False])
def test_tracking_whose_package_does_not_import_stops_the_sweep_in_one_line(tmp_path, in_job):
    """`synthray submit tracking=wandb` passes on a laptop that has wandb; on a head without it the job's
    `synthray run` must stop before any stage, in one line with exit code 2. A fresh process whose `wandb` cannot be
    imported (a module on PYTHONPATH that raises ImportError, as a missing or broken install does) stands in for the
    head; Ray's job variable marks it as a submitted job's driver, as on the head."""
    import os

    from tests.rig import run_cli

    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "wandb.py").write_text("raise ImportError('No module named wandb')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")])), "RAY_ADDRESS": ""}
    if in_job:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = "{}"
    storage = tmp_path / "runs"
    done = run_cli("run", f"storage={storage}", "tracking=wandb", cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2, (done.stdout + done.stderr)[-2000:]
    line = done.stderr.strip()
    assert line.count("\n") == 0, done.stderr
    where = "the wandb package on the cluster's head: No module named wandb" if in_job else "the wandb package: pip install wandb"
    assert f"tracking=wandb needs {where}" in line, line
    assert not (storage / "sweeps").exists(), "nothing started"
