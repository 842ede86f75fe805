"""The sweep: Ray Tune over the grid, the results table, and resume of an interrupted sweep.

State: `<storage>/sweeps/<name>-<time>/` holds Tune's experiment state, the composed `config.yaml` and, at the
end, `results.parquet` (one row per trial, read only from the trials' result records).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from synthray.registry import SynthrayError
from synthray.sweep.plan import grid_axes, validate
from synthray.sweep.geneval import join_geneval
from synthray.sweep.trial import RESULT_COLUMNS, planned_artifacts, tune_trial

log = logging.getLogger("synthray")


def start_local_ray(num_cpus: int | None = None) -> str:
    """Start a local cluster sized so Tune, Train and Data fit together; returns its GCS address."""
    import ray

    # Ray Train's controller polls workers every 2 s by default, and a worker's next report waits for that
    # poll: with short epochs that is most of the run. A fast poll costs nothing on one machine.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ctx = ray.init(num_cpus=int(num_cpus or max(8, os.cpu_count() or 1)), include_dashboard=False, log_to_driver=True)
    return ctx.address_info["gcs_address"]


def init_ray(cfg: Any) -> None:
    """Connect to `ray.address` / $RAY_ADDRESS, or start a local cluster."""
    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            start_local_ray(cfg.ray.num_cpus)
    from synthray.logs import setup_logging

    setup_logging()


def plan_summary(cfg: Any) -> list[str]:
    """What the sweep will reuse and what it must compute, from artifact keys alone (nothing is built)."""
    lines, done = [], 0
    for point, synth, result in planned_artifacts(cfg):
        if result.is_complete():
            done += 1
            state = f"reused result {result.key}"
        elif synth.is_complete():
            state = f"reused dataset {synth.key}, to train and evaluate"
        else:
            state = "to generate, train and evaluate"
        lines.append(f"  {'/'.join(point.values())}: {state}")
    head = f"plan: {len(lines)} trials, {done} already complete (reused), {len(lines) - done} to run"
    return [head] + lines


def _trainable(cfg: Any) -> Any:
    from ray import tune

    return tune.with_resources(tune.with_parameters(tune_trial, cfg_yaml=OmegaConf.to_yaml(cfg)), {"cpu": 1})


def storage_root(cfg_or_path: Any) -> Path:
    value = cfg_or_path if isinstance(cfg_or_path, (str, Path)) else cfg_or_path.storage
    return Path(value).expanduser().resolve()


def run_sweep(cfg: Any) -> tuple[pd.DataFrame, Path]:
    """Validate, then run every trial of the grid under Ray Tune; returns the results table and its path."""
    from ray import tune

    validate(cfg)
    sweep = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = storage_root(cfg) / "sweeps" / sweep
    init_ray(cfg)
    for line in plan_summary(cfg):
        log.info(line)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    log.info("sweep %s: state in %s", sweep, sweep_dir)
    tuner = tune.Tuner(
        _trainable(cfg),
        param_space={axis: tune.grid_search(values) for axis, values in grid_axes(cfg).items()},
        tune_config=tune.TuneConfig(max_concurrent_trials=int(cfg.tune.max_concurrent_trials)),
        run_config=tune.RunConfig(
            name=sweep, storage_path=str(sweep_dir.parent),
            failure_config=tune.FailureConfig(max_failures=int(cfg.tune.max_failures)), verbose=1,
        ),
    )
    tuner.fit()
    return collect(cfg, sweep_dir)


def find_sweep(storage: str | Path, sweep: str | None) -> Path:
    """A sweep folder by exact name, by name prefix (newest wins) or path; the newest sweep when None."""
    if sweep and Path(sweep).expanduser().is_dir() and (Path(sweep).expanduser() / "config.yaml").is_file():
        return Path(sweep).expanduser().resolve()
    root = storage_root(storage) / "sweeps"
    found = sorted((p for p in root.glob("*") if (p / "config.yaml").is_file()), key=lambda p: p.name)
    if sweep:
        found = [p for p in found if p.name == sweep] or [p for p in found if p.name.startswith(sweep)]
    if not found:
        names = sorted(p.name for p in root.glob("*")) if root.is_dir() else []
        what = f"no sweep '{sweep}'" if sweep else "no sweep"
        raise SynthrayError(f"{what} under {root}; sweeps there: {', '.join(names) or 'none'}")
    return max(found, key=lambda p: p.name[-15:])  # names end in a sortable timestamp


def resume_sweep(storage: str | Path, sweep: str | None = None) -> tuple[pd.DataFrame, Path]:
    """Continue an interrupted sweep with `Tuner.restore`: finished trials stay, the rest run again."""
    from ray import tune

    sweep_dir = find_sweep(storage, sweep)
    cfg = OmegaConf.create(OmegaConf.load(sweep_dir / "config.yaml"))
    validate(cfg)
    init_ray(cfg)
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise SynthrayError(f"sweep {sweep_dir.name} has no Tune state to restore (it stopped before starting); rerun it with synthray run")
    log.info("resuming sweep %s", sweep_dir.name)
    for line in plan_summary(cfg):
        log.info(line)
    tuner = tune.Tuner.restore(str(sweep_dir), trainable=_trainable(cfg), resume_unfinished=True, resume_errored=True)
    tuner.fit()
    return collect(cfg, sweep_dir)


def collect(cfg: Any, sweep_dir: Path) -> tuple[pd.DataFrame, Path]:
    """Read the result record of every planned trial (DomainBed's collect_results) into `results.parquet`."""
    rows = [art.meta() if art.is_complete() else dict(point, status="missing") for point, _, art in planned_artifacts(cfg)]
    table = pd.DataFrame(rows)
    if "status" not in table:
        table["status"] = "done"
    table["status"] = table["status"].fillna("done")
    table = join_geneval(cfg, table)
    columns = [c for c in RESULT_COLUMNS + ["status"] if c in table] + [c for c in table if c not in RESULT_COLUMNS + ["status"]]
    table = table[columns]
    path = sweep_dir / "results.parquet"
    tmp = path.with_name(".results.parquet.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return table, path


def format_table(table: pd.DataFrame) -> str:
    optional = [c for c in ("clipscore", "geneval", "fd") if c in table and table[c].isna().all()]  # not configured
    shown = table[[c for c in RESULT_COLUMNS + ["status"] if c in table and c not in ("precision", "recall", *optional)]].copy()
    if "released" in shown:  # tiny and control generators have no release date
        shown["released"] = shown["released"].fillna("-")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
