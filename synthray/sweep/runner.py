"""The sweep: Ray Tune over the grid, the results table, and resume of an interrupted sweep.

State: `<storage>/sweeps/<name>-<time>/` holds Tune's experiment state, the composed `config.yaml` and, at the
end, `results.parquet` (one row per trial, read only from the trials' result records). Storage may be a URI
(`s3://…`): Tune keeps its experiment state there too, so a sweep resumes from any machine that reaches it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from synthray.core import storage
from synthray.core.registry import SynthrayError, error_line
from synthray.sweep.columns import leading_columns, shown_columns
from synthray.sweep.geneval import join_geneval
from synthray.sweep.plan import check_specs, extra_axes, grid_axes, trial_label, validate
from synthray.sweep.tracking import tracking_callbacks, tracking_names
from synthray.sweep.trial import plan_trials, tune_trial
from synthray.sweep.waiting import watch as watch_waits

# Secrets and endpoints that workers on a remote cluster need, taken from the submitting environment. They travel
# in the job's runtime env only: never in a config, a key, a log line or a results file.
# Where the bucket is, for a driver that connects to a cluster from outside a job: settings, not secrets. Secrets
# are never forwarded (Ray would store them in its job table): each node reads its own (synthray.core.secrets).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")

log = logging.getLogger("synthray")


def start_local_ray(num_cpus: int | None = None) -> str:
    """Start a local cluster sized so Tune, Train and Data fit together; returns its GCS address."""
    import ray

    # Ray Train's controller polls workers every 2 s by default, and a worker's next report waits for that
    # poll: with short epochs that is most of the run. A fast poll costs nothing on one machine.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray Train's placement-group cleaner asks the state API (the dashboard) whether its controller lives. With no
    # dashboard, or with "auto" finding another or a stale cluster here, each ask hangs for 40 s and every training
    # ends 12 s late waiting for it (bench/overhead.py). So: a dashboard, and its address in the environment the
    # cluster's processes inherit. Not a job runtime env: that stops Ray from reusing prestarted workers.
    # include_dashboard=None, not True: where Ray lacks the dashboard's packages (a GPU host given Ray's wheel with
    # --no-deps) Ray starts its minimal API server instead of failing, so the benchmarks run there too (issue 25).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        # address="local": a new cluster, even when another one (say, a test rig) runs on this machine.
        ctx = ray.init(address="local", num_cpus=int(num_cpus or max(8, os.cpu_count() or 1)), include_dashboard=None,
                       dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True)
    finally:  # this process may later talk to another cluster's API server (synthray submit, tests)
        if before is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS")
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = before
    return ctx.address_info["gcs_address"]


GPU_SETTINGS = ("generation.device", "training.device", "probes.depth.device", "metrics.device", "captioner.device")


def init_ray(cfg: Any) -> None:
    """Connect to `ray.address` / $RAY_ADDRESS, or start a local cluster."""
    import ray

    if not ray.is_initialized():
        check_ray_target(cfg)
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
            # Inside a Ray Job the job's own runtime env already carries them (and its working dir must stay).
            in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
            ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env} if env and not in_job else None)
        else:
            start_local_ray(cfg.ray.num_cpus)
    from synthray.core.logs import setup_logging

    setup_logging()


def check_ray_target(cfg: Any) -> None:
    """A stage set to run on GPUs needs a cluster when this machine has none: say so before anything starts."""
    import ray

    if ray.is_initialized() or cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    gpu = [k for k in GPU_SETTINGS if OmegaConf.select(cfg, k) == "gpu"]
    if gpu and not _local_gpus():
        # A local Ray has no autoscaler: a GPU request there would wait forever.
        raise SynthrayError(f"{gpu[0]}=gpu, but this machine has no CUDA GPU and no cluster is given; "
                            "set device=cpu, or ray.address=<cluster> (or $RAY_ADDRESS)")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def plan_summary(cfg: Any, planned: list[Any] | None = None) -> list[str]:
    """What the sweep will reuse and what it must compute, from artifact keys alone (nothing is built)."""
    lines, done = [], 0
    for trial in planned if planned is not None else plan_trials(cfg):
        if trial.result.is_complete():
            done += 1
            state = f"reused result {trial.result.key}"
        elif trial.synthetic.is_complete():
            state = f"reused dataset {trial.synthetic.key}, to train and evaluate"
        else:
            state = "to generate, train and evaluate"
        lines.append(f"  {trial.label}: {state}")
    head = f"plan: {len(lines)} trials, {done} already complete (reused), {len(lines) - done} to run"
    return [head] + lines


def _trainable(cfg: Any, planned: list[Any]) -> Any:
    """The Tune trainable: `tune_trial` with the config, and the real data's fingerprints as this plan found them."""
    from ray import tune

    reals = {t.plan.real.ref: t.plan.real for t in planned}
    found = [(s.source, s.root, s.classes, s.files) for s in reals.values() if s.files is not None]
    return tune.with_resources(tune.with_parameters(tune_trial, cfg_yaml=OmegaConf.to_yaml(cfg), fingerprints=found), {"cpu": 1})


def run_sweep(cfg: Any, verbose: bool = False, stream: Any = None) -> tuple[pd.DataFrame, str]:
    """Validate, then run every trial of the grid under Ray Tune; returns the results table and its URI.
    `verbose`: every log line on the console too; `stream`: the console (default stdout)."""
    from ray import tune

    from synthray.sweep.console import ConsoleCallback

    validate(cfg)  # storage too: an unreachable bucket fails here, before Ray starts
    check_ray_target(cfg)
    sweep = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweeps = storage.join(cfg.storage, "sweeps")
    sweep_dir = storage.join(sweeps, sweep)
    fs, sweeps_path = storage.resolve(sweeps)
    planned = plan_trials(cfg)
    check_specs(spec for t in planned for spec in t.plan.specs())
    if all_reused(cfg, planned):
        for t in planned:  # a result found under its legacy key is recorded under its key too (found after a move)
            t.result.adopt()
        rows = [t.result.meta() for t in planned]  # read once: the console's end lines and the table share them
        with _console(cfg, sweep_dir, verbose, stream, planned, needs_ray=False) as console:
            storage.write_bytes(storage.join(sweep_dir, "config.yaml"), OmegaConf.to_yaml(cfg).encode())
            show_reused(console, planned, rows)
        return collect(cfg, sweep_dir, planned, rows)
    with _console(cfg, sweep_dir, verbose, stream, planned):
        storage.write_bytes(storage.join(sweep_dir, "config.yaml"), OmegaConf.to_yaml(cfg).encode())
        run_config = tune.RunConfig(
            name=sweep, storage_path=sweeps_path, storage_filesystem=fs,
            callbacks=[ConsoleCallback(), *tracking_callbacks(cfg, sweep)],
            failure_config=tune.FailureConfig(max_failures=int(cfg.tune.max_failures)), verbose=1,
        )
        space = param_space(cfg, planned)
        tuner = tune.Tuner(_trainable(cfg, planned), param_space=space, run_config=run_config,
                           tune_config=tune.TuneConfig(max_concurrent_trials=int(cfg.tune.max_concurrent_trials)))
        with watch_waits(cfg):  # one line when a request waits on a node that never starts (sweep/waiting.py)
            report_failures(tuner.fit())
    return collect(cfg, sweep_dir, planned)


def param_space(cfg: Any, planned: list[Any]) -> dict[str, Any]:
    """Tune's grid: one grid_search per axis (a classification sweep, as before the task axis), or, with a dense
    task, one over the planned points themselves (a dense point takes its task's model, not each of grid.arch)."""
    from ray import tune

    from synthray.graph.grid import POINT
    from synthray.graph.tasks import CLASSIFICATION, grid_tasks

    if grid_tasks(cfg) == [CLASSIFICATION]:
        return {axis: tune.grid_search(values) for axis, values in {**grid_axes(cfg), **extra_axes(cfg)}.items()}
    return {POINT: tune.grid_search([dict(t.point) for t in planned])}


def all_reused(cfg: Any, planned: list[Any]) -> bool:
    """Whether every trial's result is already complete, so the sweep needs no cluster at all: it is read from
    storage (a warm rerun takes seconds, and starts no GPU node). Trackers still get their runs through Tune."""
    return bool(planned) and not tracking_names(cfg) and all(t.result.is_complete() for t in planned)


def show_reused(console: Any, planned: list[Any], rows: list[dict[str, Any]]) -> None:
    """Each trial's end line (the console's `done` state), for a sweep whose results (`rows`) were all reused."""
    from synthray.sweep.console import outcome_text

    console.say("[synthray] every trial's result is already complete: nothing to run, no cluster needed")
    for trial, row in zip(planned, rows):
        console.set_state(trial.label, "done", outcome_text(row))


@contextlib.contextmanager
def _console(cfg: Any, sweep_dir: str, verbose: bool, stream: Any, planned: list[Any] | None = None,
             needs_ray: bool = True) -> Iterator[Any]:
    """The quiet console around a sweep: Ray is started inside it (its start-up lines go to the log), then the
    plan is shown: its first line on the console, every trial in the log."""
    from synthray.sweep.console import SweepConsole

    planned = plan_trials(cfg) if planned is None else planned
    with SweepConsole(sweep_dir, [t.label for t in planned], verbose, stream) as console:
        if needs_ray:
            init_ray(cfg)
        console.start(board=needs_ray)
        summary = plan_summary(cfg, planned)
        console.say(f"[synthray] {summary[0]}")
        for line in summary[1:]:
            log.info(line)
        console.say(f"[synthray] sweep {storage.name(sweep_dir)}: state in {sweep_dir}, log in {console.log_uri}")
        yield console


def report_failures(results: Any) -> None:
    """One line per failed trial: its own SynthrayError when it raised one, else the error's last line."""
    for result in results:
        if result.error is None:
            continue
        mine = error_line(result.error, "SynthrayError", "CorruptArtifact", "StorageUnavailable")
        last = [line.strip() for line in str(result.error).splitlines() if line.strip()]
        log.error("trial %s failed: %s", trial_label(result.config), mine or (last[-1] if last else type(result.error).__name__))


def find_sweep(root: str, sweep: str | None) -> str:
    """A sweep folder URI by exact name, by name prefix (newest wins) or full URI/path; the newest when None."""
    if sweep and ("/" in sweep or "://" in sweep):  # a location (sweep names hold no slash)
        uri = storage.check_storage(sweep)  # a missing bucket is one line now, not a search elsewhere
        if storage.exists(storage.join(uri, "config.yaml")):
            return uri
        raise SynthrayError(f"no sweep at {uri} (it has no config.yaml); give a sweep folder, <storage>/sweeps/<name>, "
                            "or a name with storage=<root>")
    sweeps = storage.join(storage.check_storage(root), "sweeps")
    names = storage.list_dirs(sweeps)
    found = [n for n in names if storage.exists(storage.join(sweeps, n, "config.yaml"))]
    if sweep:
        found = [n for n in found if n == sweep] or [n for n in found if n.startswith(sweep)]
    if not found:
        what = f"no sweep '{sweep}'" if sweep else "no sweep"
        raise SynthrayError(f"{what} under {sweeps}; sweeps there: {', '.join(names) or 'none'}")
    return storage.join(sweeps, max(found, key=lambda n: n[-15:]))  # names end in a sortable timestamp


def resume_sweep(root: str, sweep: str | None = None, verbose: bool = False, stream: Any = None) -> tuple[pd.DataFrame, str]:
    """Continue an interrupted sweep with `Tuner.restore`: finished trials stay, the rest run again."""
    from ray import tune

    sweep_dir = find_sweep(root, sweep)
    cfg = OmegaConf.create(storage.read_text(storage.join(sweep_dir, "config.yaml")))
    validate(cfg)
    check_ray_target(cfg)
    fs, path = storage.resolve(sweep_dir)
    name = storage.name(sweep_dir)
    planned = plan_trials(cfg)
    check_specs(spec for t in planned for spec in t.plan.specs())
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        if all_reused(cfg, planned):  # a sweep that never needed Tune: every result was reused
            return collect(cfg, sweep_dir, planned)
        raise SynthrayError(f"sweep {name} has no Tune state to restore (it stopped before starting); rerun it with synthray run")
    with _console(cfg, sweep_dir, verbose, stream, planned) as console:
        console.say(f"[synthray] resuming sweep {name}")
        # The callbacks come back from Tune's saved state (the console's and the trackers'), as the run made them.
        tuner = tune.Tuner.restore(path, trainable=_trainable(cfg, planned), resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
        with watch_waits(cfg):
            report_failures(tuner.fit())
    return collect(cfg, sweep_dir, planned)


def collect(cfg: Any, sweep_dir: str, planned: list[Any] | None = None,
            rows: list[dict[str, Any]] | None = None) -> tuple[pd.DataFrame, str]:
    """Read the result record of every planned trial (DomainBed's collect_results) into `results.parquet`.
    `rows`: those records, already read."""
    if rows is None:
        planned = plan_trials(cfg) if planned is None else planned
        rows = [t.result.meta() if t.result.is_complete() else dict(t.point, status="missing") for t in planned]
    table = pd.DataFrame(rows)
    if "status" not in table:
        table["status"] = "done"
    table["status"] = table["status"].fillna("done")
    table = join_geneval(cfg, table)
    if "clipscore" in table and OmegaConf.select(cfg, "metrics.clipscore.scale", default="torchmetrics") == "cosine":
        # Results store torchmetrics' max(100 cos, 0); a positive cosine is that over 100 (matched pairs are > 0).
        table["clipscore"] = table["clipscore"] / 100.0
    first = _leading_columns(cfg)
    columns = [c for c in first if c in table] + [c for c in table if c not in first]
    table = table[columns]
    path = storage.join(sweep_dir, "results.parquet")
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    storage.write_bytes(path, buf.getvalue())
    return table, path


def _leading_columns(cfg: Any) -> list[str]:
    """The four axes, then one column per extra axis (named by its config key), then the figures."""
    return leading_columns(list(extra_axes(cfg)))


def read_results(uri: str) -> pd.DataFrame:
    """A sweep's `results.parquet`, from any storage URI."""
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def format_table(table: pd.DataFrame) -> str:
    optional = [c for c in ("clipscore", "geneval", "fd") if c in table and table[c].isna().all()]  # not configured
    shown = table[[c for c in shown_columns(table) if c not in optional]].copy()
    if "released" in shown:  # tiny and control generators have no release date
        shown["released"] = shown["released"].fillna("-")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def caption_command(overrides: list[str]) -> str:
    """`synthray caption [overrides]`: build or reuse the captions; one line with their URI and row count."""
    from synthray.config import compose
    from synthray.core.storage import check_storage
    from synthray.graph.captions import caption, check_captioner
    from synthray.graph.real import check_source

    cfg = compose(overrides)
    check_storage(cfg.storage)
    check_source(cfg)
    check_captioner(cfg)
    init_ray(cfg)
    art = caption(cfg)
    return f"captions: {art.file('data')} ({art.meta()['rows']} rows, {art.spec['backend']})"
