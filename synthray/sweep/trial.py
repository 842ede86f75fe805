"""One trial: a point of the grid taken through every stage, each stage reusing a complete artifact.

`run_point` is plain Python (tests call it directly); `tune_trial` is the same thing as a Ray Tune function.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from synthray.artifacts import Artifact, without_legacy
from synthray.probes.stage import ProbeSetup

log = logging.getLogger("synthray")

RESULT_COLUMNS = [
    "generator", "prompt_style", "arch", "probe", "synth_to_real_acc", "real_to_synth_acc", "real_to_real_acc",
    "synth_to_real_acc_last", "best_epoch", "density", "coverage", "precision", "recall", "fd", "clipscore", "geneval",
    "n_synthetic", "released",
]


@dataclass
class Trial:
    """One grid point, planned once: every stage's spec and the artifacts they name (nothing is built here)."""

    point: dict[str, str]
    cfg: Any                 # the run config with the probe's recipe changes merged in
    real: Artifact
    table: pd.DataFrame | None  # the prompt table, built once per trial; None: made inside the trial from the
                                # captions the captioner stage builds first (prompts.captions=captioner)
    synthetic: Artifact
    probe: ProbeSetup
    result: Artifact
    num_classes: int

    @property
    def label(self) -> str:
        from synthray.sweep.plan import point_label

        return point_label(self.point)


def _metrics_identity(cfg: Any) -> dict[str, Any]:
    """The metric settings that change results (not where the encoder pools run; settings at their legacy values
    stay out, so older results keep their keys): `synthray.metrics.distribution.metrics_identity`."""
    from synthray.metrics.distribution import metrics_identity

    return metrics_identity(cfg)


def plan_trial(cfg: Any, point: dict[str, Any], real: Artifact | None = None, table: pd.DataFrame | None = None) -> Trial:
    """Plan `point`: build its specs (prompt table, probe setup, recipe) once. `real` and `table` may be shared
    across trials that have them in common. `cfg` is the sweep's config; the point's extra axes are set here."""
    from synthray.data.real import load_classes, real_artifact
    from synthray.generation.stage import build_prompt_table, synthetic_artifact, uses_captioner
    from synthray.probes.stage import probe_cfg, probe_setup
    from synthray.sweep.plan import point_cfg, point_label
    from synthray.training.archs import arch_identity
    from synthray.training.trainer import training_spec

    cfg = point_cfg(cfg, point)
    real = real if real is not None else real_artifact(cfg)
    if table is None and not uses_captioner(cfg, point["prompt_style"]):  # planning never captions
        table = build_prompt_table(cfg, point["generator"], point["prompt_style"])
    synth = synthetic_artifact(cfg, point["generator"], point["prompt_style"], table, real)
    probe = probe_setup(cfg, point["probe"])
    run_cfg = probe_cfg(cfg, probe)  # e.g. texture: BagNet on random patches
    spec = {"schema": 4, "point": point, **without_legacy(arch_identity(point["arch"]), {"arch": point["arch"]}),
            "synthetic": synth.key, "real": real.key, **training_spec(run_cfg),
            "probe": probe.identity, "metrics": _metrics_identity(cfg)}
    result = Artifact(synth.store, "results", spec, label=point_label(point))
    return Trial(point, run_cfg, real, table, synth, probe, result, len(load_classes(cfg.data.classes)))


def plan_trials(cfg: Any) -> list[Trial]:
    """Every trial of the grid, planned from keys alone; trials that share real data or a prompt table (same
    generator, style and prompt settings) share one planned copy."""
    from omegaconf import OmegaConf

    from synthray.data.real import real_artifact
    from synthray.generation.stage import build_prompt_table, uses_captioner
    from synthray.sweep.plan import point_cfg, trials

    reals: dict[str, Artifact] = {}
    tables: dict[tuple[str, str, str], pd.DataFrame | None] = {}
    out = []
    for point in trials(cfg):
        own = point_cfg(cfg, point)
        real = real_artifact(own)
        real = reals.setdefault(real.key, real)
        pair = (point["generator"], point["prompt_style"], OmegaConf.to_yaml(own.prompts) + str(own.data.classes))
        if pair not in tables:
            tables[pair] = None if uses_captioner(own, pair[1]) else build_prompt_table(own, *pair[:2])
        out.append(plan_trial(cfg, point, real, tables[pair]))
    return out


def run_point(cfg: Any, point: dict[str, str], report_to_tune: bool = False) -> dict[str, Any]:
    """Generate, probe, train and evaluate one grid point; returns its results row."""
    from synthray.artifacts import corruption

    trial = plan_trial(cfg, point)

    def evaluate(out: Any) -> dict[str, Any]:
        return _evaluate(trial, report_to_tune)

    try:
        trial.result.build(evaluate)
    except Exception as err:
        bad = corruption(err)
        if bad is None:
            raise
        # The reader that found it removed the bad file and the manifest, so building again redoes just that, once;
        # a second corruption fails the trial with its line.
        log.warning("trial %s: %s", trial.label, bad)
        trial.result.build(evaluate)
    return trial.result.meta()


def _evaluate(trial: Trial, report_to_tune: bool) -> dict[str, Any]:
    from synthray.artifacts import DatasetRef
    from synthray.data.real import real_data
    from synthray.generation.generators import generator_entry
    from synthray.generation.stage import generate
    from synthray.metrics.accuracy import accuracy_report
    from synthray.metrics.distribution import distribution_metrics
    from synthray.metrics.features import clip_score
    from synthray.models import Models
    from synthray.probes.stage import view
    from synthray.training.trainer import train

    cfg, point, probe = trial.cfg, trial.point, trial.probe
    store, models = trial.result.store, Models.from_cfg(cfg)
    real = real_data(cfg)
    table = trial.table
    if table is None:  # captions from the captioner stage: caption the real images (or reuse them), then the table
        from synthray.captioning.stage import captioned_prompt_table

        table = captioned_prompt_table(cfg, point["generator"], point["prompt_style"], real)
    synth = generate(cfg, trial.synthetic, table, real)
    real_view = view(store, models, probe, real, ("train", "test"))
    synth_view = view(store, models, probe, synth.artifact, ("data",))["data"]
    arch = point["arch"]
    # selection: used only by recipes that pick the best epoch on the real test split (recipe.selection.set).
    synth_model = train(cfg, arch, synth_view, trial.num_classes,
                        label=f"{arch} on {point['generator']}/{point['prompt_style']}/{probe.name}", report_to_tune=report_to_tune,
                        selection=real_view["test"])
    real_model = train(cfg, arch, real_view["train"], trial.num_classes, label=f"{arch} on real/{probe.name}",
                       selection=real_view["test"])
    row: dict[str, Any] = dict(point)
    # The models are the best epochs by recipe.selection (held-out training rows, or the real test split as the
    # study does); `_acc_last` columns give the final epochs.
    row.update(accuracy_report(synth_model, real_view["test"], "synth_to_real"))
    row.update(accuracy_report(real_model, synth_view, "real_to_synth"))
    row.update(accuracy_report(real_model, real_view["test"], "real_to_real"))
    row.update(best_epoch=synth_model.meta()["best_epoch"], selection_acc=synth_model.meta()["selection_acc_best"],
               selection_loss=synth_model.meta().get("selection_loss_best"))
    # The study measures density and coverage on the images; synthray by default on what the classifier saw.
    images = cfg.metrics.get("features_of", "view") == "images"
    row.update(distribution_metrics(cfg, DatasetRef(real, "train") if images else real_view["train"], synth if images else synth_view))
    row["clipscore"] = clip_score(cfg, synth)  # the generated images, not a probe view
    row["n_synthetic"] = trial.synthetic.meta()["rows"]
    row["released"] = generator_entry(cfg, point["generator"]).get("released")
    row.update(dataset=trial.synthetic.key, synth_model=synth_model.key, real_model=real_model.key)
    log.info("trial %s: synth->real %.3f, real->synth %.3f, real->real %.3f, density %.3f, coverage %.3f",
             trial.label, row["synth_to_real_acc"], row["real_to_synth_acc"], row["real_to_real_acc"],
             row["density"], row["coverage"])
    return row


def tune_trial(config: dict[str, Any], cfg_yaml: str) -> None:
    """Ray Tune function trainable: `config` holds one value per grid axis."""
    from omegaconf import OmegaConf
    from ray import tune

    from synthray.logs import setup_logging

    setup_logging()
    from synthray.sweep.plan import AXES, extra_axes

    cfg = OmegaConf.create(cfg_yaml)
    point = {axis: config[axis] for axis in (*AXES, *extra_axes(cfg))}
    from synthray import progress
    from synthray.sweep.plan import point_label

    progress.bind_trial(point_label(point))
    row = run_point(cfg, point, report_to_tune=True)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float, str))})  # per-class lists stay in the record
