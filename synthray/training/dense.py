"""The dense training stage: a detector (Faster R-CNN) or segmenter (DeepLabV3) trained with the study's recipe on one
split's images and their pseudo-labels, on Ray Train (or, for a small CPU run, in the calling process with the same
loop: `inline.InlineSession`), a checkpoint every epoch and exact resume, like the classifiers (`trainer.py`).

Input rows: each image shard joined on `id` with its labels shard (the label stage mirrors its source's shards), the
rows of labelled classes only, each epoch in its own permutation of (seed, epoch, row id) (`inputs.epoch_rows`).
Detection trains on images with at least one usable box, as the study's `get_coco` drops the rest from training.

Artifact layout: `<storage>/dense-models/<key>/model.pt` (the final epoch's weights: the study evaluates its last
epoch) and `meta.json` (epochs, rows, the per-epoch history, where they ran). The per-epoch run state lives under
`<storage>/train-runs/<key>` until the model is complete.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from synthray.core import progress, storage
from synthray.core.artifacts import Artifact, BuildDir, DatasetRef, Store
from synthray.core.safe_load import load_checkpoint_file

log = logging.getLogger("synthray")
LABEL_COLUMNS = ("id", "label", "boxes", "scores", "masks", "n", "height", "width")


def backbone_file(hub_cache: str | None, check_only: bool = False) -> str | None:
    """The local path of torchvision's ResNet-50 ImageNet weights (`resnet50-0676ba61.pth`): from `hub.cache`'s
    `torch/` folder (copied to this node's scratch), else torch's own cache. `check_only`: that it is there."""
    from synthray.core.registry import SynthrayError
    from synthray.graph.dense import BACKBONE_FILE

    if hub_cache:
        uri = storage.join(hub_cache, "torch", BACKBONE_FILE)
        if storage.exists(uri):
            return None if check_only else str(storage.local_copy(uri, storage.scratch_dir(None)))
    local = os.path.join(torch.hub.get_dir(), "checkpoints", BACKBONE_FILE)
    if os.path.isfile(local):
        return local
    where = f"{hub_cache}/torch/ or {os.path.dirname(local)}/" if hub_cache else f"{os.path.dirname(local)}/"
    raise SynthrayError(f"tasks.*.backbone=imagenet: {BACKBONE_FILE} (torchvision's ResNet50_Weights.IMAGENET1K_V1) is not in "
                        f"{where}; copy it there, or set tasks.<task>.backbone=null for a random backbone")


def labelled_rows(images: str, labels: str, keep_bad: bool = False, drop_empty: str | None = None,
                  with_image: bool = True, with_masks: bool = True) -> Any:
    """One image shard's rows joined on `id` with its labels shard (`labels` holds only labelled classes), as a
    pyarrow Table in the labels shard's order: LABEL_COLUMNS, `image` (encoded bytes) and `uid` (`inputs.row_uids`).
    Rows the quality guard flagged are left out unless `keep_bad`; `drop_empty` (a box format): detection training
    rows the study keeps only with a usable box (`detection.study_keeps_for_training`). Without `with_image` and
    `with_masks`, only the small columns are read (counting rows, box ground truth)."""
    import pyarrow as pa

    from synthray.core.images import read_shard, shard_schema
    from synthray.training.detection import study_keeps_for_training
    from synthray.training.inputs import UID, row_uids

    table = read_shard(labels, [c for c in LABEL_COLUMNS if with_masks or c not in ("masks", "scores")])
    columns = ["id"] + (["image"] if with_image else []) + \
        (["quality"] if not keep_bad and "quality" in shard_schema(images).names else [])
    source = read_shard(images, columns)
    at = {i: k for k, i in enumerate(source.column("id").to_pylist())}
    ids = table.column("id").to_pylist()
    keep = [i in at for i in ids]
    if "quality" in columns:
        quality = source.column("quality").to_pylist()
        keep = [k and quality[at[i]] == "ok" for k, i in zip(keep, ids)]
    if drop_empty is not None:
        keep = [k and study_keeps_for_training(r, drop_empty) for k, r in zip(keep, table.select(["boxes", "n"]).to_pylist())]
    table = table.filter(pa.array(keep, type=pa.bool_()))
    ids = table.column("id").to_pylist()
    if with_image:
        table = table.append_column("image", source.column("image").take(pa.array([at[i] for i in ids], type=pa.int64())))
    return table.append_column(UID, pa.array(row_uids(ids), type=pa.int64()))


def read_labelled(batch: Any, keep_bad: bool, drop_empty: str | None) -> Any:
    """Ray Data batch UDF: rows of (`images`, `labels`) shard URIs -> their joined rows (`labelled_rows`)."""
    import pyarrow as pa

    pairs = zip(batch.column("images").to_pylist(), batch.column("labels").to_pylist())
    return pa.concat_tables([labelled_rows(i, lab, keep_bad, drop_empty) for i, lab in pairs])


def shard_pairs(images: str, labels: str) -> list[tuple[str, str]]:
    """(image shard, labels shard) URIs of a split and its labels artifact, matched by shard name."""
    from synthray.core.images import shard_files
    from synthray.labels.stage import SPLIT

    named = {f.rsplit("/", 1)[1]: f for f in shard_files(storage.join(labels, SPLIT))}
    return [(f, named[f.rsplit("/", 1)[1]]) for f in shard_files(images) if f.rsplit("/", 1)[1] in named]


def drop_rule(task: str, recipe: dict[str, Any]) -> str | None:
    return str(recipe["box_format"]) if task == "detection" and recipe.get("train_drop_empty", True) else None


def count_rows(images: str, labels: str, task: str, recipe: dict[str, Any], keep_bad: bool) -> int:
    """The training rows of a split, from its labels and quality columns alone (no image bytes read)."""
    rule = drop_rule(task, recipe)
    return sum(labelled_rows(i, lab, keep_bad, rule, with_image=False, with_masks=False).num_rows
               for i, lab in shard_pairs(images, labels))


def dense_job(spec: Any, data: DatasetRef, labels: Artifact) -> tuple[dict[str, Any], Any]:
    """The loop config and the training rows (a Ray Dataset with `inputs.UID`) of the dense model `spec`."""
    import ray.data
    from omegaconf import OmegaConf

    t = OmegaConf.create(spec.training)
    recipe = dict(spec.recipe)
    keep_bad = False  # the label stage labels every row; flagged generated rows (NaN, black) have nothing to find
    rows = count_rows(data.uri, labels.uri, spec.task, recipe, keep_bad)
    if rows < 2:
        raise RuntimeError(f"{spec.label()}: {rows} training rows with pseudo-labels in {data.ref}; the {spec.task} "
                           "recipe needs at least 2 (lower labels.threshold, or label more classes)")
    pairs = shard_pairs(data.uri, labels.uri)
    dataset = ray.data.from_items([{"images": i, "labels": lab} for i, lab in pairs], override_num_blocks=len(pairs))
    dataset = dataset.map_batches(read_labelled, fn_kwargs={"keep_bad": keep_bad, "drop_empty": drop_rule(spec.task, recipe)},
                                  batch_size=1, batch_format="pyarrow")
    if rows <= int(t.get("inline_rows", 0)) or float(t.cache_decoded_gb) > 0:
        dataset = dataset.materialize()  # the encoded rows kept: each epoch only sorts them
    config = {"task": spec.task, "model": spec.model["model"], "backbone": bool(spec.model.get("backbone")),
              "hub_cache": spec.hub_cache, "targets": target_positions(spec.classes), "recipe": recipe, "rows": rows,
              "device": str(t.device)}
    return config, dataset


def train_dense(spec: Any, data: DatasetRef, labels: Artifact, store: Store, report_to_tune: bool = False) -> Artifact:
    """The dense training stage: build (or reuse) `spec` (a `graph.dense.DenseModelSpec`) from `data`'s images and
    their pseudo-labels `labels`."""
    from omegaconf import OmegaConf

    from synthray.training.inline import InlineSession, runs_inline
    from synthray.training.trainer import _fit

    art = spec.artifact(store)
    t = OmegaConf.create(spec.training)
    run_dir = art.store.uri("train-runs")

    def make(out: BuildDir) -> dict[str, Any]:
        from synthray.core.shards import placements

        config, dataset = dense_job(spec, data, labels)
        config["progress_trial"] = progress.current_trial()
        rows = config["rows"]
        if runs_inline(t, rows):
            with InlineSession({"train": dataset}, storage.join(run_dir, art.key), report_to_tune) as session:
                dense_loop(config, session)
            final = session.last_checkpoint()
        else:
            config["epoch_datasets"] = {"train": dataset}
            result = _fit(t, config, {}, storage.resolve(run_dir), art.key, report_to_tune,
                          spec.resources().label_selector, loop=dense_loop)
            final = result.checkpoint.as_directory()
        with final as d:
            state = load_checkpoint_file(os.path.join(d, CHECKPOINT), f"{CHECKPOINT} of {spec.label()}")
        torch.save(state["model"], out.local / "model.pt")
        history = state["history"]
        log.info("%s: %d epochs on %d rows, loss %.4f", spec.label(), len(history), rows, history[-1]["train_loss"])
        return {"task": spec.task, "model": spec.model["model"], "epochs": len(history), "rows": rows,
                "classes": list(spec.classes), "history": history, "placement": placements(history)}

    art.build(make)
    storage.delete(storage.join(run_dir, art.key))
    return art


CHECKPOINT = "checkpoint.pt"


def build_dense_model(config: dict[str, Any]) -> torch.nn.Module:
    """The task's torchvision model, initialised from the recipe's seed (the backbone from ImageNet weights when
    the spec says so). Outputs: detection `recipe.num_classes` (the study's 200) or more if the classes need it;
    segmentation background + the labelled classes."""
    from synthray.training.detection import build_detector
    from synthray.training.segmentation import build_segmenter

    recipe, seed = config["recipe"], int(config["recipe"]["seed"])
    weights = backbone_file(config["hub_cache"]) if config["backbone"] else None
    if config["task"] == "detection":
        outputs = max(int(recipe["num_classes"]), len(config["targets"]) + int(recipe["label_start"]))
        return build_detector(config["model"], outputs, weights, seed, recipe)
    return build_segmenter(config["model"], len(config["targets"]) + 1, weights, seed)


def target_positions(classes: Any) -> dict[str, int]:
    """{label index as text: its 0-based position among the labelled classes} (JSON keys are text)."""
    return {str(c): i for i, c in enumerate(classes)}


def image_tensor(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> float32 (3, H, W) in [0, 1] at the native size (the detectors' input)."""
    from synthray.core.images import decode_array

    return torch.from_numpy(np.array(decode_array(data, None))).permute(2, 0, 1).float().div(255)


def _detection_step(model: Any, optimizer: Any, rows: list[dict[str, Any]], recipe: dict[str, Any], n: int,
                    epoch: int, index: int, spe: int, rng: np.random.Generator, device: torch.device) -> float:
    """One SGD step of engine.py's train_one_epoch on `rows` (each with its class's `target` position), hflipped."""
    from synthray.training import detection as det

    label_map = {str(p): p + int(recipe["label_start"]) for p in range(n)}
    targets = det.targets_from_labels([{**r, "label": r["target"]} for r in rows], label_map, str(recipe["box_format"]))
    flips = torch.Generator().manual_seed(int(rng.integers(2**62)))
    pairs = [det.hflip(image_tensor(r["image"]), t, flips, float(recipe["hflip_prob"])) for r, t in zip(rows, targets)]
    lr = det.lr_at(epoch, index, recipe, spe)
    return det.train_steps(model, optimizer, [([p[0] for p in pairs], [p[1] for p in pairs])], device, lrs=[lr])[0]["loss"]


def _segmentation_step(model: Any, optimizer: Any, rows: list[dict[str, Any]], recipe: dict[str, Any], n: int,
                       step: int, total: int, rng: np.random.Generator, device: torch.device) -> float:
    """One SGD step of the study's segmentation train.py on `rows`, each randomly resized, flipped and cropped."""
    from synthray.core.images import decode_array
    from synthray.training import segmentation as seg

    positions = {p: p for p in range(n)}  # class_map gives position + 1; 0 is the background
    pairs = [seg.train_transform(decode_array(r["image"], None), seg.class_map({**r, "label": r["target"]}, positions, n + 1),
                                 rng, recipe) for r in rows]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    return seg.train_steps(model, optimizer, [(x, y)], device, start=step, total_iterations=total,
                           seed=int(recipe["seed"]), recipe=recipe)[0]


def dense_loop(config: dict[str, Any], session: Any = None) -> None:
    """The per-worker dense loop. `config`: task, model, backbone (bool), hub_cache, targets ({label index: position},
    `target_positions`), recipe (the task's, with `seed`), rows, device, progress_trial. Each epoch draws its
    own order (`session.epoch_shard`), steps over batches of `recipe.batch_size` (per worker: divided by the world)
    and reports a checkpoint: weights, optimizer, epoch, step, history, every worker's RNG state."""
    from synthray.core.devices import check_device
    from synthray.core.placement import where_am_i
    from synthray.training.loop import RayTrainSession, rng_state, set_rng_state, unwrap

    check_device(config["device"])
    where = where_am_i()
    session = session or RayTrainSession(config.get("epoch_datasets"))
    recipe, task = config["recipe"], config["task"]
    targets, n = {int(k): int(v) for k, v in config["targets"].items()}, len(config["targets"])
    world, rank, device, seed = session.world, session.rank, session.device, int(recipe["seed"])
    from synthray.training import detection, segmentation

    detection.seed_everything(seed)
    model = session.prepare_model(build_dense_model(config).to(device))
    bare = unwrap(model)
    optimizer = detection.make_optimizer(bare, recipe) if task == "detection" else segmentation.make_optimizer(bare, recipe)
    batch = max(1, int(recipe["batch_size"]) // world)
    rows = int(config["rows"]) // world
    # Detection keeps a short last batch (the study's sampler does); segmentation drops it (drop_last=True), and
    # needs 2 images a step (its ASPP pooling batch-normalises a 1x1 map).
    spe = max(1, -(-rows // batch) if task == "detection" else rows // max(batch, 2))
    total = spe * int(recipe["epochs"])
    start, step, history = 0, 0, []
    with session.last_checkpoint() as d:
        state = load_checkpoint_file(os.path.join(d, CHECKPOINT), f"dense checkpoint {CHECKPOINT}") if d else None
        rng_file = os.path.join(d, f"rng-{rank}.pt") if d else None
        rng = load_checkpoint_file(rng_file) if rng_file and os.path.exists(rng_file) else None
    if state is not None:
        bare.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, step, history = state["epoch"] + 1, state["step"], state["history"]
        if rng is not None:
            set_rng_state(rng)
    for epoch in range(start, int(recipe["epochs"])):
        model.train()
        started, losses, seen = time.perf_counter(), [], 0
        aug = np.random.default_rng([seed, epoch, rank])
        source = session.epoch_shard("train", seed, epoch)
        drop_last = task == "segmentation"
        for index, table in enumerate(source.iter_batches(batch_size=max(batch, 2) if drop_last else batch,
                                                           batch_format="pyarrow", drop_last=drop_last)):
            part = table.to_pylist()
            for r in part:
                r["target"] = targets[int(r["label"])]
            if task == "detection":
                losses.append(_detection_step(model, optimizer, part, recipe, n, epoch, index, spe, aug, device))
            else:
                losses.append(_segmentation_step(model, optimizer, part, recipe, n, step, total, aug, device))
            step += 1
            seen += len(part)
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "steps": len(losses), "step": step, "images_per_s": seen * world / max(seconds, 1e-9),
                        "where": where})
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))
            if rank == 0:
                torch.save({"model": bare.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "step": step, "history": history}, os.path.join(tmp, CHECKPOINT))
            session.report({"epoch": epoch + 1, "train_loss": history[-1]["train_loss"],
                            "images_per_s": history[-1]["images_per_s"], "resumed_from_epoch": start}, tmp)
        if rank == 0:
            progress.advance(epoch + 1, int(recipe["epochs"]), "epochs", trial=config.get("progress_trial"))

