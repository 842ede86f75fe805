"""Classification accuracy, as pure functions of labels and logits, and a trained model's predictions in this process
(tests, benchmarks); the sweep evaluates with the evaluation stage (metrics/evaluation.py)."""

from __future__ import annotations

import numpy as np
import torch

from synthray.core.artifacts import Artifact, DatasetRef, read_checked
from synthray.core.images import read_images
from synthray.core.safe_load import load_tensors
from synthray.training.archs import create_model
from synthray.training.augment import test_batch, test_geometry


def load_model(model: Artifact, weights: str = "model.pt") -> torch.nn.Module:
    """The trained network: `model.pt` is the best epoch on the selection split, `last.pt` the final epoch."""
    net = create_model(model.spec["arch"], model.spec["num_classes"])
    state = load_tensors(read_checked(model.file(weights)), model.file(weights))
    net.load_state_dict(state)
    return net.eval()


def predict(model: Artifact, images: DatasetRef, weights: str = "model.pt", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and logits (N, num_classes) of `model` on every usable image of `images`.

    Images go through the model's own recipe test transform (resize, centre crop, normalise).
    """
    from synthray.core.images import decode_array

    recipe = model.spec["recipe"]
    size, geometry = int(recipe["test_transform"]["resize"]), test_geometry(recipe)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = load_model(model, weights).to(device)
    table = read_images(images.uri, columns=["image", "label"])
    rng = np.random.default_rng(int(recipe["seed"]))  # random test crops (texture probe), fixed across runs
    logits = []
    with torch.inference_mode():
        for start in range(0, len(table), batch_size):
            chunk = table["image"].iloc[start:start + batch_size]
            x = torch.from_numpy(np.stack([decode_array(b, size, geometry) for b in chunk])).to(device)
            logits.append(net(test_batch(x, recipe, rng)).float().cpu().numpy())
    return table["label"].to_numpy(), np.concatenate(logits)


def top1(labels: np.ndarray, logits: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit is the label."""
    return float((logits.argmax(axis=1) == labels).mean())


TOP_K = 5  # the `_top5` columns


def topk_hits(labels: np.ndarray, logits: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: whether each row's label is among its k largest logits (labels (N,), logits (N, C))."""
    k = min(k, logits.shape[1])
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (best == labels[:, None]).any(axis=1)


def topk(labels: np.ndarray, logits: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits (labels (N,), logits (N, C))."""
    return float(topk_hits(labels, logits, k).mean())


def per_class(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> list[float | None]:
    """Top-1 accuracy of each class (None where the set has no image of it)."""
    hits = logits.argmax(axis=1) == labels
    return [float(hits[labels == c].mean()) if (labels == c).any() else None for c in range(num_classes)]


def accuracy(model: Artifact, images: DatasetRef, weights: str = "model.pt") -> float:
    return top1(*predict(model, images, weights))
