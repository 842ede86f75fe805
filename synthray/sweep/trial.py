"""One trial: a point of the grid taken through every stage, each stage reusing a complete artifact.

`run_point` is plain Python (tests call it directly); `tune_trial` is the same thing as a Ray Tune function.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from synthray.artifacts import Artifact

log = logging.getLogger("synthray")

RESULT_COLUMNS = [
    "generator", "prompt_style", "arch", "probe", "synth_to_real_acc", "real_to_synth_acc", "real_to_real_acc",
    "synth_to_real_acc_last", "best_epoch", "density", "coverage", "precision", "recall", "fd", "clipscore", "geneval",
    "n_synthetic", "released",
]


def ref(path: Path) -> str:
    """An artifact folder's identity: `<kind>/<key>`, independent of the storage root."""
    return f"{path.parent.name}/{path.name}"


def result_artifact(cfg: Any, point: dict[str, str], synth_key: str, real_key: str) -> Artifact:
    from omegaconf import OmegaConf

    from synthray.probes.stage import probe_cfg, probe_params
    from synthray.training.trainer import training_spec

    cfg = probe_cfg(cfg, point["probe"])
    spec = {"schema": 3, "point": point, "synthetic": synth_key, "real": real_key, **training_spec(cfg),
            "probe_params": probe_params(cfg, point["probe"]), "metrics": OmegaConf.to_container(cfg.metrics, resolve=True)}
    return Artifact(cfg.storage, "results", spec, label="/".join(point.values()))


def planned_artifacts(cfg: Any) -> list[tuple[dict[str, str], Artifact, Artifact]]:
    """(point, synthetic dataset, result record) for every trial of the grid, from keys alone (nothing is built)."""
    from synthray.generation.stage import real_artifact, synthetic_artifact
    from synthray.sweep.plan import trials

    real = real_artifact(cfg)
    out = []
    for point in trials(cfg):
        synth = synthetic_artifact(cfg, point["generator"], point["prompt_style"])
        out.append((point, synth, result_artifact(cfg, point, synth.key, real.key)))
    return out


def run_point(cfg: Any, point: dict[str, str], report_to_tune: bool = False) -> dict[str, Any]:
    """Generate, probe, train and evaluate one grid point; returns its results row."""
    from synthray.data.real import load_classes
    from synthray.generation.stage import ensure_real, synthetic_artifact

    real = ensure_real(cfg)
    synth = synthetic_artifact(cfg, point["generator"], point["prompt_style"])
    art = result_artifact(cfg, point, synth.key, real.key)
    num_classes = len(load_classes(cfg.data.classes))
    art.build(lambda workdir: _evaluate_point(cfg, point, num_classes, report_to_tune))
    return art.meta()


def _evaluate_point(cfg: Any, point: dict[str, str], num_classes: int, report_to_tune: bool) -> dict[str, Any]:
    from synthray.generation.generators import generator_entry
    from synthray.generation.stage import ensure_real, generate
    from synthray.metrics.accuracy import accuracy_report
    from synthray.metrics.distribution import distribution_metrics
    from synthray.metrics.features import clip_score
    from synthray.probes.stage import probe_cfg, view
    from synthray.training.trainer import train

    probe, arch = point["probe"], point["arch"]
    real = ensure_real(cfg)
    synth = generate(cfg, point["generator"], point["prompt_style"])
    real_view = view(cfg, probe, real, ("train", "test"))
    synth_view = view(cfg, probe, synth, ("data",))
    cfg = probe_cfg(cfg, probe)  # e.g. texture: BagNet on random patches
    synth_model = train(cfg, arch, synth_view / "data", f"{ref(synth_view)}/data", num_classes,
                        label=f"{arch} on {point['generator']}/{point['prompt_style']}/{probe}", report_to_tune=report_to_tune)
    real_model = train(cfg, arch, real_view / "train", f"{ref(real_view)}/train", num_classes, label=f"{arch} on real/{probe}")
    row: dict[str, Any] = dict(point)
    # The models are the best epochs on held-out training-domain rows; `_acc_last` columns give the final epochs.
    row.update(accuracy_report(synth_model, real_view / "test", "synth_to_real"))
    row.update(accuracy_report(real_model, synth_view / "data", "real_to_synth"))
    row.update(accuracy_report(real_model, real_view / "test", "real_to_real"))
    row.update(best_epoch=synth_model.meta()["best_epoch"], holdout_acc=synth_model.meta()["holdout_acc_best"])
    row.update(distribution_metrics(cfg, real_view / "train", f"{ref(real_view)}/train", synth_view / "data", f"{ref(synth_view)}/data"))
    row["clipscore"] = clip_score(cfg, synth.path / "data", f"{ref(synth.path)}/data")  # the generated images, not a probe view
    row["n_synthetic"] = synth.meta()["rows"]
    row["released"] = generator_entry(cfg, point["generator"]).get("released")
    row.update(dataset=synth.key, synth_model=synth_model.key, real_model=real_model.key)
    log.info("trial %s: synth->real %.3f, real->synth %.3f, real->real %.3f, density %.3f, coverage %.3f",
             "/".join(point.values()), row["synth_to_real_acc"], row["real_to_synth_acc"], row["real_to_real_acc"],
             row["density"], row["coverage"])
    return row


def tune_trial(config: dict[str, Any], cfg_yaml: str) -> None:
    """Ray Tune function trainable: `config` holds one value per grid axis."""
    from omegaconf import OmegaConf
    from ray import tune

    from synthray.logs import setup_logging

    setup_logging()
    cfg = OmegaConf.create(cfg_yaml)
    point = {axis: config[axis] for axis in ("generator", "prompt_style", "arch", "probe")}
    row = run_point(cfg, point, report_to_tune=True)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float, str))})  # per-class lists stay in the record
