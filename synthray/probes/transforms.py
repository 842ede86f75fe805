"""Probes: each is one record (`Probe`) of how synthetic and real images are seen, the same op on both.

A probe is either a per-image transform of one RGB image (H, W, 3) uint8 into its view, or a model run on an
actor pool (depth), plus the training-recipe changes it implies (config: `probes.<name>.recipe`) and the
architectures it admits. `rgb` and `texture` are identities: their views are the source images.

`lowpass` and `highpass` filter each channel with a box mask on the centred 2-D FFT. The cutoff is a fraction
of Nyquist: low-pass keeps |f_x|, |f_y| <= cutoff * 0.5 cycles/pixel; high-pass removes exactly that box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from synthray.registry import Registry


@dataclass(frozen=True)
class Probe:
    """`transform(image, **params) -> view` for one image; `identity`: the view is the source itself (nothing is
    computed or stored); `worker(params, models) -> work(task)`: a model-based probe's shard worker for an actor
    pool, whose model is `params["model"]`; `archs`: the only architectures it admits (None: any)."""

    name: str
    transform: Callable[..., np.ndarray]
    identity: bool = False
    worker: Callable[..., Callable[[dict], dict]] | None = None
    archs: tuple[str, ...] | None = None

    def __call__(self, image: np.ndarray, **params: Any) -> np.ndarray:
        return self.transform(image, **params)


PROBES = Registry("probe")
TEXTURE_ARCHS = ("bagnet9", "bagnet17", "bagnet33")


def _register(probe: Probe) -> Probe:
    PROBES.register(probe.name)(probe)
    return probe


def identity(image: np.ndarray) -> np.ndarray:
    return image


# The classifier sees the images as they are.
_register(Probe("rgb", identity, identity=True))
# Identity on the pixels: the texture probe lives in training, where BagNet sees only small random patches
# (`probes.texture.recipe`), so shape beyond its receptive field cannot be used.
_register(Probe("texture", identity, identity=True, archs=TEXTURE_ARCHS))


def depth(image: np.ndarray, model: str, batch_size: int = 16, **_: Any) -> np.ndarray:
    """Monocular depth of one image from the depth model in folder `model` (loaded once per process).

    For single images; the view stage batches whole shards through `synthray.probes.depth.depth_worker` on an
    actor pool instead (one GPU each on a cluster).
    """
    from synthray.probes.depth import estimator

    return estimator(model, batch_size)([image])[0]


def _depth_worker(params: dict[str, Any], models: Any) -> Callable[[dict], dict]:
    from synthray.probes.depth import depth_worker

    return depth_worker(models.locate(str(params["model"]), "depth"), int(params.get("batch_size", 16)))


_register(Probe("depth", depth, worker=_depth_worker))


def box_mask(height: int, width: int, cutoff: float) -> np.ndarray:
    """Boolean (H, W) mask, in centred (fftshift) order, of frequencies inside the low-pass box."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must be a fraction of Nyquist in (0, 1], got {cutoff}")
    fy = np.fft.fftshift(np.fft.fftfreq(height))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(width))[None, :]
    limit = cutoff * 0.5 + 1e-12  # Nyquist is 0.5 cycles/pixel
    return (np.abs(fy) <= limit) & (np.abs(fx) <= limit)


def fft_filter(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Filter each channel of (H, W, C) with a centred boolean mask; returns float64 (H, W, C), unscaled."""
    spectrum = np.fft.fftshift(np.fft.fft2(image.astype(np.float64), axes=(0, 1)), axes=(0, 1))
    spectrum *= keep[:, :, None]
    return np.real(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(0, 1)), axes=(0, 1)))


def rescale(channels: np.ndarray) -> np.ndarray:
    """Min-max rescale each channel to 0..255 uint8 (a flat channel becomes 0)."""
    lo = channels.min(axis=(0, 1), keepdims=True)
    span = channels.max(axis=(0, 1), keepdims=True) - lo
    out = np.where(span > 1e-9, (channels - lo) / np.maximum(span, 1e-9), 0.0)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def lowpass(image: np.ndarray, cutoff: float = 0.2) -> np.ndarray:
    """Keep only frequencies inside the box: global shape and colour, no fine detail."""
    return rescale(fft_filter(image, box_mask(image.shape[0], image.shape[1], cutoff)))


def highpass(image: np.ndarray, cutoff: float = 0.8) -> np.ndarray:
    """Remove the box: only the finest detail and noise remain."""
    return rescale(fft_filter(image, ~box_mask(image.shape[0], image.shape[1], cutoff)))


_register(Probe("lowpass", lowpass))
_register(Probe("highpass", highpass))
