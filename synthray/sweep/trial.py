"""One trial: a point of the grid taken through every stage, each stage reusing a complete artifact.

`run_point` is plain Python (tests call it directly); `tune_trial` is the same thing as a Ray Tune function.
"""

from __future__ import annotations

import logging
from typing import Any

from synthray.core.artifacts import Artifact, Store
from synthray.graph.planner import TrialPlan, plan, plan_point
from synthray.sweep.columns import RESULT_COLUMNS  # noqa: F401 - defined in sweep/columns.py; re-exported

log = logging.getLogger("synthray")


class Trial:
    """One planned grid point (`graph.planner.TrialPlan`) with its artifacts in a store: what the runner checks
    for reuse and what a Tune trial builds."""

    def __init__(self, plan: TrialPlan, store: Store):
        self.plan, self.store = plan, store
        self.point, self.cfg, self.table, self.probe = plan.point, plan.cfg, plan.table, plan.probe
        self.num_classes = plan.num_classes
        self.real: Artifact = plan.real.artifact(store)
        self.synthetic: Artifact = plan.synthetic.artifact(store)
        self.result: Artifact = plan.result.artifact(store)

    @property
    def label(self) -> str:
        return self.plan.label


def plan_trial(cfg: Any, point: dict[str, Any]) -> Trial:
    """Plan `point` of the sweep `cfg` (the point's extra axes are set here)."""
    return Trial(plan_point(cfg, point), Store.from_cfg(cfg))


def plan_trials(cfg: Any) -> list[Trial]:
    """Every trial of the grid, from the planner's graph: trials share the specs they have in common."""
    store = Store.from_cfg(cfg)
    return [Trial(t, store) for t in plan(cfg).trials]


def run_point(cfg: Any, point: dict[str, str], report_to_tune: bool = False) -> dict[str, Any]:
    """Generate, probe, train and evaluate one grid point; returns its results row."""
    from synthray.core.artifacts import corruption

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
    """The result stage: build every spec the trial's row needs (`graph.build`: inputs first, each once, complete
    ones reused), then read the row off the built artifacts."""
    from omegaconf import OmegaConf

    from synthray.core.models import Models
    from synthray.graph.build import Context, build
    from synthray.metrics.distribution import distribution_metrics
    from synthray.metrics.evaluation import accuracy_report
    from synthray.metrics.features import feature_sets, mean_clipscore

    cfg, point, planned = trial.cfg, trial.point, trial.plan
    if not isinstance(planned, TrialPlan):
        return _evaluate_dense(trial, report_to_tune)
    # Only the synthetic model's epochs go to Tune: they are the trial's learning curve.
    ctx = Context(trial.store, Models.from_cfg(cfg), report=planned.synth_model.ref if report_to_tune else None)
    row: dict[str, Any] = dict(point)
    # The models are the best epochs by recipe.selection (held-out training rows, or the real test split as the
    # study does); `_acc_last` columns give the final epochs. Each evaluation is its own stage, on its own actors.
    for prefix, spec in planned.evaluations.items():
        row.update(accuracy_report(build(spec, ctx), prefix))
    synth_model = build(planned.synth_model, ctx).meta()
    row.update(best_epoch=synth_model["best_epoch"], selection_acc=synth_model["selection_acc_best"],
               selection_loss=synth_model.get("selection_loss_best"))
    # The study measures density and coverage on the images; synthray by default on what the classifier saw.
    real_set, synth_set = (feature_sets(build(spec, ctx)) for spec in planned.features)
    row.update(distribution_metrics(OmegaConf.to_container(cfg.metrics, resolve=True), int(cfg.seed), real_set, synth_set))
    # CLIPScore of the generated images, not a probe view
    row["clipscore"] = mean_clipscore(build(planned.clipscore, ctx)) if planned.clipscore is not None else None
    row.update(_made_by(trial, ctx))
    log.info("trial %s: synth->real %.3f, real->synth %.3f, real->real %.3f, density %.3f, coverage %.3f",
             trial.label, row["synth_to_real_acc"], row["real_to_synth_acc"], row["real_to_real_acc"],
             row["density"], row["coverage"])
    return row


def _made_by(trial: Trial, ctx: Any) -> dict[str, Any]:
    """What made a row: the dataset (its key, its rows, its generator's release date) and both models' keys."""
    from synthray.graph.build import build
    from synthray.graph.synthetic import generator_entry

    planned = trial.plan
    synthetic = build(planned.synthetic, ctx)
    return {"n_synthetic": synthetic.meta()["rows"], "released": generator_entry(trial.cfg, trial.point["generator"]).get("released"),
            "dataset": synthetic.key, "synth_model": planned.synth_model.key, "real_model": planned.real_model.key}


def _evaluate_dense(trial: Trial, report_to_tune: bool) -> dict[str, Any]:
    """A dense point's row: its three evaluations' metrics (`synth_to_real_map`, ... or `..._miou`), overall and per
    class, and what made them."""
    from synthray.core.models import Models
    from synthray.graph.build import Context, build
    from synthray.metrics.dense_eval import dense_report

    cfg, point, planned = trial.cfg, trial.point, trial.plan
    ctx = Context(trial.store, Models.from_cfg(cfg), report=planned.synth_model.ref if report_to_tune else None)
    row: dict[str, Any] = dict(point)
    for prefix, spec in planned.evaluations.items():
        row.update(dense_report(build(spec, ctx), prefix))
    row.update(_made_by(trial, ctx))
    row["n_labelled"] = build(planned.synth_model, ctx).meta()["rows"]
    row["dense_classes"] = [planned.real.classes[i] for i in planned.synth_model.classes]
    row.update(real=planned.real.key, labels_real=planned.labels["real_test"].key,
               labels_synthetic=planned.labels["synthetic"].key)  # the report's pseudo-label gallery reads them
    main = "map" if planned.task == "detection" else "miou"
    log.info("trial %s: synth->real %s %.3f, real->synth %.3f, real->real %.3f", trial.label, main,
             row[f"synth_to_real_{main}"], row[f"real_to_synth_{main}"], row[f"real_to_real_{main}"])
    return row


def tune_trial(config: dict[str, Any], cfg_yaml: str, fingerprints: list[Any] = ()) -> None:
    """Ray Tune function trainable: `config` holds one value per grid axis; `fingerprints`: the real data's, as the
    sweep's plan computed them (`graph.identity.planned_fingerprints`)."""
    from omegaconf import OmegaConf
    from ray import tune

    from synthray.core.logs import setup_logging
    from synthray.graph.identity import planned_fingerprints

    setup_logging()
    planned_fingerprints(list(fingerprints))
    from synthray.graph.grid import POINT
    from synthray.sweep.plan import AXES, extra_axes

    cfg = OmegaConf.create(cfg_yaml)
    # A sweep with a dense task gives each trial its whole point (not a cross product of the axes).
    point = dict(config[POINT]) if POINT in config else {axis: config[axis] for axis in (*AXES, *extra_axes(cfg))}
    from synthray.core import progress
    from synthray.sweep.plan import point_label

    progress.bind_trial(point_label(point))
    row = run_point(cfg, point, report_to_tune=True)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float, str))})  # per-class lists stay in the record
