"""Probe transforms: each turns one RGB image (H, W, 3) uint8 into its view, the same op on synthetic and real.

`lowpass` and `highpass` filter each channel with a box mask on the centred 2-D FFT. The cutoff is a fraction
of Nyquist: low-pass keeps |f_x|, |f_y| <= cutoff * 0.5 cycles/pixel; high-pass removes exactly that box.
"""

from __future__ import annotations

import numpy as np

from synthray.registry import Registry

PROBES = Registry("probe")


@PROBES.register("rgb")
def rgb(image: np.ndarray) -> np.ndarray:
    """Identity: the classifier sees the images as they are."""
    return image


@PROBES.register("texture")
def texture(image: np.ndarray) -> np.ndarray:
    """Identity on the pixels: the texture probe lives in training, where BagNet sees only small random patches
    (`probes.texture.recipe`), so shape beyond its receptive field cannot be used."""
    return image


@PROBES.register("depth")
def depth(image: np.ndarray, model: str, batch_size: int = 16) -> np.ndarray:
    """Monocular depth of one image from the depth model in folder `model` (loaded once per process).

    For single images; the view stage batches whole shards through `synthray.probes.depth.depth_worker` on an
    actor pool instead (one GPU each on a cluster).
    """
    from synthray.probes.depth import estimator

    return estimator(model, batch_size)([image])[0]


TEXTURE_ARCHS = ("bagnet9", "bagnet17", "bagnet33")
IDENTITY_PROBES = ("rgb", "texture")  # their views are the source images: nothing to compute or store


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


@PROBES.register("lowpass")
def lowpass(image: np.ndarray, cutoff: float = 0.2) -> np.ndarray:
    """Keep only frequencies inside the box: global shape and colour, no fine detail."""
    return rescale(fft_filter(image, box_mask(image.shape[0], image.shape[1], cutoff)))


@PROBES.register("highpass")
def highpass(image: np.ndarray, cutoff: float = 0.8) -> np.ndarray:
    """Remove the box: only the finest detail and noise remain."""
    return rescale(fft_filter(image, ~box_mask(image.shape[0], image.shape[1], cutoff)))
