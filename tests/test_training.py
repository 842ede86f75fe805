"""Training through Ray Train's TorchTrainer on a local cluster, or in the calling process for a small CPU run (the
same loop and weights), with real timm models and real checkpoints."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthray.core import storage
from synthray.core.artifacts import MANIFEST, Artifact, DatasetRef, Store
from synthray.graph.planner import train
from synthray.graph.real import real_data
from synthray.metrics.accuracy import accuracy, load_model
from synthray.training.archs import check_arch, count_parameters, create_model
from tests.conftest import TINY, tiny_cfg


@pytest.mark.parametrize("name", ["tiny-cnn", "test_resnet", "test_vit"])
def test_architectures_build_and_run(name):
    check_arch(name)
    model = create_model(name, num_classes=10)
    size = 32 if name == "tiny-cnn" else 160
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)
    assert count_parameters(model) > 0


@pytest.mark.slow
def test_train_stage_learns_and_is_reused(ray_cluster, shared_storage, caplog):
    cfg = tiny_cfg(shared_storage, "recipe.epochs=6", "recipe.batch_size=16")
    real = real_data(cfg)
    art = train(cfg, "tiny-cnn", DatasetRef(real, "train"), 10, label="tiny-cnn on real")
    assert art.is_complete() and art.spec["data"] == f"real/{real.key}/train"
    assert art.meta()["epochs"] == 6
    assert {"model.pt", "last.pt", "meta.json", "spec.json"} <= set(art.manifest()["files"]) and art.verify() == []
    assert not storage.exists(art.store.uri("train-runs", art.key)), "per-epoch checkpoints are removed once built"
    acc = accuracy(art, DatasetRef(real, "test"))
    assert acc > 0.5  # six short epochs on real digits already beat chance (0.1) by far
    assert isinstance(load_model(art), torch.nn.Module)
    mtime = Path(art.file("model.pt")).stat().st_mtime_ns
    with caplog.at_level("INFO", logger="synthray"):
        again = train(cfg, "tiny-cnn", DatasetRef(real, "train"), 10, label="tiny-cnn on real")
    assert again.key == art.key and Path(again.file("model.pt")).stat().st_mtime_ns == mtime
    assert any("reused models" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_timm_model_trains_one_step(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage, "recipe.epochs=1")
    real = real_data(cfg)
    art = train(cfg, "test_resnet", DatasetRef(real, "control"), 10, label="test_resnet")
    assert art.meta()["arch"] == "test_resnet" and art.meta()["epochs"] == 1


KILL_SCRIPT = """
import sys

import ray

from synthray.core.artifacts import DatasetRef
from synthray.config import compose
from synthray.graph.real import real_artifact
from synthray.core.logs import setup_logging
from synthray.graph.planner import train

setup_logging()
ray.init(address=sys.argv[1])
data = DatasetRef(real_artifact(compose([*sys.argv[3:], f"storage={sys.argv[2]}"])), "train")
train(compose(sys.argv[3:]), "tiny-cnn", data, 10, label="to be killed")
"""


RAY_TRAIN, INLINE = ["training.inline_rows=0"], []  # the 275 digits train in the calling process unless inline_rows=0


@pytest.mark.slow
# CI kills each path once: Ray Train's (shuffle once) and the inline one (per-epoch order); the inline kill with the
# shuffle-once order is the deep tier's.
@pytest.mark.parametrize("killed, other, order", [pytest.param(INLINE, RAY_TRAIN, "once", marks=pytest.mark.deep),
                                                   (RAY_TRAIN, INLINE, "once"), (INLINE, RAY_TRAIN, "epoch")],
                         ids=["inline", "ray-train", "per-epoch-order"])
def test_training_killed_mid_epoch_resumes_to_identical_weights(ray_cluster, shared_storage, tmp_path, killed, other, order):
    """SIGKILL a training driver in the middle of an epoch, rerun it: the final (and best) weights equal, bit
    for bit, those of a run that was never stopped (CPU, fixed seeds). The uninterrupted run takes the other path
    (Ray Train's worker group, or the calling process), so the two paths give the same weights too. `order`:
    recipe.shuffle (epoch: the resumed epoch draws the same permutation as the uninterrupted one did)."""
    from synthray.graph.planner import model_artifact

    data = DatasetRef(real_data(tiny_cfg(shared_storage)), "train")
    # lease_s: the killed driver's claim on the model lapses after 5 s instead of 2 minutes (not part of the key).
    common = ["recipe.epochs=4", "recipe.batch_size=8", "training.max_failures=0", "lease_s=5", f"recipe.shuffle={order}"]
    whole = train(tiny_cfg(tmp_path / "whole", *common, *other), "tiny-cnn", data, 10, label="never stopped")
    args = [*common, *killed]

    cfg = tiny_cfg(tmp_path / "killed", *args)
    key = model_artifact(cfg, "tiny-cnn", data, 10, "").key
    assert key == whole.key
    checkpoints = tmp_path / "killed" / "train-runs" / key
    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, ray_cluster, str(shared_storage), f"storage={tmp_path / 'killed'}",
                             *TINY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list(checkpoints.glob("checkpoint_*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.3 * whole.meta()["rows"] / whole.meta()["images_per_s"])  # about a third into epoch 2
    proc.kill()
    proc.communicate(timeout=60)
    assert not (tmp_path / "killed" / "models" / key / MANIFEST).exists()

    resumed = train(cfg, "tiny-cnn", data, 10, label="resumed")
    assert resumed.uri == str(tmp_path / "killed" / "models" / key) and resumed.is_complete()
    assert resumed.meta()["resumed_from_epoch"] >= 1, "the rerun started over instead of resuming"
    for weights in ("last.pt", "model.pt"):
        a, b = (torch.load(art.file(weights), weights_only=True) for art in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    assert resumed.meta()["best_epoch"] == whole.meta()["best_epoch"]


STUDY_ARCHS = ["resnet50", "vit_tiny_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224", "bagnet9"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", STUDY_ARCHS[:-1])
def test_study_architecture_takes_one_optimiser_step(arch):
    """The timm architectures of the study at 224 px: one real SGD step changes the weights. (The Ray Train path
    they share is the same for every architecture; BagNet-9 takes it below.)"""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 7]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("arch", STUDY_ARCHS[-1:])
def test_study_architecture_trains_one_step_through_ray_train(ray_cluster, shared_storage, tmp_path, arch):
    """BagNet-9 (ours, not timm's) takes one real optimiser step at 224 px inside a TorchTrainer on CPU."""
    from synthray.core.images import read_images, write_table

    real = real_data(tiny_cfg(shared_storage))
    rows = read_images(real.file("test")).groupby("label").head(1)  # one image per class, upscaled to 224
    images = Artifact(Store(storage.normalize(tmp_path / "data")), "test-data", {"one_per_class_of": real.ref})

    def make(out):
        write_table(str(out.local / "data" / "part-00000.parquet"), {c: rows[c].tolist() for c in rows.columns})

    images.build(make)
    cfg = tiny_cfg(tmp_path / "runs", "recipe=paper", "recipe.epochs=1", "recipe.batch_size=10", *RAY_TRAIN)
    # The paper recipe selects by loss on the real test split; here the same ten images stand in for it.
    art = train(cfg, arch, DatasetRef(images, "data"), 10, label=arch, selection=DatasetRef(images, "data"))
    assert art.meta()["epochs"] == 1 and art.meta()["train_loss"] > 0 and art.meta()["rows"] == 10
    assert art.meta()["selection_loss_best"] > 0
    assert load_model(art)(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.slow
def test_two_workers_with_accumulation_keep_the_global_batch(ray_cluster, shared_storage, tmp_path):
    """DDP over 2 CPU workers x 2 micro-batches: one optimiser step per 16 images, as with one worker."""
    real = real_data(tiny_cfg(shared_storage))
    cfg = tiny_cfg(tmp_path, "recipe.epochs=2", "recipe.batch_size=16", "training.num_workers=2", "training.accumulate=2")
    art = train(cfg, "tiny-cnn", DatasetRef(real, "train"), 10, label="two workers")
    meta = art.meta()
    # Each worker sees rows // 2 rows in batches of 8 (2 micro-batches of 4): ceil((rows // 2) / 8) steps an epoch.
    assert meta["history"][-1]["step"] == 2 * -(-(meta["rows"] // 2) // 8)
    assert 0 < meta["selection_acc_best"] <= 1 and meta["best_epoch"] in (1, 2)


def test_inline_is_configuration_alone():
    """Where a training runs follows `training.*` and the row count, never the cluster's state."""
    from omegaconf import OmegaConf

    from synthray.training.inline import runs_inline

    t = OmegaConf.create({"device": "cpu", "num_workers": 1, "inline_rows": 2048})
    assert runs_inline(t, 300) and not runs_inline(t, 5000) and not runs_inline(t, 0)
    assert not runs_inline(OmegaConf.merge(t, {"device": "gpu"}), 300)  # the trial's process holds no GPU
    assert not runs_inline(OmegaConf.merge(t, {"num_workers": 2}), 300)  # DDP needs Ray Train's worker group
    assert not runs_inline(OmegaConf.merge(t, {"inline_rows": 0}), 300)
