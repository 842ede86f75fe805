"""Probes: each is one record (`Probe`) of how synthetic and real images are seen, the same op on both.

A probe is either a per-image transform of one RGB image (H, W, 3) uint8 into its view, or a model run on an
actor pool (depth), plus the training-recipe changes it implies (config: `probes.<name>.recipe`) and the
architectures it admits. `rgb` and `texture` are identities: their views are the source images.

`lowpass` and `highpass` filter each RGB channel with a box mask on the centred 2-D FFT of the image as given
(`size: null`, the stored resolution; an int first resizes it to a square of that size, bicubic, as the study's
`--resize_size`), then min-max rescale each channel to 0..255. Two masks (`mask`):
- `centred` (synthray's): symmetric around DC; the cutoff is a fraction of Nyquist: low-pass keeps |f_x|, |f_y| <=
  cutoff * 0.5 cycles/pixel, high-pass removes exactly that box.
- `study`: the study's box, transcribed from its `classifier/bp_filter.py`: half-sizes int(c * H//2) x int(c * W//2)
  and the slice `[cy-ry:cy+ry, cx-rx:cx+rx]`, one bin wider below DC than above; high-pass zeroes that box with
  c = 1 - cutoff (cutoff 0.1 keeps the outer band).
`clip: true` clips the inverse FFT's real part to the input's range first, as the study's `.real.clip(0, 1)` does.
The study stores that float array (`.npy`) and min-max rescales each channel at load, `(x - min) / (max - min + 1e-8)`;
synthray stores the rescaled view as a lossless uint8 PNG, so the training pipeline sees it within 1/510 of the
study's float (the 1e-8 is left out: it moves no value by 1/255 unless a channel is flat to float noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthray.core.registry import Registry, SynthrayError
from synthray.probes.checks import check_flag, check_size
from synthray.probes.depth import DEPTH_DEFAULTS, check_depth, depth_options


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
    # check(name, params): a bad `probes.<name>` value fails in one line before launch.
    check: Callable[[str, dict[str, Any]], None] | None = None
    # Parameters added after views were first keyed, at the values that compute what was computed before they
    # existed: such a value stays out of the view's key, so existing views keep their keys.
    legacy: dict[str, Any] = field(default_factory=dict)

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


def depth(image: np.ndarray, model: str, batch_size: int = 16, **params: Any) -> np.ndarray:
    """Monocular depth of one image from the depth model in folder `model` (loaded once per process).

    For single images; the view stage batches whole shards through `synthray.probes.depth.depth_worker` on an
    actor pool instead (one GPU each on a cluster). `params`: the options of `probes.depth` (dtype, input_size, ...).
    """
    from synthray.probes.depth import estimator

    return estimator(model, batch_size, **depth_options(params))([image])[0]


def _depth_worker(params: dict[str, Any], models: Any) -> Callable[[dict], dict]:
    from synthray.probes.depth import depth_worker

    return depth_worker(models.locate(str(params["model"]), "depth"), int(params.get("batch_size", 16)), **depth_options(params))


_register(Probe("depth", depth, worker=_depth_worker, check=check_depth, legacy=DEPTH_DEFAULTS))


FREQUENCY_MASKS = ("centred", "paper", "study")  # "study": the earlier spelling of "paper", still read
# The frequency probes' behaviour before `mask`, `clip` and `size` existed.
FREQUENCY_DEFAULTS = {"mask": "centred", "clip": False, "size": None}


def box_mask(height: int, width: int, cutoff: float) -> np.ndarray:
    """Boolean (H, W) mask, in centred (fftshift) order, of frequencies inside the low-pass box."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must be a fraction of Nyquist in (0, 1], got {cutoff}")
    fy = np.fft.fftshift(np.fft.fftfreq(height))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(width))[None, :]
    limit = cutoff * 0.5 + 1e-12  # Nyquist is 0.5 cycles/pixel
    return (np.abs(fy) <= limit) & (np.abs(fx) <= limit)


def study_mask(height: int, width: int, cutoff: float, lowpass: bool) -> np.ndarray:
    """Boolean (H, W) keep-mask, in centred order, of the study's `bandpass_filter` (classifier/bp_filter.py),
    line for line: the same Python float arithmetic, so the same int() truncation of the half-sizes."""
    if not 0.0 <= cutoff <= 1.0:  # the study asserts the same
        raise ValueError(f"cutoff must be in [0, 1], got {cutoff}")
    if not lowpass:
        cutoff = 1 - cutoff
    cy, cx = height // 2, width // 2
    ry, rx = int(cutoff * cy), int(cutoff * cx)
    box = np.zeros((height, width), dtype=bool)
    box[cy - ry:cy + ry, cx - rx:cx + rx] = True  # asymmetric: bins -ry..ry-1 around DC, as the study's slice
    return box if lowpass else ~box


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


def frequency_filter(image: np.ndarray, cutoff: float, lowpass: bool, mask: str = "centred", clip: bool = False,
                     size: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> float64 (h, w, 3) filtered channels in 0..255 units, before the rescale: the study's
    float view times 255 (it filters ToTensor's [0, 1]; the scale changes nothing but the clip bound)."""
    if size is not None:
        from PIL import Image

        # The study's `image.resize((s, s))`: PIL's default filter for RGB, bicubic, named so Pillow cannot move it.
        image = np.asarray(Image.fromarray(image).resize((int(size), int(size)), Image.BICUBIC))
    height, width = image.shape[:2]
    if mask in ("paper", "study"):
        keep = study_mask(height, width, cutoff, lowpass)
    elif mask == "centred":
        keep = box_mask(height, width, cutoff)
        keep = keep if lowpass else ~keep
    else:
        raise ValueError(f"unknown frequency mask {mask!r}; choices: {', '.join(FREQUENCY_MASKS)}")
    out = fft_filter(image, keep)
    return np.clip(out, 0.0, 255.0, out=out) if clip else out


def lowpass(image: np.ndarray, cutoff: float = 0.2, **options: Any) -> np.ndarray:
    """Keep only frequencies inside the box: global shape and colour, no fine detail."""
    return rescale(frequency_filter(image, cutoff, True, **options))


def highpass(image: np.ndarray, cutoff: float = 0.8, **options: Any) -> np.ndarray:
    """Remove the box: only the finest detail and noise remain."""
    return rescale(frequency_filter(image, cutoff, False, **options))


def check_frequency(name: str, params: dict[str, Any]) -> None:
    """`probes.lowpass` / `probes.highpass`: cutoff, mask, clip and size, each named in one line when wrong."""
    unknown = sorted(set(params) - {"cutoff", *FREQUENCY_DEFAULTS})
    if unknown:
        raise SynthrayError(f"probes.{name} has no key {unknown[0]}; keys: cutoff, {', '.join(FREQUENCY_DEFAULTS)}")
    mask = params.get("mask", "centred")
    if mask not in FREQUENCY_MASKS:
        raise SynthrayError(f"probes.{name}.mask must be one of {', '.join(FREQUENCY_MASKS)}, got {mask!r}")
    cutoff = params.get("cutoff")
    number = isinstance(cutoff, (int, float)) and not isinstance(cutoff, bool)
    # The study accepts 0 (an empty box); the centred box needs a positive fraction of Nyquist.
    if not number or not (0.0 <= cutoff <= 1.0 if mask in ("paper", "study") else 0.0 < cutoff <= 1.0):
        bounds = "[0, 1]" if mask in ("paper", "study") else "(0, 1]"
        raise SynthrayError(f"probes.{name}.cutoff must be a number in {bounds} with mask={mask}, got {cutoff!r}")
    check_flag(name, params, "clip")
    check_size(name, params, "size", "the images as stored")


_register(Probe("lowpass", lowpass, check=check_frequency, legacy=FREQUENCY_DEFAULTS))
_register(Probe("highpass", highpass, check=check_frequency, legacy=FREQUENCY_DEFAULTS))
