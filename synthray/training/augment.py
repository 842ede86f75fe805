"""A recipe's train and test transforms as batched tensor ops on the training device.

Random parameters are drawn on the host from a numpy `Generator` (a seed gives the same augmentation on CPU and
GPU, and a resumed epoch re-derives them), then applied to the whole batch at once: one `grid_sample` for
RandomResizedCrop + flip, one grouped convolution for the blurs. A per-image Python loop or a CPU PIL pipeline
would cap a GPU that trains a ResNet-50 at ~4,000 img/s. The study's own crop (`random_resized_crop.antialias`,
and any native-size input) is the exception: one antialiased resize per image, as torchvision does it.

Shapes: images arrive as uint8 (N, H, W, 3), or a list of (H_i, W_i, 3) at native sizes, and leave as normalised
float (N, 3, S, S).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], on the images' device."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(spec["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def crop_boxes(rng: np.random.Generator, n: int, height: Any, width: Any, scale, ratio) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for n images at once: (n, 4) boxes top, left, h, w. `height` and
    `width`: one size for every image, or one per image ((n,) arrays: native-size inputs).

    Ten candidate boxes per image; the first that fits wins, else a centre crop clamped to the ratio range.
    """
    height = np.broadcast_to(np.asarray(height, dtype=np.int64), (n,))
    width = np.broadcast_to(np.asarray(width, dtype=np.int64), (n,))
    area = (height * width)[:, None]
    target = area * rng.uniform(scale[0], scale[1], (n, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    w = np.round(np.sqrt(target * aspect)).astype(int)
    h = np.round(np.sqrt(target / aspect)).astype(int)
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    top = (rng.random(n) * (height - h + 1)).astype(int)
    left = (rng.random(n) * (width - w + 1)).astype(int)
    boxes = np.stack([top, left, h, w], axis=1)
    # The fallback, a centre crop of the whole image clamped to the ratio range (python's round, as torchvision's).
    in_ratio = width / height
    fw = np.where(in_ratio < ratio[0], width, np.where(in_ratio > ratio[1], [round(x * ratio[1]) for x in height], width))
    fh = np.where(in_ratio < ratio[0], [round(x / ratio[0]) for x in width], height)
    fallback = np.stack([(height - fh) // 2, (width - fw) // 2, fh, fw], axis=1)
    missed = ~fits.any(axis=1)
    boxes[missed] = fallback[missed]
    return boxes


def resized_crop(x: torch.Tensor, boxes: np.ndarray, size: int, flip: np.ndarray, mode: str = "bicubic") -> torch.Tensor:
    """Crop each image to its box, resize to (size, size) and mirror where `flip`: one `grid_sample` call."""
    n, _, height, width = x.shape
    b = torch.as_tensor(boxes, dtype=torch.float32)
    sx = b[:, 3] / width * torch.where(torch.as_tensor(flip), -1.0, 1.0)
    sy = b[:, 2] / height
    cx = (2 * b[:, 1] + b[:, 3]) / width - 1  # box centre in [-1, 1] (align_corners=False coordinates)
    cy = (2 * b[:, 0] + b[:, 2]) / height - 1
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False).clamp_(0, 1)


def resized_crops(images: list[torch.Tensor] | torch.Tensor, boxes: np.ndarray, size: int, flip: np.ndarray,
                  mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """torchvision's `resized_crop` + horizontal flip, image by image: float (3, H_i, W_i) images in [0, 1] (a list
    of any sizes, or an (N, 3, H, W) batch) -> (N, 3, size, size). Each box is cut, then resized with
    `F.interpolate(antialias=...)`, which widens the kernel when shrinking as Pillow and torchvision v2 do (the
    batched `grid_sample` samples a shrunk crop without a low-pass first, so high frequencies alias). Not clamped:
    torchvision leaves a float image's bicubic overshoot, and the colour jitter clamps later. One interpolate call
    per image: a kernel per image is the price of native sizes."""
    out = []
    for img, (top, left, h, w), mirrored in zip(images, boxes.tolist(), flip.tolist()):
        crop = img[None, :, top:top + h, left:left + w]
        crop = F.interpolate(crop, size=(size, size), mode=mode, align_corners=False if mode != "nearest" else None,
                             antialias=antialias and mode in ("bilinear", "bicubic"))
        out.append(crop.flip(-1) if mirrored else crop)
    if not out:
        return torch.zeros((0, 3, size, size))
    return torch.cat(out)


def gather_crops(x: torch.Tensor, tops: np.ndarray, lefts: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Crop image i at (tops[i], lefts[i]) to height x width, all images in one indexing op (no resampling)."""
    n, c = x.shape[:2]
    rows = (torch.as_tensor(tops, device=x.device)[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (torch.as_tensor(lefts, device=x.device)[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    index = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return x[index, channel, rows, cols]


def random_shift(x: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """Translate each image by up to `pad` px (reflect padding, then a random crop of the original size)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return gather_crops(padded, rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n), h, w)


def random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A size x size crop of each image at a uniformly random position (the texture probe's patches)."""
    n, _, h, w = x.shape
    return gather_crops(x, rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n), size, size)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> luma (N, 1, H, W)."""
    return (x * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray, kernel: int) -> torch.Tensor:
    """Blur image i with a `kernel`-tap Gaussian of std sigma[i]: a separable grouped conv, reflect padding."""
    n, c, h, w = x.shape
    taps = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    weights = torch.exp(-taps[None] ** 2 / (2 * torch.as_tensor(sigma, dtype=torch.float32)[:, None] ** 2))
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.device)  # (N*C, k)
    half = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, weights[:, None, None, :], groups=n * c)
    y = F.conv2d(y, weights[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def one_of(x: torch.Tensor, ops: list[str], spec: dict[str, Any], rng: np.random.Generator) -> torch.Tensor:
    """Apply exactly one of `ops` (grayscale, solarize, gaussian_blur) to each image, chosen uniformly."""
    if not ops:
        return x
    choice = torch.as_tensor(rng.integers(0, len(ops), len(x)), device=x.device).view(-1, 1, 1, 1)
    blur = spec["gaussian_blur"]
    sigma = rng.uniform(blur["sigma"][0], blur["sigma"][1], len(x))  # drawn even when unused: a fixed RNG stream
    out = x
    for i, op in enumerate(ops):
        if op == "grayscale":
            y = grayscale(x).expand_as(x)
        elif op == "solarize":
            y = torch.where(x >= spec["solarize_threshold"], 1.0 - x, x)
        elif op == "gaussian_blur":
            y = gaussian_blur(x, sigma, int(blur["kernel"]))
        else:
            raise ValueError(f"unknown augmentation '{op}' in train_transform.one_of; choices: grayscale, solarize, gaussian_blur")
        out = torch.where(choice == i, y, out)
    return out


def jitter_factors(rng: np.random.Generator, strength: list[float], n: int) -> np.ndarray:
    """(n, 3) brightness, contrast and saturation factors, each from [max(0, 1 - s), 1 + s]."""
    return np.stack([rng.uniform(max(0.0, 1 - s), 1 + s, n) for s in strength], axis=1)


def color_jitter(x: torch.Tensor, factors: np.ndarray, order: np.ndarray | None = None) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast, adjust_saturation per image, each clamped to [0, 1]: in that
    fixed order, or image i in the order `order[i]` ((n, 3) permutations of 0 brightness, 1 contrast, 2 saturation:
    torchvision's ColorJitter draws one per call, so per image in the study's Dataset). A random order computes
    the three adjustments at each of the three positions and keeps, per image, the one its order names: nine cheap
    element-wise ops, the same number of kernels for any batch."""
    f = torch.as_tensor(factors, dtype=x.dtype, device=x.device).view(len(x), 3, 1, 1, 1).unbind(1)

    def adjust(x: torch.Tensor, which: int) -> torch.Tensor:
        if which == 0:
            return (x * f[0]).clamp(0, 1)
        if which == 1:
            mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
            return (f[1] * x + (1 - f[1]) * mean).clamp(0, 1)
        return (f[2] * x + (1 - f[2]) * grayscale(x)).clamp(0, 1)

    if order is None:
        for which in range(3):
            x = adjust(x, which)
        return x
    chosen = torch.as_tensor(order, device=x.device).view(len(x), 3, 1, 1, 1)
    for position in range(3):
        out = x
        for which in range(3):
            out = torch.where(chosen[:, position] == which, adjust(x, which), out)
        x = out
    return x


def jitter_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) uniformly random permutations of the three colour adjustments, one per image."""
    return np.argsort(rng.random((n, 3)), axis=1)


def native_sizes(images: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([img.shape[0] for img in images]), np.array([img.shape[1] for img in images])


def train_batch(images: torch.Tensor | list[torch.Tensor], recipe: dict[str, Any], rng: np.random.Generator) -> torch.Tensor:
    """The recipe's training augmentation: uint8 (N, H, W, 3), or a list of N uint8 (H_i, W_i, 3) images at their
    native sizes (`recipe.load_size: native`), -> normalised float (N, 3, S, S)."""
    t = recipe["train_transform"]
    native = isinstance(images, list)
    x = [to_unit(img[None])[0] for img in images] if native else to_unit(images)
    flip = rng.random(len(x)) < float(t["hflip"])
    crop = t.get("random_resized_crop")
    if crop:
        height, width = native_sizes(images) if native else (x.shape[2], x.shape[3])
        boxes = crop_boxes(rng, len(x), height, width, crop["scale"], crop["ratio"])
        mode = crop.get("interpolation", "bicubic")
        if native or crop.get("antialias", False):  # torchvision's crop then resize, the study's
            x = resized_crops(x, boxes, int(crop["size"]), flip, mode, bool(crop.get("antialias", False)))
        else:  # synthray's earlier one-call crop (no antialiasing): the models keyed before the setting
            x = resized_crop(x, boxes, int(crop["size"]), flip, mode)
    else:
        if t.get("random_crop"):
            x = random_crop(x, int(t["random_crop"]), rng)
        x = random_shift(x, int(t.get("random_shift") or 0), rng)
        x = torch.where(torch.as_tensor(flip, device=x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    if t.get("vflip"):
        vflip = torch.as_tensor(rng.random(len(x)) < float(t["vflip"]), device=x.device).view(-1, 1, 1, 1)
        x = torch.where(vflip, x.flip(-2), x)
    x = one_of(x, list(t.get("one_of") or []), t, rng)
    if t.get("color_jitter"):
        factors = jitter_factors(rng, list(t["color_jitter"]), len(x))
        order = jitter_order(rng, len(x)) if t.get("color_jitter_order", "fixed") == "random" else None
        x = color_jitter(x, factors, order)
    return normalize(x, recipe["normalize"])


def test_batch(images: torch.Tensor, recipe: dict[str, Any], rng: np.random.Generator | None = None,
               positions: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """The recipe's test transform on images already decoded at `test_transform.resize`: a crop, then normalise.

    The crop is centred, or at a random position when `crop_at: random` (the texture probe tests on random
    patches; `rng` then fixes them, default seed: the recipe's; `positions`: (tops, lefts), one each per image,
    drawn by the caller so that they do not depend on how the images are batched).
    """
    x = to_unit(images)
    spec = recipe["test_transform"]
    crop = int(spec["crop"])
    if spec.get("crop_at", "center") == "random" and positions is not None:
        x = gather_crops(x, positions[0], positions[1], crop, crop)
    elif spec.get("crop_at", "center") == "random":
        x = random_crop(x, crop, rng if rng is not None else np.random.default_rng(int(recipe["seed"])))
    else:
        top, left = centre_offset(x.shape[2], crop, spec), centre_offset(x.shape[3], crop, spec)
        x = x[:, :, top:top + crop, left:left + crop]
    return normalize(x, recipe["normalize"])


def test_geometry(recipe: dict[str, Any]) -> str:
    """The recipe's `test_transform.geometry` (`images.GEOMETRIES`); recipes keyed before it existed: `round`."""
    return str(recipe["test_transform"].get("geometry", "round"))


def centre_offset(length: int, crop: int, spec: dict[str, Any]) -> int:
    """Where a centred crop starts: torchvision's int(round(margin / 2)), or the earlier floor (geometry `round`)."""
    return int(round((length - crop) / 2.0)) if spec.get("geometry", "round") == "torchvision" else (length - crop) // 2


def cutmix(x: torch.Tensor, rng: np.random.Generator, alpha: float) -> tuple[torch.Tensor, float]:
    """Paste one random box from the batch reversed into every image (timm's CutMix); returns (x, lam).

    The loss is then lam * CE(out, y) + (1 - lam) * CE(out, y.flip(0)), lam being the unpasted area fraction.
    """
    h, w = x.shape[2:]
    lam = float(rng.beta(alpha, alpha))
    cut = math.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
    return x, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def output_size(recipe: dict[str, Any]) -> int:
    """The side of the model's input square, which train and test transforms must agree on."""
    t = recipe["train_transform"]
    if t.get("random_resized_crop"):
        return int(t["random_resized_crop"]["size"])
    return int(t.get("random_crop") or recipe["load_size"])
