"""The per-worker training loop run by Ray Train: epochs over a Ray Data shard, a checkpoint every epoch.

Each checkpoint holds model, optimiser and scheduler state plus the epoch, so a restarted run continues from
`ray.train.get_checkpoint()` instead of starting over.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import torch
from torch import nn

from synthray.training.archs import create_model
from synthray.training.inputs import random_shift, to_input

CHECKPOINT_FILE = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop(config: dict[str, Any]) -> None:
    """`config`: arch, num_classes, epochs, batch_size (global), lr, weight_decay, shift, seed, grad_clip."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    torch.manual_seed(config["seed"])
    model = ray.train.torch.prepare_model(create_model(config["arch"], config["num_classes"]))
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    epochs = int(config["epochs"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1

    shard = ray.train.get_dataset_shard("train")
    per_worker = max(1, config["batch_size"] // world)  # keep the global batch when the worker count changes
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, epochs):
        model.train()
        aug = torch.Generator().manual_seed(config["seed"] * 1000 + epoch * 10 + ctx.get_world_rank())
        total, count = 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=per_worker, local_shuffle_buffer_size=4 * per_worker,
                                              local_shuffle_seed=config["seed"] + epoch):
            x = random_shift(to_input(batch["image"], device), config["shift"], aug)
            y = batch["label"].to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        metrics = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "lr": lr, "resumed_from_epoch": start_epoch}
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.get_world_rank() == 0:
                torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch}, os.path.join(tmp, CHECKPOINT_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
