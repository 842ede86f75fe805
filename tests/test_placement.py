"""Placement by need: each GPU stage's declared memory becomes a Ray label selector (`placement.by`), a cluster
file's node types are matched against it by `synthray plan --cluster`, and a labelled multi-node cluster runs the
stage only where the selector allows (artifact meta records where)."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from synthray.config import compose
from synthray.core.placement import label_selector, matches
from synthray.core.registry import SynthrayError
from synthray.graph.planner import plan
from synthray.sweep.placing import placement_lines

LABEL = "synthray.io/gpu-memory-gb"
CLUSTER = {
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 8}},
        "gpu-24-spot": {"resources": {"CPU": 8, "GPU": 1}, "labels": {LABEL: "24"}},
        "gpu-24": {"resources": {"CPU": 8, "GPU": 1}, "labels": {LABEL: "24"}},
        "gpu-80": {"resources": {"CPU": 16, "GPU": 8}, "labels": {LABEL: "80"}},
    },
}


def section(by="labels"):
    return OmegaConf.create({"by": by, "label": LABEL, "tiers": [24, 40, 48, 80, 141],
                             "accelerators": {"A10G": 24, "L4": 24, "A100": 40, "H100": 80, "H200": 141}})


def test_a_need_admits_every_tier_that_holds_it_and_none_without_labels():
    assert label_selector(36, section(), "generate flux1-dev") == ((LABEL, "in(40,48,80,141)"),)
    assert label_selector(8, section(), "train") == ((LABEL, "in(24,40,48,80,141)"),)
    assert label_selector(64, section("accelerator-type"), "x") == (("ray.io/accelerator-type", "in(H100,H200)"),)
    assert label_selector(64, section("none"), "x") == ()
    with pytest.raises(SynthrayError, match=r"generate qwen-image needs 200 GB .* largest GPU .* 141 GB"):
        label_selector(200, section(), "generate qwen-image")


def test_selectors_match_labels_as_ray_reads_them():
    labels = {LABEL: "80", "ray.io/accelerator-type": "H100"}
    assert matches({LABEL: "in(48,80)"}, labels)
    assert not matches({LABEL: "in(24,40)"}, labels)
    assert matches({LABEL: "!in(24)"}, labels) and not matches({LABEL: "!80"}, labels)
    assert matches({"ray.io/accelerator-type": "H100"}, labels) and not matches({"other": "x"}, labels)


def _smoke(tmp_path, *overrides):
    return compose(["experiment=smoke", f"storage={tmp_path}", "device=gpu", "placement.by=labels", *overrides])


@pytest.mark.slow
def test_generator_entries_declare_their_need_and_it_is_not_in_any_key(tmp_path):
    base = plan(_smoke(tmp_path))
    big = plan(_smoke(tmp_path, "generators.tiny-sd.gpu_memory_gb=36", "generators.tiny-sd.gpus_per_actor=2",
                      "generators.tiny-sd.cpu_offload=true"))
    assert base.artifacts() == big.artifacts()  # placement changes where, never what
    spec = next(s for s in big.specs.values() if s.kind == "synthetic" and s.generator == "tiny-sd")
    res = spec.resources()
    assert (res.gpus, res.memory_gb, res.label_selector) == (2.0, 36.0, {LABEL: "in(40,48,80,141)"})
    assert spec.run["cpu_offload"] is True  # the worker reads the entry's own offload
    paper = plan(compose(["experiment=paper", f"storage={tmp_path}"]))
    needs = {s.generator: s.resources().memory_gb for s in paper.specs.values() if s.kind == "synthetic"}
    assert {g for g, gb in needs.items() if gb > 24} == {"flux1-dev", "flux1-schnell", "sd35-large", "sd35-large-turbo",
                                                       "qwen-image"}


def test_plan_names_the_node_type_each_stage_lands_on_and_refuses_one_none_holds(tmp_path):
    cfg = _smoke(tmp_path, "generators.tiny-sd.gpu_memory_gb=36")
    lines = placement_lines(plan(cfg), _cluster_file(tmp_path, CLUSTER), cfg.placement)
    generate = next(line for line in lines if "generate tiny-sd" in line)
    train = next(line for line in lines if "train tiny-cnn" in line)
    assert generate.endswith("-> gpu-80") and "36 GB" in generate
    assert "-> gpu-24-spot, gpu-24 (or 1 larger type(s))" in train
    small = {**CLUSTER, "available_node_types": {k: v for k, v in CLUSTER["available_node_types"].items() if k != "gpu-80"}}
    with pytest.raises(SynthrayError, match=r"no node type of .* holds stage 'generate tiny-sd': it needs 1 actor x 1 GPU, 36 GB"):
        placement_lines(plan(cfg), _cluster_file(tmp_path, small, "small.yaml"), cfg.placement)
    # placement.by=none is checked against the node types' memory labels too
    none = _smoke(tmp_path, "generators.tiny-sd.gpu_memory_gb=36", "placement.by=none")
    with pytest.raises(SynthrayError, match="generate tiny-sd"):
        placement_lines(plan(none), _cluster_file(tmp_path, small, "small.yaml"), none.placement)


@pytest.mark.slow
def test_cli_plan_with_a_stage_no_node_holds_is_one_line_and_exit_2(tmp_path):
    small = {**CLUSTER, "available_node_types": {k: v for k, v in CLUSTER["available_node_types"].items() if k != "gpu-80"}}
    out = subprocess.run([sys.executable, "-m", "synthray", "plan", "experiment=smoke", "device=gpu", "placement.by=labels",
                          f"storage={tmp_path}", "generators.tiny-sd.gpu_memory_gb=36",
                          "--cluster", _cluster_file(tmp_path, small, "small.yaml")], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "generate tiny-sd" in out.stderr


def _cluster_file(tmp_path, cluster, name="cluster.yaml"):
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(cluster, sort_keys=False))  # the file order: spot before on-demand
    return str(path)
