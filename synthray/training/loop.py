"""The per-worker training loop run by Ray Train: a recipe's epochs over a Ray Data shard, a checkpoint each epoch.

Each checkpoint holds the model, the best model so far (picked on the selection split of the training domain),
optimiser, scheduler, epoch, optimiser step and every worker's RNG state, so a run killed mid-epoch restarts
from `ray.train.get_checkpoint()` and ends with the same weights as one that was never stopped.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from synthray.training.archs import create_model
from synthray.training.augment import cutmix, test_batch, train_batch
from synthray.training.recipe import batch_geometry, lr_at, make_optimizer, steps_per_epoch

CHECKPOINT_FILE = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP and torch.compile wrappers (whose state-dict keys carry prefixes)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: dict[str, Any], rng: np.random.Generator) -> torch.Tensor:
    mix = recipe["cutmix"]
    if rng.random() < float(mix["prob"]):
        x, lam = cutmix(x, rng, float(mix["alpha"]))
        out = model(x)
        return lam * nn.functional.cross_entropy(out, y) + (1 - lam) * nn.functional.cross_entropy(out, y.flip(0))
    return nn.functional.cross_entropy(model(x), y)


def evaluate(model: nn.Module, shard: Any, recipe: dict[str, Any], device: torch.device, autocast: Any,
             channels_last: bool) -> float:
    """Top-1 accuracy on this worker's share of the selection split, summed over all workers."""
    net = unwrap(model)  # no DDP: workers may hold different numbers of selection batches
    net.eval()
    hits = torch.zeros(2, device=device)
    rng = np.random.default_rng(int(recipe["seed"]))
    with torch.no_grad(), autocast:
        for batch in shard.iter_torch_batches(batch_size=256):
            x = test_batch(batch["image"].to(device), recipe, rng)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch["label"].to(device)
            hits += torch.stack([(net(x).argmax(1) == y).sum(), torch.tensor(len(y), device=device)]).float()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(hits)
    return float(hits[0] / hits[1].clamp(min=1))


def train_loop(config: dict[str, Any]) -> None:
    """`config`: arch, num_classes, recipe (dict), rows (training rows), has_selection, precision ("bf16" | "fp32"),
    channels_last, compile and accumulate. Reports epoch, train_loss, selection_acc, lr and images_per_s each epoch."""
    import ray.train
    import ray.train.torch

    from synthray.devices import check_device

    check_device(config["device"])  # a GPU worker whose torch sees no CUDA fails in one line, not in fp32 on CPU
    recipe = config["recipe"]
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    seed = int(recipe["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    device = ray.train.torch.get_device()
    model = create_model(config["arch"], config["num_classes"])
    if config["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    forward = torch.compile(model) if config["compile"] else model
    optimizer = make_optimizer(model.parameters(), recipe)
    micro = batch_geometry(int(recipe["batch_size"]), world, int(config["accumulate"]))
    per_step = micro * int(config["accumulate"])
    spe = steps_per_epoch(int(config["rows"]), world, per_step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, spe, recipe) / float(recipe["lr"]))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16")

    start_epoch, step, best, history = 0, 0, {"epoch": None, "selection_acc": -1.0, "model": None}, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
            rng_file = os.path.join(d, f"rng-{rank}.pt")
            rng = torch.load(rng_file, weights_only=False) if os.path.exists(rng_file) else None
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best, history = state["epoch"] + 1, state["step"], state["best"], state["history"]
        if rng is not None:
            set_rng_state(rng)

    train_shard = ray.train.get_dataset_shard("train")
    selection_shard = ray.train.get_dataset_shard("selection") if config["has_selection"] else None
    for epoch in range(start_epoch, int(recipe["epochs"])):
        model.train()
        aug = np.random.default_rng([seed, epoch, rank])  # augmentation and CutMix draws: a function of the epoch
        lr = optimizer.param_groups[0]["lr"]
        total, count, started = torch.zeros((), device=device), 0, time.perf_counter()
        # prefetch_batches > 1 formats batches on a thread pool that can swap their order; one batch of
        # look-ahead keeps the order a function of the seed (measured: swapped first batches with 2).
        batches = train_shard.iter_torch_batches(batch_size=per_step, local_shuffle_buffer_size=4 * per_step,
                                                 local_shuffle_seed=seed * 100_003 + epoch, prefetch_batches=1)
        for batch in batches:
            images, labels = batch["image"].to(device, non_blocking=True), batch["label"].to(device)
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
                        loss = _loss(forward, x, y, recipe, aug)
                    (loss * len(y) / len(labels)).backward()
                total += loss.detach().float() * len(y)  # no .item(): a host sync per step stalls the GPU
            nn.utils.clip_grad_norm_(model.parameters(), float(recipe["grad_clip"]))
            optimizer.step()
            scheduler.step()
            step += 1
            count += len(labels)
        seconds = time.perf_counter() - started
        selection_acc = evaluate(model, selection_shard, recipe, device, autocast, config["channels_last"]) if selection_shard else None
        record = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1), "selection_acc": selection_acc, "lr": lr,
                  "images_per_s": count * world / max(seconds, 1e-9), "step": step}
        history.append(record)
        if selection_acc is None or selection_acc > best["selection_acc"]:
            weights = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()} if rank == 0 else None
            best = {"epoch": epoch + 1, "selection_acc": -1.0 if selection_acc is None else selection_acc, "model": weights}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))  # Ray merges every worker's files into one checkpoint
            if rank == 0:
                torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "best": best,
                            "history": history}, os.path.join(tmp, CHECKPOINT_FILE))
            metrics = {k: v for k, v in record.items() if v is not None}
            metrics.update(best_epoch=best["epoch"], resumed_from_epoch=start_epoch)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
