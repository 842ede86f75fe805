"""The training stage: a content-addressed trained classifier, produced by a Ray Train `TorchTrainer` (or, for a
small CPU run, by the same loop in the calling process: `inline.py`, the same weights).

Artifact layout: `<storage>/models/<key>/model.pt` (the best epoch by `recipe.selection`: on held-out rows of
the training set, or on the real test split as the study does), `last.pt` (the final epoch) and `meta.json` (the
selection scores of both, the per-epoch history). Ray Train's
own run state (per-epoch checkpoints) lives under `<storage>/train-runs/<key>`, in the same storage as everything
else, so a rerun after a crash, on any node, resumes from the last epoch instead of starting over.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from synthray.core import progress, storage
from synthray.core.artifacts import Artifact, BuildDir, DatasetRef, Store, without_legacy  # noqa: F401 - tests read without_legacy here
from synthray.core.safe_load import load_checkpoint_file
from synthray.core.shards import placements
from synthray.graph.identity import numerics_of
from synthray.training.loop import CHECKPOINT_FILE, shuffle, train_loop

log = logging.getLogger("synthray")

def split_counts(images: str, fraction: float, seed: int, keep_bad: bool = False) -> tuple[int, int]:
    """(training rows, selection rows) of a dataset folder, from its id and quality columns alone (`keep_bad`:
    rows the quality guard flagged count too, `generation.bad_images: keep`)."""
    from synthray.core.images import read_shard, shard_files, shard_schema
    from synthray.training.inputs import in_selection

    train = held = 0
    for f in shard_files(images):
        columns = [c for c in ("id", "quality") if c in shard_schema(f).names]
        table = read_shard(f, columns=columns).to_pydict()
        ok = [keep_bad or q == "ok" for q in table.get("quality", ["ok"] * len(table["id"]))]
        mask = in_selection(table["id"], fraction, seed)
        held += int(sum(m and k for m, k in zip(mask, ok)))
        train += int(sum((not m) and k for m, k in zip(mask, ok)))
    return train, held


def _datasets(r: Any, t: Any, images: str, rows: tuple[int, int], fraction: float, selection: str | None,
              keep_bad: bool = False) -> dict[str, Any]:
    """Ray Data pipelines for the training rows and the selection rows (the held-out `fraction` of `images`, or
    every row of the `selection` folder): read, shuffle once (`recipe.shuffle: once`; with `epoch` the training
    rows keep their ids' numbers instead, and every epoch draws its own order), decode."""
    import ray.data

    from synthray.core.images import shard_files, usable_filter
    from synthray.training.inputs import decode_images, encoded_images, read_shards
    from synthray.training.recipe import decode_cpus, jpeg_decode, load_size

    on_worker = jpeg_decode(t) == "gpu"
    # decode_cpus caps the concurrent decode tasks (each takes one CPU); unset, Ray Data runs as many as fit.
    limit = decode_cpus(t)
    compute = {"compute": ray.data.TaskPoolStrategy(size=limit)} if limit else {}
    # part: which side of the held-out split of `images` to keep; None keeps every row of another folder.
    parts = {"train": (images, "train", load_size(r))}
    if rows[1]:
        parts["selection"] = (selection, None, int(r.test_transform.resize)) if selection else \
            (images, "selection", int(r.test_transform.resize))
    # Native sizes are known only once decoded: ten times the stored bytes stands in (JPEGs are ~10x smaller).
    decoded_bytes = sum(n * p[2] * p[2] * 3 if p[2] else NATIVE_EXPANSION * _encoded_bytes(p[0], shard_files(p[0]))
                        for n, p in zip(rows, parts.values()))
    # The selection rows get the test transform's geometry; the training rows are squared as before (`round`).
    geometry = {"selection": {"geometry": str(r.test_transform.get("geometry", "round"))}}
    cache = float(t.cache_decoded_gb) * 2**30
    out = {}
    for name, (folder, part, size) in parts.items():
        files = shard_files(folder)
        # Without its quality column, no row is left out (`kept_rows`): generation.bad_images=keep trains on them.
        columns = ["id", "image", "label"] + (["quality"] if not keep_bad and usable_filter(folder) is not None else [])
        # One block per shard and a seeded shuffle of the (small) encoded rows: the order a worker sees is a
        # function of the seed alone, which exact resume needs; class-sorted real data gets mixed too.
        # Shards are read by synthray (not read_parquet) so that every byte is checked against the manifest.
        dataset = ray.data.from_items([{"uri": f} for f in files], override_num_blocks=len(files))
        dataset.context.execution_options.preserve_order = True
        dataset = dataset.map_batches(read_shards, fn_kwargs={"columns": columns}, batch_size=1, batch_format="pyarrow")
        split = {"part": part, "selection_fraction": fraction, "seed": int(r.seed)}
        per_epoch = name == "train" and shuffle(r) == "epoch"
        if per_epoch:
            split["with_uid"] = True  # each epoch sorts the rows by a key of (seed, epoch, uid): loop.epoch_rows
        else:
            dataset = dataset.random_shuffle(seed=int(r.seed))
        if decoded_bytes > cache and _encoded_bytes(folder, files) <= cache:
            # Too big decoded, small encoded (JPEGs are ~10x smaller): keep the shuffled encoded rows, so each
            # epoch streams only the decode. Else every epoch re-reads every shard and waits on the shuffle's
            # barrier before its first batch. The same blocks in the same order: the same batches.
            dataset = dataset.materialize()
        # jpeg_decode=gpu: the same rows in the same blocks, still encoded; the worker decodes every epoch, cached
        # or not, so that the cache setting (not in the key) never chooses between two decoders' pixels.
        dataset = dataset.map_batches(
            encoded_images if on_worker else decode_images,
            fn_kwargs=split if on_worker else {"size": size, **split, **geometry.get(name, {})}, batch_size=256, **compute)
        if decoded_bytes <= cache:
            # Streaming re-runs read+decode every epoch (~10 s of fixed overhead each on a small machine);
            # a dataset that fits is decoded once into the object store instead (with jpeg_decode=gpu: its
            # encoded rows are kept, read and shuffled once).
            dataset = dataset.materialize()
        out[name] = dataset
    return out


NATIVE_EXPANSION = 10  # decoded / stored bytes assumed for native-size training rows (the cache decision only)


def _encoded_bytes(folder: str, files: list[str]) -> float:
    """The stored size of a dataset folder's shards, from its manifest (inf when it has none: never cached)."""
    from synthray.core.artifacts import committed_files

    holder = committed_files(folder)
    entries = holder[1] if holder else {}
    sizes = [entries.get(f.rsplit("/", 1)[1], {}).get("size") for f in files]
    return float("inf") if None in sizes else float(sum(sizes))


# How long a finished fit waits for Ray Train's placement-group cleaner to stop. The cleaner checks the controller
# through the state API, 10 s a try; where that API does not answer (Ray started without its dashboard, as tests and
# the GPU machine do; a token-auth head), Ray's wait of 12 s ran out on every fit ("Failed to stop
# PlacementGroupCleaner gracefully": 12.0 s of a 33 s one-epoch fit). The cleaner exits by itself after its stop
# call whether or not the wait ends first, and it checks as often as before.
CLEANER_STOP_S = 1.5


def _trainer_class() -> Any:
    """Ray's TorchTrainer, waiting CLEANER_STOP_S for its placement-group cleaner (which removes a dead controller's
    placement group) to stop; Ray's own class where its internals differ from those this was written against."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return TorchTrainer
    if not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [PlacementGroupCleanerCallback(stop_timeout=CLEANER_STOP_S)
                    if isinstance(c, PlacementGroupCleanerCallback) else c for c in super()._create_default_callbacks()]

    return Trainer


def _fit(t: Any, loop_config: dict[str, Any], datasets: dict[str, Any], run_path: tuple[Any, str], name: str,
         report_to_tune: bool, selector: dict[str, str] | None = None, loop: Any = train_loop) -> Any:
    """Run `loop` (the classifiers' `train_loop`, or the dense tasks' `dense.dense_loop`) on a Ray Train worker
    group; its checkpoints under `run_path` (filesystem, path)/`name`."""
    import ray.train
    from ray.train.torch import TorchConfig

    gpu = t.device == "gpu"
    callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    # One worker has no peers to talk to: gloo, not Ray's NCCL default on GPU, whose process group refuses a node
    # whose GPUs Ray only counts (SYNTHRAY_FAKE_GPUS) and buys nothing without peers.
    backend = "gloo" if int(t.num_workers) == 1 else None
    trainer = _trainer_class()(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=backend) if backend else None,
        scaling_config=ray.train.ScalingConfig(num_workers=int(t.num_workers), use_gpu=gpu,
                                               resources_per_worker={"GPU": float(t.gpus_per_worker)} if gpu else None,
                                               label_selector=selector if gpu else None),
        datasets=datasets,
        run_config=ray.train.RunConfig(
            name=name, storage_path=run_path[1], storage_filesystem=run_path[0],
            failure_config=ray.train.FailureConfig(max_failures=int(t.max_failures)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    return trainer.fit()


def train_model(spec: Any, data: DatasetRef, store: Store, report_to_tune: bool = False,
                selection: DatasetRef | None = None) -> Artifact:
    """The training stage: build (or reuse) the model `spec` (a `ModelSpec`) from the rows of `data`, or reuse a
    trained copy. `selection`: the real test split, where the recipe selects on it (`recipe.selection.set:
    real-test`, the study's protocol); then every row of `data` trains."""
    from omegaconf import OmegaConf

    art = spec.artifact(store)
    arch, num_classes, label = str(spec.arch["arch"]), spec.num_classes, spec.label()
    images = data.uri
    r, t = OmegaConf.create(spec.run_recipe), OmegaConf.create(spec.training)
    on_test = r.selection.set == "real-test"
    keep_bad = spec.bad_images == "keep"  # NaN and black generated rows train (the study's); else left out
    run_dir = art.store.uri("train-runs")

    def make(out: BuildDir) -> dict[str, Any]:
        import torch
        from omegaconf import OmegaConf

        from synthray.training.inline import InlineSession, runs_inline

        fraction = 0.0 if on_test else float(r.selection_fraction)
        rows = split_counts(images, fraction, int(r.seed), keep_bad)
        if on_test:
            rows = (rows[0], split_counts(selection.uri, 0.0, int(r.seed))[0])
        if rows[0] == 0:
            raise RuntimeError(f"{images} has no usable training rows")
        loop_config = {"arch": arch, "num_classes": num_classes, "recipe": OmegaConf.to_container(r, resolve=True),
                       "rows": rows[0], "has_selection": rows[1] > 0, "selection_metric": str(r.selection.metric),
                       "selection_bytes": rows[1] * int(r.test_transform.resize) ** 2 * 3,
                       "accumulate": int(t.accumulate), "progress_trial": progress.current_trial(), **numerics_of(t)}
        datasets = _datasets(r, t, images, rows, fraction, selection.uri if on_test else None, keep_bad)
        if shuffle(r) == "epoch" and not runs_inline(t, sum(rows)):
            # Not Ray Train's split of one pipeline: each worker orders the whole set anew every epoch.
            loop_config["epoch_datasets"] = {"train": datasets.pop("train")}
        if runs_inline(t, sum(rows)):
            with InlineSession(datasets, storage.join(run_dir, art.key), report_to_tune) as session:
                train_loop(loop_config, session)
            metrics, final = session.metrics, session.last_checkpoint()
        else:
            result = _fit(t, loop_config, datasets, storage.resolve(run_dir), art.key, report_to_tune,
                          spec.resources().label_selector)
            metrics, final = result.metrics or {}, result.checkpoint.as_directory()
        with final as d:
            state = load_checkpoint_file(os.path.join(d, CHECKPOINT_FILE), f"{CHECKPOINT_FILE} of {label}")
        best, history = state["best"], state["history"]
        torch.save(state["model"], out.local / "last.pt")
        torch.save(best["model"] if best["model"] is not None else state["model"], out.local / "model.pt")
        speeds = [h["images_per_s"] for h in history[1:]] or [history[-1]["images_per_s"]]  # epoch 1 pays warm-up
        picked, last = history[best["epoch"] - 1], history[-1]
        meta = {"arch": arch, "num_classes": num_classes, "epochs": state["epoch"] + 1, "rows": rows[0],
                "selection": {"metric": str(r.selection.metric), "set": str(r.selection.set),
                              "data": selection.ref if on_test else f"{fraction:g} of {data.ref}"},
                "selection_rows": rows[1], "best_epoch": best["epoch"],
                "selection_acc_best": picked["selection_acc"], "selection_acc_last": last["selection_acc"],
                "selection_loss_best": picked["selection_loss"], "selection_loss_last": last["selection_loss"],
                "train_loss": last["train_loss"],
                "images_per_s": sorted(speeds)[len(speeds) // 2],
                # No report in this attempt: a killed run had stored its last epoch, and nothing was left to train.
                "resumed_from_epoch": metrics.get("resumed_from_epoch", 0) if metrics else state["epoch"] + 1,
                "history": history,
                "placement": placements(history)}  # the nodes its epochs ran on (rank 0's)
        held = "no selection rows" if rows[1] == 0 else \
            (f"{r.selection.set} rows: {rows[1]}, acc {meta['selection_acc_best']:.3f}, loss {meta['selection_loss_best']:.3f}")
        log.info("%s: best epoch %s of %s (%s), %.0f img/s", label, best["epoch"], meta["epochs"], held, meta["images_per_s"])
        return meta

    art.build(make)
    # The per-epoch checkpoints served resume only; the artifact now holds the final weights.
    storage.delete(storage.join(run_dir, art.key))
    return art
