"""synthray from Python (a notebook, a script): the same steps as the command line, returning objects, printing
nothing. Exported from `synthray` itself: `synthray.compose(...)`, `synthray.run(cfg)` and so on.

    >>> import synthray
    >>> cfg = synthray.compose("experiment=smoke", "storage=/tmp/runs")
    >>> results = synthray.run(cfg)                     # a pandas DataFrame, one row per trial
    >>> results[["generator", "synth_to_real_acc"]]
    >>> synthray.load_results(results.attrs["sweep"], storage="/tmp/runs")   # the same table, read back
    >>> synthray.report(results.attrs["sweep"], storage="/tmp/runs", out="/tmp/report")

Unlike `synthray run`, a sweep run from here leaves `sys.stdout` and `sys.stderr` alone (a notebook's streams stay
its own): only logging handlers go to the sweep's log (`<storage>/sweeps/<sweep>/logs/sweep.log`) while it runs.
Errors are raised as `synthray.core.registry.SynthrayError`, with the one-line message the command line prints.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

__all__ = ["compose", "plan", "run", "resume", "load_results", "report"]


def compose(*overrides: str, experiment: str | None = None) -> DictConfig:
    """The resolved run config, as `synthray run` composes it from its overrides.

    Args:
        *overrides (str): Hydra-grammar overrides, as on the command line (`"storage=/tmp/x"`,
            `"grid.arch=[tiny-cnn]"`, `"recipe.epochs=3"`).
        experiment (str | None): the experiment (`experiments/<name>.yaml`); the same as the override
            `"experiment=<name>"`. Default: `smoke`.

    Returns:
        omegaconf.DictConfig: the composed config, every interpolation resolved.

    Example:
        >>> cfg = synthray.compose("storage=/tmp/runs", "recipe.epochs=3", experiment="smoke")
        >>> cfg.recipe.epochs
        3
    """
    from synthray.config import compose as _compose

    given = list(overrides)
    if experiment is not None:
        given.insert(0, f"experiment={experiment}")
    return _compose(given)


def plan(cfg: DictConfig) -> Any:
    """The stage graph of a sweep of `cfg`, checked (names, paths, storage) but nothing built or started.

    Args:
        cfg (DictConfig): a config from `compose`.

    Returns:
        synthray.graph.planner.Graph: iterates over its trials, one per grid point, each with `.label`
        (`generator/prompt_style/arch/probe`), `.point` and its frozen specs (`.real`, `.synthetic`, `.synth_model`,
        `.real_model`, `.features`, `.result`, ...: each with `.key`, `.ref`, `.work()` and `.resources()`);
        `.specs` holds every distinct spec by `<kind>/<key>`, shared across trials.

    Example:
        >>> graph = synthray.plan(synthray.compose("storage=/tmp/runs"))
        >>> [t.label for t in graph]
        ['real-holdout/classname/tiny-cnn/rgb', 'tiny-sd/classname/tiny-cnn/rgb']
        >>> sorted({ref.split("/")[0] for ref in graph.specs})
        ['features', 'models', 'real', 'results', 'synthetic']
    """
    from synthray.graph.planner import plan as plan_graph
    from synthray.sweep.plan import check_specs, validate

    validate(cfg)
    graph = plan_graph(cfg)
    check_specs(graph.specs.values())
    return graph


def generate(cfg: DictConfig, generator: str, style: str = "classname") -> Any:
    """One synthetic dataset from a config, in one call: the real data when the generator draws from it, the
    prompt table, and the generation stage (reused when stored).

    Args:
        cfg (DictConfig): a config from `compose` (generation settings, storage, the zoo).
        generator (str): a generator name of the zoo, e.g. "tiny-sd" or "sd15".
        style (str): the prompt style, "classname" or "caption".

    Returns:
        synthray.core.artifacts.DatasetRef: the dataset's `data` split; `.uri` is its folder of parquet shards
        (columns id, image, label, class_id, prompt, seed, ...), `.artifact.key` its key.

    Example:
        >>> data = synthray.generate(synthray.compose("storage=/tmp/runs"), "tiny-sd")
        >>> data.artifact.meta()["rows"]
        300
    """
    from synthray.graph.synthetic import generate_dataset

    return generate_dataset(cfg, generator, style)


def run(cfg: DictConfig, *, name: str | None = None, quiet: bool = True) -> pd.DataFrame:
    """Run the sweep of `cfg` (what `synthray run` does, without its printing); returns its results table.

    Starts a local Ray (or connects to `ray.address` / $RAY_ADDRESS) unless this process is already connected;
    every result already in storage is reused. `sys.stdout` and `sys.stderr` are left as they are.

    Args:
        cfg (DictConfig): a config from `compose`.
        name (str | None): the sweep's name (its folder is `<storage>/sweeps/<name>-<time>`); default `cfg.name`.
        quiet (bool): True: nothing is printed (it is all in the sweep's log). False: the console's progress lines
            on `sys.stdout`, and the lines Ray forwards from workers as well.

    Returns:
        pandas.DataFrame: one row per trial (the four axes, the accuracies, density, coverage, ..., `status`),
        as stored in the sweep's `results.parquet`. `.attrs["sweep"]` is the sweep's name, `.attrs["results"]`
        the file's URI and `.attrs["storage"]` the storage root.

    Example:
        >>> results = synthray.run(synthray.compose("storage=/tmp/runs"))
        >>> results[results.status == "done"]["synth_to_real_acc"].max()
    """
    from omegaconf import OmegaConf

    from synthray.sweep.runner import run_sweep

    if name is not None:
        cfg = OmegaConf.merge(cfg, {"name": name})
    with _captured(quiet) as stream:
        table, path = run_sweep(cfg, stream=stream)
    return _with_attrs(table, path)


def resume(sweep: str | None = None, storage: str | None = None, *, quiet: bool = True) -> pd.DataFrame:
    """Continue a stopped sweep with the config it was started with; returns its results table.

    Args:
        sweep (str | None): a sweep name or name prefix under `storage`, or a sweep folder (path or URI).
            Default: the newest sweep.
        storage (str | None): the storage root (default: the config's, `./synthray-runs`).
        quiet (bool): as for `run`.

    Returns:
        pandas.DataFrame: as `run` returns it.

    Example:
        >>> results = synthray.resume("smoke-20261126-013015", storage="/tmp/runs")
    """
    from synthray.sweep.runner import resume_sweep

    with _captured(quiet) as stream:
        table, path = resume_sweep(_root(storage), sweep, stream=stream)
    return _with_attrs(table, path)


def load_results(sweep: str | None = None, storage: str | None = None) -> pd.DataFrame:
    """A sweep's stored results table, read back (from local storage or an object-store URI).

    Args:
        sweep (str | None): a sweep name (or name prefix) under `storage`, a sweep folder (path or URI), or a
            `results.parquet` path or URI. Default: the newest sweep under `storage`.
        storage (str | None): the storage root for a sweep name (default: the config's, `./synthray-runs`).

    Returns:
        pandas.DataFrame: the table, with `.attrs` as `run` sets them.

    Example:
        >>> synthray.load_results("smoke", storage="/tmp/runs")          # the newest smoke-* sweep
        >>> synthray.load_results("/tmp/runs/sweeps/smoke-20261126-013015")
        >>> synthray.load_results("s3://bucket/runs/sweeps/smoke-20261126-013015/results.parquet")
    """
    from synthray.core import storage as store
    from synthray.core.registry import SynthrayError
    from synthray.sweep.runner import find_sweep, read_results

    if sweep is not None and sweep.endswith(".parquet"):
        uri = store.normalize(sweep)
        if not store.exists(uri):
            raise SynthrayError(f"no results file {uri}")
    else:
        folder = find_sweep(_root(storage), sweep)
        uri = store.join(folder, "results.parquet")
        if not store.exists(uri):
            raise SynthrayError(f"sweep {store.name(folder)} has no results.parquet yet (still running, or stopped)")
    return _with_attrs(read_results(uri), uri)


def report(*sweeps: str, out: str | os.PathLike[str] = "synthray-report", storage: str | None = None,
           heatmap: tuple[str, str] | None = None, per_class: bool = False) -> Path:
    """The study's figures and results table as one self-contained HTML page (`synthray report`).

    Args:
        *sweeps (str): sweep names (under `storage`), sweep folders or URIs, or results.parquet files; several
            merge into one report. None: the newest sweep.
        out (str | PathLike): the output folder (`report.html`, and `figures/` with each figure as PNG and SVG).
        storage (str | None): the storage root for sweep names (default: the config's, `./synthray-runs`).
        heatmap (tuple[str, str] | None): the per-class heatmap's (generator, architecture).
        per_class (bool): density against coverage per class too.

    Returns:
        pathlib.Path: the page, `<out>/report.html`.

    Example:
        >>> page = synthray.report("smoke", storage="/tmp/runs", out="/tmp/report")
        >>> from IPython.display import IFrame; IFrame(str(page), 900, 600)
    """
    from synthray.report.page import write_report

    return write_report(list(sweeps), Path(out), _root(storage), heatmap, per_class)


# --- helpers ------------------------------------------------------------------------------------------------------

def _root(storage: str | None) -> str:
    """The storage root as the command line resolves `storage=` (default: the config's)."""
    from synthray.config import compose as _compose

    return str(_compose([f"storage={storage}"] if storage is not None else []).storage)


@contextlib.contextmanager
def _captured(quiet: bool) -> Iterator[Any]:
    """Around a sweep from Python: sys.stdout/sys.stderr left alone; the console's lines on sys.stdout unless
    `quiet` (then nowhere: they are in the sweep's log)."""
    from synthray.sweep.capture import leave_sys_streams

    with leave_sys_streams(worker_lines=not quiet):
        if not quiet:
            yield sys.stdout
            return
        with open(os.devnull, "w", encoding="utf-8") as null:
            yield null


def _with_attrs(table: pd.DataFrame, uri: str) -> pd.DataFrame:
    from synthray.core import storage as store

    table.attrs["results"] = uri
    if store.name(uri) == "results.parquet":  # a sweep's own: <storage>/sweeps/<sweep>/results.parquet
        folder = store.parent(uri)
        table.attrs.update(sweep=store.name(folder), storage=store.parent(store.parent(folder)))
    return table
