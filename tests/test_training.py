"""Training through Ray Train's TorchTrainer on a local cluster, with real timm models and real checkpoints."""

import os
import subprocess
import sys
import time

import pytest
import torch

from synthray.generation.stage import ensure_real
from synthray.metrics.accuracy import accuracy, load_model
from synthray.training.archs import check_arch, count_parameters, create_model
from synthray.training.trainer import train
from tests.conftest import TINY, tiny_cfg


@pytest.mark.parametrize("name", ["tiny-cnn", "test_resnet", "test_vit"])
def test_architectures_build_and_run(name):
    check_arch(name)
    model = create_model(name, num_classes=10)
    size = 32 if name == "tiny-cnn" else 160
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)
    assert count_parameters(model) > 0


def test_train_stage_learns_and_is_reused(ray_cluster, shared_storage, caplog):
    cfg = tiny_cfg(shared_storage, "recipe.epochs=6", "recipe.batch_size=16")
    real = ensure_real(cfg)
    art = train(cfg, "tiny-cnn", real.path / "train", f"real/{real.key}/train", 10, label="tiny-cnn on real")
    assert art.meta()["epochs"] == 6
    acc = accuracy(art, real.path / "test")
    assert acc > 0.5  # six short epochs on real digits already beat chance (0.1) by far
    assert isinstance(load_model(art), torch.nn.Module)
    mtime = (art.path / "model.pt").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="synthray"):
        again = train(cfg, "tiny-cnn", real.path / "train", f"real/{real.key}/train", 10, label="tiny-cnn on real")
    assert again.key == art.key and (again.path / "model.pt").stat().st_mtime_ns == mtime


def test_timm_model_trains_one_step(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage, "recipe.epochs=1")
    real = ensure_real(cfg)
    art = train(cfg, "test_resnet", real.path / "control", f"real/{real.key}/holdout", 10, label="test_resnet")
    assert art.meta()["arch"] == "test_resnet" and art.meta()["epochs"] == 1


KILL_SCRIPT = """
import sys
from pathlib import Path

import ray

from synthray.config import compose
from synthray.logs import setup_logging
from synthray.training.trainer import train

setup_logging()
ray.init(address=sys.argv[1])
train(compose(sys.argv[3:]), "tiny-cnn", Path(sys.argv[2]), "test/kill", 10, label="to be killed")
"""


def test_training_killed_mid_epoch_resumes_to_identical_weights(ray_cluster, shared_storage, tmp_path):
    """SIGKILL a training driver in the middle of an epoch, rerun it: the final (and best) weights equal, bit
    for bit, those of a run that was never stopped (CPU, fixed seeds)."""
    from synthray.training.trainer import model_artifact

    real = ensure_real(tiny_cfg(shared_storage))
    data = real.path / "train"
    args = ["recipe.epochs=4", "recipe.batch_size=8", "training.max_failures=0"]
    whole = train(tiny_cfg(tmp_path / "whole", *args), "tiny-cnn", data, "test/kill", 10, label="never stopped")

    cfg = tiny_cfg(tmp_path / "killed", *args)
    key = model_artifact(cfg, "tiny-cnn", "test/kill", 10, "").key
    checkpoints = tmp_path / "killed" / "train-runs" / key
    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, ray_cluster, str(data), f"storage={tmp_path / 'killed'}",
                             *TINY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list(checkpoints.glob("checkpoint_*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.3 * whole.meta()["rows"] / whole.meta()["images_per_s"])  # about a third into epoch 2
    proc.kill()
    proc.communicate(timeout=60)
    assert not (tmp_path / "killed" / "models" / key / "_SUCCESS").exists()

    resumed = train(cfg, "tiny-cnn", data, "test/kill", 10, label="resumed")
    assert resumed.meta()["resumed_from_epoch"] >= 1, "the rerun started over instead of resuming"
    for weights in ("last.pt", "model.pt"):
        a, b = (torch.load(art.path / weights, weights_only=True) for art in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    assert resumed.meta()["best_epoch"] == whole.meta()["best_epoch"]


STUDY_ARCHS = ["resnet50", "vit_tiny_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224", "bagnet9"]


@pytest.mark.parametrize("arch", STUDY_ARCHS)
def test_study_architecture_trains_one_step_through_ray_train(ray_cluster, shared_storage, tmp_path, arch):
    """Each architecture of the study takes one real optimiser step at 224 px inside a TorchTrainer on CPU."""
    from synthray.images import read_images, write_table

    real = ensure_real(tiny_cfg(shared_storage))
    rows = read_images(real.path / "test").groupby("label").head(1)  # one image per class, upscaled to 224
    write_table(tmp_path / "data" / "part-00000.parquet", {c: rows[c].tolist() for c in rows.columns})
    cfg = tiny_cfg(tmp_path / "runs", "recipe=paper", "recipe.epochs=1", "recipe.batch_size=10")
    art = train(cfg, arch, tmp_path / "data", f"test/{arch}", 10, label=arch)
    assert art.meta()["epochs"] == 1 and art.meta()["train_loss"] > 0
    assert load_model(art)(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


def test_two_workers_with_accumulation_keep_the_global_batch(ray_cluster, shared_storage, tmp_path):
    """DDP over 2 CPU workers x 2 micro-batches: one optimiser step per 16 images, as with one worker."""
    real = ensure_real(tiny_cfg(shared_storage))
    cfg = tiny_cfg(tmp_path, "recipe.epochs=2", "recipe.batch_size=16", "training.num_workers=2", "training.accumulate=2")
    art = train(cfg, "tiny-cnn", real.path / "train", f"real/{real.key}/train", 10, label="two workers")
    meta = art.meta()
    # Each worker sees rows // 2 rows in batches of 8 (2 micro-batches of 4): ceil((rows // 2) / 8) steps an epoch.
    assert meta["history"][-1]["step"] == 2 * -(-(meta["rows"] // 2) // 8)
    assert 0 < meta["selection_acc_best"] <= 1 and meta["best_epoch"] in (1, 2)
