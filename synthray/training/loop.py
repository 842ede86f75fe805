"""The per-worker training loop: a recipe's epochs over a Ray Data shard, a checkpoint each epoch. Ray Train runs it
on its workers; a small CPU run runs it in the calling process instead (`inline.InlineSession`), with the same inputs.

Each checkpoint holds the model, the best model so far (by `recipe.selection`: the highest accuracy or lowest
loss on the selection rows),
optimiser, scheduler, epoch, optimiser step and every worker's RNG state, so a run killed mid-epoch restarts
from the session's last checkpoint and ends with the same weights as one that was never stopped.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from synthray.core import progress
from synthray.core.safe_load import load_checkpoint_file
from synthray.training.archs import create_model
from synthray.training.augment import cutmix, test_batch, test_geometry, train_batch
from synthray.training.device_decode import shard_batches, to_device
from synthray.training.inputs import epoch_rows
from synthray.training.profile import StepProfile
from synthray.training.recipe import batch_geometry, load_size, lr_at, make_optimizer, steps_per_epoch

CHECKPOINT_FILE = "checkpoint.pt"
# A worker keeps its share of the selection rows in memory when their decoded size is at most this: restarting a
# Ray Data iterator for them every epoch cost ~0.04 s of a ~0.3 s epoch on 2 CPU cores (bench/overhead.py).
KEEP_SELECTION_BYTES = 256 * 2**20
# Timings kept in the history for the benchmarks, and the node the epoch ran on (the model's meta records it): not
# reported as metrics (trackers and Tune see what they saw).
CLOCKS = ("started_at", "data_wait_s", "decode_s", "step_s", "eval_s", "where")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP and torch.compile wrappers (whose state-dict keys carry prefixes)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values: it loads with weights_only (no pickle of numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]  # keys: a tensor; an ndarray in checkpoints written before rng_state's change
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(arch: str, num_classes: int, sync_bn: bool = False, world: int = 1, channels_last: bool = False) -> nn.Module:
    """The worker's network before Ray wraps it in DDP: any nn.Module (ours, torchvision's, timm's) takes the same path."""
    model = create_model(arch, num_classes)
    if sync_bn and world > 1:
        # BatchNorm statistics over every worker's share of the step: the global batch, as in the study's single
        # process. With one worker SyncBatchNorm computes what BatchNorm does, so nothing is converted.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast_for(precision: str, device: torch.device) -> Any:
    """bf16 autocast, or a disabled one for fp32 (the study trains in plain fp32: no autocast, no GradScaler)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: dict[str, Any],
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.dtype]:
    """The training loss and the dtype the logits were computed in."""
    mix = recipe["cutmix"]
    if rng.random() < float(mix["prob"]):
        x, lam = cutmix(x, rng, float(mix["alpha"]))
        out = model(x)
        return lam * nn.functional.cross_entropy(out, y) + (1 - lam) * nn.functional.cross_entropy(out, y.flip(0)), out.dtype
    out = model(x)
    return nn.functional.cross_entropy(out, y), out.dtype


class SelectionBatches:
    """This worker's selection rows in batches of 256, in the order its Ray Data shard yields them. They are read
    once and kept when `nbytes` (their decoded size) is at most KEEP_SELECTION_BYTES, else read again each epoch.
    The shard is not shuffled, so every pass yields the same batches: keeping them changes no score.
    `jpeg_decode="gpu"`: the shard holds encoded rows, decoded here on `device` at `size` px."""

    def __init__(self, shard: Any, nbytes: float, jpeg_decode: str = "cpu", size: int = 0,
                 device: torch.device | None = None, geometry: str = "round") -> None:
        self.shard, self.keep, self.kept = shard, nbytes <= KEEP_SELECTION_BYTES, None
        self.jpeg_decode, self.size, self.device, self.geometry = jpeg_decode, size, device, geometry

    def _read(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = shard_batches(self.shard, 256, self.jpeg_decode, self.device)
        if self.jpeg_decode == "cpu":
            return iter(batches)
        return ({"image": image, "label": label} for image, label in
                (to_device(b, self.jpeg_decode, self.size, self.device, self.geometry) for b in batches))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.kept is not None:
            return iter(self.kept)
        batches = self._read()
        if not self.keep:
            return iter(batches)
        self.kept = list(batches)
        return iter(self.kept)


def evaluate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], recipe: dict[str, Any], device: torch.device,
             autocast: Any, channels_last: bool) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) on this worker's share of the selection rows, over all workers.

    The loss is the study's validation loss: plain cross-entropy of the test-transformed images, no CutMix."""
    net = unwrap(model)  # no DDP: workers may hold different numbers of selection batches
    net.eval()
    stats = torch.zeros(3, device=device)  # hits, rows, summed cross-entropy
    rng = np.random.default_rng(int(recipe["seed"]))
    with torch.no_grad(), autocast:
        for batch in batches:
            x = test_batch(batch["image"].to(device), recipe, rng)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch["label"].to(device)
            logits = net(x).float()
            # torch.full, not torch.tensor(n, device=...): no copy from host memory, which waits for the queue
            stats += torch.stack([(logits.argmax(1) == y).sum().float(), torch.full((), float(len(y)), device=device),
                                  nn.functional.cross_entropy(logits, y, reduction="sum")])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    rows = stats[1].clamp(min=1)
    return float(stats[0] / rows), float(stats[2] / rows)


def improves(score: float, best: float | None, metric: str) -> bool:
    """Whether an epoch's selection score beats the best so far; ties keep the earlier epoch, as the study's `<`."""
    if best is None or math.isnan(best):
        return True
    return not math.isnan(score) and (score < best if metric == "loss" else score > best)


def shuffle(recipe: Any) -> str:
    """`recipe.shuffle`: "epoch" (a new permutation every epoch, the study's) or "once" (synthray's earlier order,
    also what a recipe without the setting means)."""
    return str(recipe.get("shuffle", "once"))


class RayTrainSession:
    """What the loop needs of its run, from Ray Train: this worker's rank among `world`, its device, its dataset
    shards, the last checkpoint reported (a rerun's, or a restarted worker group's) and the report of each epoch."""

    def __init__(self, epoch_datasets: dict[str, Any] | None = None) -> None:
        import ray.train
        import ray.train.torch

        self.epoch_datasets = epoch_datasets or {}  # recipe.shuffle: epoch: the whole sets, ordered anew each epoch
        ctx = ray.train.get_context()
        self.world, self.rank = ctx.get_world_size(), ctx.get_world_rank()
        # Ray Train names cuda:N on any worker given a GPU; on a node whose GPUs Ray only counts (SYNTHRAY_FAKE_GPUS,
        # passed by check_device before this) torch has no CUDA, and the loop computes on CPU as every stage does.
        self.device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=self.device)  # to the device; DDP when world > 1

    def dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def epoch_shard(self, name: str, seed: int, epoch: int) -> Any:
        return epoch_rows(self.epoch_datasets[name], seed, epoch, self.world, self.rank)

    def last_checkpoint(self) -> AbstractContextManager[str | None]:
        """A local folder holding the newest checkpoint's files, or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return checkpoint.as_directory() if checkpoint else nullcontext(None)

    def report(self, metrics: dict[str, Any], folder: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop(config: dict[str, Any], session: Any = None) -> None:
    """`config`: arch, num_classes, recipe (dict), rows (training rows), has_selection, selection_bytes (their decoded
    size, all workers), selection_metric ("accuracy" | "loss"), precision ("bf16" | "fp32"), channels_last, compile,
    sync_bn, accumulate and progress_trial (the sweep trial shown on the console, or None), jpeg_decode ("cpu": the
    shards hold decoded arrays | "gpu": encoded bytes, decoded here; absent: cpu). Reports epoch, train_loss,
    selection_acc, selection_loss, lr and images_per_s each epoch; the checkpoint's history also keeps the seconds in
    CLOCKS. `session`: where the run is (rank, device, shards, checkpoints, reports); None: a Ray Train worker's
    (`RayTrainSession`)."""
    from synthray.core.devices import check_device
    from synthray.core.placement import where_am_i

    check_device(config["device"])  # a GPU worker whose torch sees no CUDA fails in one line, not in fp32 on CPU
    where = where_am_i()
    session = session or RayTrainSession(config.get("epoch_datasets"))
    recipe = config["recipe"]
    world, rank = session.world, session.rank
    seed = int(recipe["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    device = session.device
    model = build_model(config["arch"], config["num_classes"], config["sync_bn"], world, config["channels_last"])
    model = session.prepare_model(model)
    forward = torch.compile(model) if config["compile"] else model
    optimizer = make_optimizer(model.parameters(), recipe)
    micro = batch_geometry(int(recipe["batch_size"]), world, int(config["accumulate"]))
    per_step = micro * int(config["accumulate"])
    spe = steps_per_epoch(int(config["rows"]), world, per_step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, spe, recipe, int(config["rows"])) / float(recipe["lr"]))
    autocast = autocast_for(config["precision"], device)
    metric = config["selection_metric"]

    start_epoch, step, best, history = 0, 0, {"epoch": None, "score": None, "model": None}, []
    state = None
    with session.last_checkpoint() as d:
        if d is not None:
            state = load_checkpoint_file(os.path.join(d, CHECKPOINT_FILE), f"training checkpoint {CHECKPOINT_FILE}")
            rng_file = os.path.join(d, f"rng-{rank}.pt")
            rng = load_checkpoint_file(rng_file) if os.path.exists(rng_file) else None
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best, history = state["epoch"] + 1, state["step"], state["best"], state["history"]
        if rng is not None:
            set_rng_state(rng)

    per_epoch, size = shuffle(recipe) == "epoch", load_size(recipe)
    train_shard = None if per_epoch else session.dataset_shard("train")
    decode = config.get("jpeg_decode", "cpu")
    selection = SelectionBatches(session.dataset_shard("selection"), config.get("selection_bytes", math.inf) / world,
                                 decode, int(recipe["test_transform"]["resize"]), device, test_geometry(recipe)) \
        if config["has_selection"] else None
    profile = StepProfile.from_env(rank)  # bench/training.py --profile; None otherwise
    for epoch in range(start_epoch, int(recipe["epochs"])):
        model.train()
        epoch_started = time.time()  # wall clock, for bench/overhead.py: the time between epochs that is not compute
        aug = np.random.default_rng([seed, epoch, rank])  # augmentation and CutMix draws: a function of the epoch
        lr = optimizer.param_groups[0]["lr"]
        total, count, started, dtype = torch.zeros((), device=device), 0, time.perf_counter(), None
        # prefetch_batches > 1 formats batches on a thread pool that can swap their order; one batch of
        # look-ahead keeps the order a function of the seed (measured: swapped first batches with 2).
        if per_epoch:  # the study's order: a new permutation of every row each epoch, drawn from (seed, epoch)
            source, order = session.epoch_shard("train", seed, epoch), {}
        else:  # synthray's earlier order: one seeded shuffle, then a local buffer of 4 steps reseeded each epoch
            source, order = train_shard, {"local_shuffle_buffer_size": 4 * per_step, "local_shuffle_seed": seed * 100_003 + epoch}
        batches = iter(shard_batches(source, per_step, decode, device, native=size is None, prefetch_batches=1, **order))
        # Where the epoch's time goes (bench/training.py prints it): blocked on Ray Data for the next batch (from
        # `started`, so starting the iterator counts), decoding on the worker (jpeg_decode=gpu: host time of the
        # call) and the rest, the steps.
        waited, decoding, index = time.perf_counter() - started, 0.0, 0
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            got = time.perf_counter()
            waited += got - asked
            if batch is None:
                break
            if profile:
                profile.before(epoch, index, device)
            images, labels = to_device(batch, decode, size, device)
            decoding += time.perf_counter() - got
            optimizer.zero_grad(set_to_none=True)
            starts = range(0, len(labels), micro)
            for i, s in enumerate(starts):
                x = train_batch(images[s:s + micro], recipe, aug)
                if config["channels_last"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels[s:s + micro]
                # Gradients are all-reduced once per optimiser step, on its last micro-batch.
                sync = nullcontext() if world == 1 or i == len(starts) - 1 else model.no_sync()
                with sync:
                    with autocast:
                        loss, dtype = _loss(forward, x, y, recipe, aug)
                    (loss * len(y) / len(labels)).backward()
                total += loss.detach().float() * len(y)  # no .item(): a host sync per step stalls the GPU
            nn.utils.clip_grad_norm_(model.parameters(), float(recipe["grad_clip"]))
            optimizer.step()
            scheduler.step()
            step += 1
            count += len(labels)
            if profile:
                profile.after(epoch, index, device)
            index += 1
        if profile:
            profile.close(device)  # an epoch shorter than the steps asked for
        if device.type == "cuda":
            # Steps only queue GPU work; waiting for it once here counts the epoch's GPU time without a sync per step.
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        evaluated = time.perf_counter()
        selection_acc, selection_loss = (evaluate(model, selection, recipe, device, autocast, config["channels_last"])
                                         if selection else (None, None))
        record = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1), "selection_acc": selection_acc,
                  "selection_loss": selection_loss, "lr": lr, "images_per_s": count * world / max(seconds, 1e-9),
                  "step": step, "compute_dtype": str(dtype).removeprefix("torch."), "started_at": epoch_started,
                  # This worker's seconds (rank 0's in the checkpoint); records written before these keys lack them.
                  "data_wait_s": waited, "decode_s": decoding, "step_s": seconds - waited - decoding,
                  "eval_s": time.perf_counter() - evaluated, "where": where}
        history.append(record)
        score = selection_loss if metric == "loss" else selection_acc
        if score is None or improves(score, best["score"], metric):  # no selection rows: the last epoch
            weights = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()} if rank == 0 else None
            best = {"epoch": epoch + 1, "score": score, "model": weights}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))  # Ray merges every worker's files into one checkpoint
            if rank == 0:
                torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "best": best,
                            "history": history}, os.path.join(tmp, CHECKPOINT_FILE))
            metrics = {k: v for k, v in record.items() if v is not None and k not in CLOCKS}
            metrics.update(best_epoch=best["epoch"], resumed_from_epoch=start_epoch)
            session.report(metrics, tmp)
        if rank == 0:
            progress.advance(epoch + 1, int(recipe["epochs"]), "epochs", trial=config.get("progress_trial"))
