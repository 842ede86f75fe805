"""The training stage: a content-addressed trained classifier, produced by a Ray Train `TorchTrainer`.

Artifact layout: `<storage>/models/<key>/model.pt` (state dict) and `meta.json`. Ray Train's own run state
(per-epoch checkpoints) lives under `<storage>/train-runs/<key>`, so a rebuilt trainer with the same name resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from synthray.artifacts import Artifact
from synthray.training.loop import CHECKPOINT_FILE, train_loop

log = logging.getLogger("synthray")

# Execution settings: they change where and how fast a model trains, not which model it is.
_EXECUTION_KEYS = {"num_workers", "use_gpu", "max_failures"}


def recipe(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(cfg.training).items() if k not in _EXECUTION_KEYS}


def model_artifact(cfg: Any, arch: str, data_ref: str, num_classes: int, label: str) -> Artifact:
    spec = {"arch": arch, "num_classes": num_classes, "data": data_ref, "recipe": recipe(cfg)}
    return Artifact(cfg.storage, "models", spec, label=label)


def _decoded_bytes(images: Path, size: int) -> int:
    import pyarrow.parquet as pq

    from synthray.images import shard_files

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(images))
    return rows * size * size * 3


def use_gpu(cfg: Any) -> bool:
    from synthray.shards import cluster_gpus

    setting = cfg.training.use_gpu
    return cluster_gpus() > 0 if setting == "auto" else bool(setting)


def train(cfg: Any, arch: str, images: Path, data_ref: str, num_classes: int, label: str, report_to_tune: bool = False) -> Artifact:
    """Train `arch` on the dataset folder `images` (identified by `data_ref`), or reuse a trained copy."""
    art = model_artifact(cfg, arch, data_ref, num_classes, label)

    def make(workdir: Path) -> dict[str, Any]:
        import ray.data
        import ray.train
        from ray.train.torch import TorchTrainer

        from synthray.training.inputs import decode_images

        t = cfg.training
        from synthray.images import usable_filter

        columns = ["image", "label"] + (["quality"] if usable_filter(images) is not None else [])
        dataset = ray.data.read_parquet(str(images), columns=columns).map_batches(
            decode_images, fn_kwargs={"size": int(t.image_size)}, batch_size=256
        )
        if _decoded_bytes(images, int(t.image_size)) <= float(t.cache_decoded_gb) * 2**30:
            # Streaming re-runs read+decode every epoch (~10 s of fixed overhead each on a small machine);
            # a dataset that fits is decoded once into the object store instead.
            dataset = dataset.materialize()
        callbacks = []
        if report_to_tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        loop_config = {
            "arch": arch, "num_classes": num_classes, "epochs": int(t.epochs), "batch_size": int(t.batch_size),
            "lr": float(t.lr), "weight_decay": float(t.weight_decay), "shift": int(t.get("shift", 0)),
            "seed": int(t.seed), "grad_clip": float(t.get("grad_clip", 1.0)),
        }
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=int(t.num_workers), use_gpu=use_gpu(cfg)),
            datasets={"train": dataset},
            run_config=ray.train.RunConfig(
                name=art.key,
                storage_path=str(Path(cfg.storage).expanduser().resolve() / "train-runs"),
                failure_config=ray.train.FailureConfig(max_failures=int(t.max_failures)),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
            ),
        )
        result = trainer.fit()
        import torch

        with result.checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        torch.save(state["model"], workdir / "model.pt")
        metrics = dict(result.metrics or {})
        return {"epochs": state["epoch"] + 1, "train_loss": metrics.get("train_loss"), "arch": arch, "num_classes": num_classes}

    art.build(make)
    # The per-epoch checkpoints served resume only; the artifact now holds the final weights.
    shutil.rmtree(Path(cfg.storage).expanduser().resolve() / "train-runs" / art.key, ignore_errors=True)
    return art
