"""Distribution overlap of synthetic and real images: density and coverage (Naeem et al., 2020) on features.

Feature encoders are registered by name; `pixels` (a downsampled image, offline and instant) serves the
embedded default. Density ~1 and high coverage mean the synthetic set sits on the real manifold and spans it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthray.images import decode_array, read_images
from synthray.registry import Registry

ENCODERS = Registry("feature encoder")


@ENCODERS.register("pixels")
def pixel_features(images: list[bytes], size: int = 16) -> np.ndarray:
    """(N, size*size*3) float32 in [0, 1]: the image itself, downsampled."""
    return np.stack([decode_array(b, size).reshape(-1) for b in images]).astype(np.float32) / 255.0


def sample_images(folder: Path, max_samples: int, seed: int) -> list[bytes]:
    """Up to `max_samples` encoded images, a fixed random subset so the metric is deterministic."""
    table = read_images(folder, columns=["id", "image"]).sort_values("id", kind="stable")
    if len(table) > max_samples:
        table = table.sample(n=max_samples, random_state=seed)
    return table["image"].tolist()


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """PRDC of `fake` (M, D) against `real` (N, D), using the `prdc` reference implementation."""
    from prdc import compute_prdc

    out = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {name: float(value) for name, value in out.items()}


def distribution_metrics(real_folder: Path, fake_folder: Path, encoder: str, k: int, max_samples: int, seed: int) -> dict[str, float]:
    encode = ENCODERS.get(encoder)
    real = encode(sample_images(real_folder, max_samples, seed))
    fake = encode(sample_images(fake_folder, max_samples, seed))
    return density_coverage(real, fake, k)
