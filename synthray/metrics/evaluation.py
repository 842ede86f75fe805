"""The evaluation stage: a trained classifier's predictions on one test split, and their accuracies.

An `EvalSpec` (a model and a split) is built by an actor pool over the split's shards (`evaluation.device`,
`gpus_per_actor`, placed by `evaluation.gpu_memory_gb`), so the trial process only orchestrates and no process
holds a whole test set: each actor loads the model's best and last epochs once, and writes per shard the label
and both predictions of every usable row. The accuracies are then summed shard by shard.

Random test crops (the texture probe) are drawn per shard from (recipe seed, shard name), one position per row,
so the predictions do not depend on the batch size or the number of actors.

Artifact layout: `<storage>/evaluations/<key>/data/part-*.parquet` with columns id, label, best, best_top5, last
(predicted class ids, and whether the label is among the best epoch's top 5); `meta.json` holds rows, acc, top5,
acc_last and per_class (top-1 accuracy of the best epoch per class, None where the split has no image of it).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from synthray.core.artifacts import Artifact, BuildDir, DatasetRef, Store, read_checked
from synthray.core.images import decode_array, read_shard, shard_files, shard_rows, usable_filter
from synthray.core.safe_load import load_tensors
from synthray.metrics.accuracy import TOP_K, topk_hits

WEIGHTS = {"best": "model.pt", "last": "last.pt"}


def _load(uri: str, arch: str, num_classes: int, device: str) -> Any:

    from synthray.training.archs import create_model

    net = create_model(arch, num_classes)
    net.load_state_dict(load_tensors(read_checked(uri), uri))
    return net.eval().to(device)


def _eval_worker(weights: dict[str, str], arch: str, num_classes: int, recipe: dict[str, Any], batch_size: int,
                 device: str) -> Callable[[dict], dict]:
    """Runs once per actor: loads both epochs' weights; returns work(task) -> the shard's prediction columns."""
    import torch

    from synthray.core.devices import check_device
    from synthray.training.augment import test_batch, test_geometry

    where = check_device(device)
    nets = {name: _load(uri, arch, num_classes, where) for name, uri in weights.items()}
    size, crop = int(recipe["test_transform"]["resize"]), int(recipe["test_transform"]["crop"])
    geometry = test_geometry(recipe)
    random_crops = recipe["test_transform"].get("crop_at", "center") == "random"

    def work(task: dict[str, Any]) -> dict[str, list]:
        usable = usable_filter(task["folder"]) if task.get("usable", True) else None
        table = read_shard(task["src"], ["id", "image", "label"], usable).to_pydict()
        n = len(table["id"])
        positions = None
        if random_crops:
            rng = np.random.default_rng([int(recipe["seed"]), zlib.crc32(task["name"].encode())])
            positions = (rng.integers(0, size - crop + 1, n), rng.integers(0, size - crop + 1, n))
        out: dict[str, list] = {"id": table["id"], "label": table["label"], "best": [], "best_top5": [], "last": []}
        labels = np.asarray(table["label"], dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                x = torch.from_numpy(np.stack([decode_array(b, size, geometry) for b in table["image"][start:stop]])).to(where)
                at = (positions[0][start:stop], positions[1][start:stop]) if positions else None
                x = test_batch(x, recipe, positions=at)
                for name, net in nets.items():
                    logits = net(x).float().cpu().numpy()
                    out[name] += logits.argmax(axis=1).tolist()
                    if name == "best":
                        out["best_top5"] += topk_hits(labels[start:stop], logits, TOP_K).tolist()
        return out

    return work


def summarize(folder: str, num_classes: int) -> dict[str, Any]:
    """rows, acc, top5, acc_last and per_class from the prediction shards under `folder`, one shard at a time."""
    hits = np.zeros(num_classes, dtype=np.int64)
    counts = np.zeros(num_classes, dtype=np.int64)
    top5 = last = 0
    for f in shard_files(folder):
        t = read_shard(f, ["label", "best", "best_top5", "last"]).to_pydict()
        labels = np.asarray(t["label"], dtype=np.int64)
        np.add.at(counts, labels, 1)
        np.add.at(hits, labels, (np.asarray(t["best"]) == labels).astype(np.int64))
        top5 += int(np.sum(t["best_top5"]))
        last += int(np.sum(np.asarray(t["last"]) == labels))
    rows = int(counts.sum())
    if rows == 0:
        raise RuntimeError(f"{folder}: no usable rows to evaluate on")
    per_class = [float(h / c) if c else None for h, c in zip(hits, counts)]
    return {"rows": rows, "acc": float(hits.sum() / rows), "top5": float(top5 / rows), "acc_last": float(last / rows),
            "per_class": per_class}


def evaluate(spec: Any, model: Artifact, data: DatasetRef, store: Store) -> Artifact:
    """The evaluation stage: build (or reuse) `spec` (an `EvalSpec`): the built `model` on the split `data`."""
    from synthray.core.shards import Pool, map_shards, placements, record_shards

    art = spec.artifact(store)
    run = spec.pool

    def make(out: BuildDir) -> dict[str, Any]:
        usable = spec.bad_images != "keep"  # keep: every row, the ones the quality guard flagged too
        tasks = [{"name": f.rsplit("/", 1)[1], "src": f, "folder": data.uri, "rows": shard_rows(f), "usable": usable}
                 for f in shard_files(data.uri)]
        pool = Pool.from_cfg(run, spec.resources().label_selector)
        weights = {name: model.file(file) for name, file in WEIGHTS.items()}
        factory = functools.partial(_eval_worker, weights, str(model.spec["arch"]), int(model.spec["num_classes"]),
                                    model.spec["recipe"], int(run["batch_size"]), pool.device)
        done = map_shards(tasks, factory, out.uri + "/data", what=f"evaluate {art.label}", pool=pool)
        record_shards(out, "data", done)
        return {**summarize(out.uri + "/data", int(model.spec["num_classes"])), "model": model.ref, "data": data.ref,
                "placement": placements(done)}

    return art.build(make)


def accuracy_report(evaluation: Artifact, prefix: str) -> dict[str, object]:
    """`<prefix>_acc`, `_top5`, `_per_class` (a list, label order) of the best epoch and `<prefix>_acc_last` of
    the final one, from a built evaluation."""
    meta = evaluation.meta()
    return {f"{prefix}_acc": meta["acc"], f"{prefix}_top5": meta["top5"], f"{prefix}_per_class": meta["per_class"],
            f"{prefix}_acc_last": meta["acc_last"]}
