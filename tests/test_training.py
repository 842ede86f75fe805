"""Training through Ray Train's TorchTrainer on a local cluster, with real timm models and real checkpoints."""

import pytest
import torch

from synthray.generation.stage import ensure_real
from synthray.metrics.accuracy import accuracy, load_model
from synthray.training.archs import check_arch, count_parameters, create_model
from synthray.training.trainer import train
from tests.conftest import tiny_cfg


@pytest.mark.parametrize("name", ["tiny-cnn", "test_resnet", "test_vit"])
def test_architectures_build_and_run(name):
    check_arch(name)
    model = create_model(name, num_classes=10)
    size = 32 if name == "tiny-cnn" else 160
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)
    assert count_parameters(model) > 0


def test_train_stage_learns_and_is_reused(ray_cluster, shared_storage, caplog):
    cfg = tiny_cfg(shared_storage, "training.epochs=6", "training.batch_size=16")
    real = ensure_real(cfg)
    art = train(cfg, "tiny-cnn", real.path / "train", f"real/{real.key}/train", 10, label="tiny-cnn on real")
    assert art.meta()["epochs"] == 6
    acc = accuracy(art, real.path / "test", 32)
    assert acc > 0.5  # six short epochs on real digits already beat chance (0.1) by far
    assert isinstance(load_model(art), torch.nn.Module)
    mtime = (art.path / "model.pt").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="synthray"):
        again = train(cfg, "tiny-cnn", real.path / "train", f"real/{real.key}/train", 10, label="tiny-cnn on real")
    assert again.key == art.key and (again.path / "model.pt").stat().st_mtime_ns == mtime


def test_timm_model_trains_one_step(ray_cluster, shared_storage):
    cfg = tiny_cfg(shared_storage, "training.epochs=1", "training.image_size=32")
    real = ensure_real(cfg)
    art = train(cfg, "test_resnet", real.path / "holdout", f"real/{real.key}/holdout", 10, label="test_resnet")
    assert art.meta()["arch"] == "test_resnet" and art.meta()["epochs"] == 1


def test_trainer_resumes_from_its_last_checkpoint(ray_cluster, shared_storage, tmp_path):
    """A TorchTrainer rebuilt with the same RunConfig name continues from ray.train.get_checkpoint()."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from synthray.training.inputs import decode_images
    from synthray.training.loop import train_loop

    real = ensure_real(tiny_cfg(shared_storage))
    ds = ray.data.read_parquet(str(real.path / "holdout")).map_batches(decode_images, fn_kwargs={"size": 32}).materialize()
    config = {"arch": "tiny-cnn", "num_classes": 10, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "shift": 0,
              "seed": 0, "grad_clip": 1.0}

    def fit(epochs):
        return TorchTrainer(
            train_loop, train_loop_config=dict(config, epochs=epochs), datasets={"train": ds},
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="resume-me", storage_path=str(tmp_path)),
        ).fit()

    first = fit(1)
    assert first.metrics["epoch"] == 1 and first.metrics["resumed_from_epoch"] == 0
    second = fit(3)  # as after a crash: same name, same storage
    assert second.metrics["epoch"] == 3 and second.metrics["resumed_from_epoch"] == 1


STUDY_ARCHS = ["resnet50", "vit_tiny_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224", "bagnet9"]


@pytest.mark.parametrize("arch", STUDY_ARCHS)
def test_study_architecture_trains_one_step_through_ray_train(ray_cluster, shared_storage, tmp_path, arch):
    """Each architecture of the study takes one real optimiser step at 224 px inside a TorchTrainer on CPU."""
    from synthray.images import read_images, write_table

    real = ensure_real(tiny_cfg(shared_storage))
    rows = read_images(real.path / "test").groupby("label").head(1)  # one image per class, upscaled to 224
    write_table(tmp_path / "data" / "part-00000.parquet", {c: rows[c].tolist() for c in rows.columns})
    cfg = tiny_cfg(tmp_path / "runs", "training.epochs=1", "training.batch_size=10", "training.image_size=224")
    art = train(cfg, arch, tmp_path / "data", f"test/{arch}", 10, label=arch)
    assert art.meta()["epochs"] == 1 and art.meta()["train_loss"] > 0
    assert load_model(art)(torch.zeros(1, 3, 224, 224)).shape == (1, 10)
