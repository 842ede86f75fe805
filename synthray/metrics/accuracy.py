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


def accuracy(model: Artifact, images: Path, image_size: int) -> float:
    return top1(*predict(model, images, image_size))
