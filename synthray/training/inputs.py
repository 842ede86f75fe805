"""Turning stored image bytes into model inputs, shared by training and evaluation so both see the same pixels."""

from __future__ import annotations

import numpy as np
import torch

from synthray.images import decode_array

MEAN = 0.5  # images are scaled to [-1, 1]; the paper recipe's ImageNet mean/std arrives with its recipe config
STD = 0.5


def decode_images(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data batch UDF: encoded bytes -> uint8 (N, size, size, 3) arrays plus int64 labels.

    Rows the generation quality guard flagged (NaN or black images) are dropped here.
    """
    keep = batch["quality"] == "ok" if "quality" in batch else np.ones(len(batch["label"]), dtype=bool)
    images = [decode_array(b, size) for b, k in zip(batch["image"], keep) if k]
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)
    return {"image": stacked, "label": batch["label"][keep].astype(np.int64)}


def to_input(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float (N, 3, H, W) on `device`."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `pad` px (reflect padding, then a random crop): cheap augmentation for tiny images."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
