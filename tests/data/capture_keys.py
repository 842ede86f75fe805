"""Record the kind/key of every artifact the `smoke`, `probes` and `paper` experiments plan, as the code at
28018d9 computes them (before the stage-graph redesign). `tests/test_keys.py` checks the planner against the file
this writes, `artifact_keys.json`. Run once, from the repository root, on the commit it names:

    python tests/data/capture_keys.py > tests/data/artifact_keys.json

It follows `sweep/trial.py::_evaluate` stage by stage, building no artifact: real data, captions, the synthetic
dataset, the probe views, both models, the feature sets, the CLIPScores, the result, and every tiny model twin a
spec names.
"""

import json
import sys

from synthray.artifacts import Artifact, DatasetRef, spec_key
from synthray.config import compose

EXPERIMENTS = {
    "smoke": ["experiment=smoke"],
    "probes": ["experiment=probes"],
    "paper": ["experiment=paper", "data.root=/mnt/data/imagenet"],
}


def tiny_models(node, out):
    if isinstance(node, dict):
        if "tiny" in node and "version" in node:
            out.add(f"tiny-models/{spec_key(node)}")
        for value in node.values():
            tiny_models(value, out)
    elif isinstance(node, list):
        for value in node:
            tiny_models(value, out)


def artifacts(cfg):
    from synthray.captioning.stage import captions_artifact
    from synthray.generation.stage import uses_captioner
    from synthray.metrics.features import encoder_model, encoder_names, sample_limit
    from synthray.models import model_identity
    from synthray.sweep.trial import plan_trials
    from synthray.training.trainer import model_artifact

    found: dict[str, Artifact] = {}

    def add(art):
        found[art.ref] = art
        return art

    def view(trial, source, splits):
        if trial.probe.probe.identity:
            return {s: DatasetRef(source, s) for s in splits}
        spec = {"probe": trial.probe.name, "params": trial.probe.identity, "source": source.ref, "subdirs": list(splits)}
        return {s: DatasetRef(add(Artifact(source.store, "views", spec)), s) for s in splits}

    def sampled(run_cfg, kind, spec, names):
        if any(names.values()):
            spec = dict(spec, device=str(run_cfg.metrics.device),
                        models={n: model_identity(m) for n, m in names.items() if m})
        add(Artifact(trial.result.store, kind, spec))

    for trial in plan_trials(cfg):
        run_cfg, point = trial.cfg, trial.point
        add(trial.real)
        if uses_captioner(run_cfg, point["prompt_style"]):
            add(captions_artifact(run_cfg, trial.real))
        add(trial.synthetic)
        synth = DatasetRef(trial.synthetic, "data")
        real_view = view(trial, trial.real, ("train", "test"))
        synth_view = view(trial, trial.synthetic, ("data",))["data"]
        add(model_artifact(run_cfg, point["arch"], synth_view, trial.num_classes, "", selection=real_view["test"]))
        add(model_artifact(run_cfg, point["arch"], real_view["train"], trial.num_classes, "", selection=real_view["test"]))
        images = run_cfg.metrics.get("features_of", "view") == "images"
        names = {n: encoder_model(run_cfg, n) for n in encoder_names(run_cfg)}
        for data in (DatasetRef(trial.real, "train") if images else real_view["train"], synth if images else synth_view):
            sampled(run_cfg, "features", {"encoders": names, "source": data.ref, "max_samples": sample_limit(run_cfg),
                                          "seed": int(run_cfg.seed)}, names)
        if run_cfg.metrics.clipscore.model:
            model = str(run_cfg.metrics.clipscore.model)
            sampled(run_cfg, "clipscores", {"clipscore": model, "source": synth.ref, "max_samples": sample_limit(run_cfg),
                                            "seed": int(run_cfg.seed)}, {"clip": model})
        add(trial.result)
    refs = set(found)
    for art in found.values():
        tiny_models(art.spec, refs)
    return sorted(refs)


if __name__ == "__main__":
    out = {name: artifacts(compose([*overrides, "storage=/tmp/synthray-keys"])) for name, overrides in EXPERIMENTS.items()}
    json.dump({"commit": "28018d9", "experiments": EXPERIMENTS, "artifacts": out}, sys.stdout, indent=1)
    sys.stdout.write("\n")
