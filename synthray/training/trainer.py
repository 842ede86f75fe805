"""The training stage: a content-addressed trained classifier, produced by a Ray Train `TorchTrainer`.

Artifact layout: `<storage>/models/<key>/model.pt` (the best epoch on the selection split of the training
domain), `last.pt` (the final epoch) and `meta.json` (both accuracies, the per-epoch history). Ray Train's
own run state (per-epoch checkpoints) lives under `<storage>/train-runs/<key>`, in the same storage as everything
else, so a rerun after a crash, on any node, resumes from the last epoch instead of starting over.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from synthray import storage
from synthray.artifacts import Artifact, BuildDir, DatasetRef, Store
from synthray.training.loop import CHECKPOINT_FILE, train_loop

log = logging.getLogger("synthray")


def numerics(cfg: Any) -> dict[str, Any]:
    """Execution settings that change a model's bits (so they are part of its key), with `auto` resolved from
    `training.device`: configuration, never the GPUs the cluster happens to have."""
    t = cfg.training
    gpu = t.device == "gpu"
    return {"precision": ("bf16" if gpu else "fp32") if t.precision == "auto" else str(t.precision),
            "channels_last": gpu if t.channels_last == "auto" else bool(t.channels_last),
            "compile": bool(t.compile), "device": str(t.device)}


def training_spec(cfg: Any) -> dict[str, Any]:
    """What a model's key depends on besides its data: the recipe and the numerics it ran with."""
    from omegaconf import OmegaConf

    return {"recipe": OmegaConf.to_container(cfg.recipe, resolve=True), "numerics": numerics(cfg)}


def model_artifact(cfg: Any, arch: str, data: DatasetRef, num_classes: int, label: str) -> Artifact:
    spec = {"arch": arch, "num_classes": num_classes, "data": data.ref, **training_spec(cfg)}
    return Artifact(Store.from_cfg(cfg), "models", spec, label=label)


def split_counts(images: str, fraction: float, seed: int) -> tuple[int, int]:
    """(training rows, selection rows) of a dataset folder, from its id and quality columns alone."""
    from synthray.images import read_shard, shard_files, shard_schema
    from synthray.training.inputs import in_selection

    train = held = 0
    for f in shard_files(images):
        columns = [c for c in ("id", "quality") if c in shard_schema(f).names]
        table = read_shard(f, columns=columns).to_pydict()
        ok = [q == "ok" for q in table.get("quality", ["ok"] * len(table["id"]))]
        mask = in_selection(table["id"], fraction, seed)
        held += int(sum(m and k for m, k in zip(mask, ok)))
        train += int(sum((not m) and k for m, k in zip(mask, ok)))
    return train, held


def _datasets(cfg: Any, images: str, rows: tuple[int, int]) -> dict[str, Any]:
    """Ray Data pipelines for the training rows and the selection rows: read, shuffle once, decode."""
    import ray.data

    from synthray.images import shard_files, usable_filter
    from synthray.training.inputs import decode_images, read_shards

    r = cfg.recipe
    files = shard_files(images)
    columns = ["id", "image", "label"] + (["quality"] if usable_filter(images) is not None else [])
    parts = {"train": int(r.load_size), "selection": int(r.test_transform.resize)} if rows[1] else {"train": int(r.load_size)}
    decoded_bytes = sum(n * s * s * 3 for n, s in zip(rows, parts.values()))
    out = {}
    for part, size in parts.items():
        # One block per shard and a seeded shuffle of the (small) encoded rows: the order a worker sees is a
        # function of the seed alone, which exact resume needs; class-sorted real data gets mixed too.
        # Shards are read by synthray (not read_parquet) so that every byte is checked against the manifest.
        dataset = ray.data.from_items([{"uri": f} for f in files], override_num_blocks=len(files))
        dataset.context.execution_options.preserve_order = True
        dataset = dataset.map_batches(read_shards, fn_kwargs={"columns": columns}, batch_size=1, batch_format="pyarrow")
        dataset = dataset.random_shuffle(seed=int(r.seed)).map_batches(
            decode_images, fn_kwargs={"size": size, "part": part, "selection_fraction": float(r.selection_fraction),
                                      "seed": int(r.seed)}, batch_size=256)
        if decoded_bytes <= float(cfg.training.cache_decoded_gb) * 2**30:
            # Streaming re-runs read+decode every epoch (~10 s of fixed overhead each on a small machine);
            # a dataset that fits is decoded once into the object store instead.
            dataset = dataset.materialize()
        out[part] = dataset
    return out


def train(cfg: Any, arch: str, data: DatasetRef, num_classes: int, label: str, report_to_tune: bool = False) -> Artifact:
    """Train `arch` on `data`, or reuse a trained copy."""
    art = model_artifact(cfg, arch, data, num_classes, label)
    images = data.uri
    run_dir = art.store.uri("train-runs")

    def make(out: BuildDir) -> dict[str, Any]:
        import ray.train
        import torch
        from ray.train.torch import TorchTrainer

        r, t = cfg.recipe, cfg.training
        rows = split_counts(images, float(r.selection_fraction), int(r.seed))
        if rows[0] == 0:
            raise RuntimeError(f"{images} has no usable training rows")
        callbacks = []
        if report_to_tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        from omegaconf import OmegaConf

        loop_config = {"arch": arch, "num_classes": num_classes, "recipe": OmegaConf.to_container(r, resolve=True),
                       "rows": rows[0], "has_selection": rows[1] > 0, "accumulate": int(t.accumulate), **numerics(cfg)}
        gpu = t.device == "gpu"
        fs, run_path = storage.resolve(run_dir)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=int(t.num_workers), use_gpu=gpu,
                                                   resources_per_worker={"GPU": float(t.gpus_per_worker)} if gpu else None),
            datasets=_datasets(cfg, images, rows),
            run_config=ray.train.RunConfig(
                name=art.key,
                storage_path=run_path, storage_filesystem=fs,
                failure_config=ray.train.FailureConfig(max_failures=int(t.max_failures)),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
            ),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        best, history = state["best"], state["history"]
        torch.save(state["model"], out.local / "last.pt")
        torch.save(best["model"] if best["model"] is not None else state["model"], out.local / "model.pt")
        speeds = [h["images_per_s"] for h in history[1:]] or [history[-1]["images_per_s"]]  # epoch 1 pays warm-up
        meta = {"arch": arch, "num_classes": num_classes, "epochs": state["epoch"] + 1, "rows": rows[0],
                "selection_rows": rows[1], "best_epoch": best["epoch"], "selection_acc_best": history[best["epoch"] - 1]["selection_acc"],
                "selection_acc_last": history[-1]["selection_acc"], "train_loss": history[-1]["train_loss"],
                "images_per_s": sorted(speeds)[len(speeds) // 2],
                "resumed_from_epoch": (result.metrics or {}).get("resumed_from_epoch", 0), "history": history}
        held = "no selection rows" if rows[1] == 0 else f"selection acc {meta['selection_acc_best']:.3f} of {rows[1]} rows"
        log.info("%s: best epoch %s of %s (%s), %.0f img/s", label, best["epoch"], meta["epochs"], held, meta["images_per_s"])
        return meta

    art.build(make)
    # The per-epoch checkpoints served resume only; the artifact now holds the final weights.
    storage.delete(storage.join(run_dir, art.key))
    return art
