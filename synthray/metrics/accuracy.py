"""Classification accuracy of a trained model on a dataset folder (Synth->Real, Real->Synth, Real->Real)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synthray.artifacts import Artifact
from synthray.images import read_images
from synthray.training.archs import create_model
from synthray.training.inputs import to_input


def load_model(model: Artifact) -> torch.nn.Module:
    net = create_model(model.spec["arch"], model.spec["num_classes"])
    net.load_state_dict(torch.load(model.path / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def predict(model: Artifact, images: Path, image_size: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and logits (N, num_classes) of `model` on every image in the folder `images`."""
    from synthray.images import decode_array

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = load_model(model).to(device)
    table = read_images(images, columns=["image", "label"])
    logits = []
    with torch.inference_mode():
        for start in range(0, len(table), batch_size):
            chunk = table["image"].iloc[start:start + batch_size]
            x = torch.from_numpy(np.stack([decode_array(b, image_size) for b in chunk]))
            logits.append(net(to_input(x, device)).float().cpu().numpy())
    return table["label"].to_numpy(), np.concatenate(logits)


def top1(labels: np.ndarray, logits: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit is the label."""
    return float((logits.argmax(axis=1) == labels).mean())


def topk(labels: np.ndarray, logits: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits (labels (N,), logits (N, C))."""
    k = min(k, logits.shape[1])
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


def per_class(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> list[float | None]:
    """Top-1 accuracy of each class (None where the set has no image of it)."""
    hits = logits.argmax(axis=1) == labels
    return [float(hits[labels == c].mean()) if (labels == c).any() else None for c in range(num_classes)]


def accuracy(model: Artifact, images: Path, image_size: int) -> float:
    return top1(*predict(model, images, image_size))


def accuracy_report(model: Artifact, images: Path, image_size: int, prefix: str) -> dict[str, object]:
    """`<prefix>_acc`, `<prefix>_top5` and `<prefix>_per_class` (a list, label order) of one model on one set."""
    labels, logits = predict(model, images, image_size)
    return {f"{prefix}_acc": top1(labels, logits), f"{prefix}_top5": topk(labels, logits, 5),
            f"{prefix}_per_class": per_class(labels, logits, logits.shape[1])}
