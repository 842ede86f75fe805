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
    from omegaconf import OmegaConf

    from synthray.core.artifacts import DatasetRef
    from synthray.core.models import Models
    from synthray.data.real import build_real
    from synthray.generation.stage import generate
    from synthray.graph.synthetic import generator_entry
    from synthray.metrics.distribution import distribution_metrics
    from synthray.metrics.evaluation import accuracy_report, evaluate
    from synthray.metrics.features import clip_score, features
    from synthray.probes.stage import view
    from synthray.training.trainer import train_model

    cfg, point, probe, planned = trial.cfg, trial.point, trial.probe, trial.plan
    store, models = trial.store, Models.from_cfg(cfg)
    real = build_real(planned.real, store)
    table = trial.table
    if table is None:  # captions from the captioner stage: caption the real images (or reuse them), then the table
        from synthray.graph.synthetic import captioned_prompt_table

        table = captioned_prompt_table(cfg, point["generator"], point["prompt_style"], real)
    synth = generate(planned.synthetic, table, real, models)
    real_view = view(store, models, probe, real, planned.real_view)
    synth_view = view(store, models, probe, synth.artifact, {"data": planned.synth_view})["data"]
    # selection: used only by recipes that pick the best epoch on the real test split (recipe.selection.set).
    synth_model = train_model(planned.synth_model, synth_view, store, report_to_tune=report_to_tune, selection=real_view["test"])
    real_model = train_model(planned.real_model, real_view["train"], store, selection=real_view["test"])
    row: dict[str, Any] = dict(point)
    # The models are the best epochs by recipe.selection (held-out training rows, or the real test split as the
    # study does); `_acc_last` columns give the final epochs. Each evaluation is its own stage, on its own actors.
    built = {"synth_to_real": (synth_model, real_view["test"]), "real_to_synth": (real_model, synth_view),
             "real_to_real": (real_model, real_view["test"])}
    for prefix, (model, data) in built.items():
        row.update(accuracy_report(evaluate(planned.evaluations[prefix], model, data, store), prefix))
    row.update(best_epoch=synth_model.meta()["best_epoch"], selection_acc=synth_model.meta()["selection_acc_best"],
               selection_loss=synth_model.meta().get("selection_loss_best"))
    # The study measures density and coverage on the images; synthray by default on what the classifier saw.
    images = cfg.metrics.get("features_of", "view") == "images"
    sets = [features(spec, ref, models) for spec, ref in zip(planned.features, (
        DatasetRef(real, "train") if images else real_view["train"], synth if images else synth_view))]
    row.update(distribution_metrics(OmegaConf.to_container(cfg.metrics, resolve=True), int(cfg.seed), *sets))
    row["clipscore"] = clip_score(planned.clipscore, synth, models)  # the generated images, not a probe view
    row["n_synthetic"] = trial.synthetic.meta()["rows"]
    row["released"] = generator_entry(cfg, point["generator"]).get("released")
    row.update(dataset=trial.synthetic.key, synth_model=synth_model.key, real_model=real_model.key)
    log.info("trial %s: synth->real %.3f, real->synth %.3f, real->real %.3f, density %.3f, coverage %.3f",
             trial.label, row["synth_to_real_acc"], row["real_to_synth_acc"], row["real_to_real_acc"],
             row["density"], row["coverage"])
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
    from synthray.sweep.plan import AXES, extra_axes

    cfg = OmegaConf.create(cfg_yaml)
    point = {axis: config[axis] for axis in (*AXES, *extra_axes(cfg))}
    from synthray.core import progress
    from synthray.sweep.plan import point_label

    progress.bind_trial(point_label(point))
    row = run_point(cfg, point, report_to_tune=True)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float, str))})  # per-class lists stay in the record
