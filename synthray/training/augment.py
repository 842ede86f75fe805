"""A recipe's train and test transforms as batched tensor ops on the training device.

Random parameters are drawn on the host from a numpy `Generator` (a seed gives the same augmentation on CPU and
GPU, and a resumed epoch re-derives them), sent to the device in one copy from pinned memory (`upload`: a copy
from pageable memory waits for every kernel queued before it, and a step made ten of them), then applied to the
whole batch at once: one `grid_sample` for RandomResizedCrop + flip, one grouped convolution for the blurs, the same
ops for any batch size (`bench/step_ops.py` counts them). A per-image Python loop or a CPU PIL pipeline
would cap a GPU that trains a ResNet-50 at ~4,000 img/s. The study's own crop (`random_resized_crop.antialias`,
and any native-size input) is the exception: one antialiased resize per image, as torchvision does it.

Shapes: images arrive as uint8 (N, H, W, 3), or a list of (H_i, W_i, 3) at native sizes, and leave as normalised
float (N, 3, S, S).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], on the images' device."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


@lru_cache(maxsize=64)
def constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A float32 (len(values),) tensor on `device`, made once: `torch.tensor(list, device=cuda)` in each step is a
    copy from pageable memory, which waits for the GPU's queue."""
    return torch.tensor(values, device=device)


def upload(host: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Host arrays or tensors (any dtypes and shapes) -> the same values on `device`, in one host-to-device copy:
    their bytes are packed into one pinned buffer (on CUDA), copied `non_blocking`, and viewed back on the device,
    so a step makes one asynchronous copy, whatever the number of parameters. Bit-exact: only bytes move. The same
    packing runs on CPU, where the copy is a no-op."""
    tensors = {k: torch.as_tensor(v).contiguous() for k, v in host.items()}
    empty = {k: torch.empty(t.shape, dtype=t.dtype, device=device) for k, t in tensors.items() if not t.numel()}
    tensors = {k: t for k, t in tensors.items() if k not in empty}  # an empty batch's: nothing to copy, no byte view
    if not tensors:
        return empty
    parts, spans, offset = [], {}, 0
    for name, t in tensors.items():
        raw = t.reshape(-1).view(torch.uint8)
        spans[name] = (offset, raw.numel(), t.dtype, t.shape)
        pad = -raw.numel() % 16  # every view starts 16-byte aligned, as `.view(dtype)` needs
        parts += [raw, torch.zeros(pad, dtype=torch.uint8)] if pad else [raw]
        offset += raw.numel() + pad
    pinned = device.type == "cuda"  # the caching host allocator keeps the block until the copy has run
    packed = torch.cat(parts, out=torch.empty(offset, dtype=torch.uint8, pin_memory=pinned))
    packed = packed.to(device, non_blocking=True)
    return {**empty, **{name: packed[o:o + size].view(dtype).view(shape) for name, (o, size, dtype, shape) in spans.items()}}


def _on(values: Any, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`values` on x's device: a tensor already there (from `upload`) as it is, host values copied."""
    if isinstance(values, torch.Tensor) and values.device == x.device and dtype in (None, values.dtype):
        return values
    return torch.as_tensor(values, dtype=dtype, device=x.device)


def normalize(x: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    mean = constant(tuple(spec["mean"]), x.device).view(1, 3, 1, 1)
    std = constant(tuple(spec["std"]), x.device).view(1, 3, 1, 1)
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


def crop_theta(boxes: np.ndarray, flip: np.ndarray, height: int, width: int) -> torch.Tensor:
    """The (n, 2, 3) affine matrices, on the host, that `sample_crop` maps each box of an H x W image with."""
    b = torch.as_tensor(boxes, dtype=torch.float32)
    sx = b[:, 3] / width * torch.where(torch.as_tensor(flip), -1.0, 1.0)
    sy = b[:, 2] / height
    cx = (2 * b[:, 1] + b[:, 3]) / width - 1  # box centre in [-1, 1] (align_corners=False coordinates)
    cy = (2 * b[:, 0] + b[:, 2]) / height - 1
    zero = torch.zeros(len(b))
    return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)


def sample_crop(x: torch.Tensor, theta: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resample (N, C, H, W) through `crop_theta`'s matrices to (N, C, size, size): one `grid_sample` call."""
    grid = F.affine_grid(_on(theta, x), [len(x), 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False).clamp_(0, 1)


def resized_crop(x: torch.Tensor, boxes: np.ndarray, size: int, flip: np.ndarray, mode: str = "bicubic") -> torch.Tensor:
    """Crop each image to its box, resize to (size, size) and mirror where `flip`: one `grid_sample` call."""
    return sample_crop(x, crop_theta(boxes, flip, x.shape[2], x.shape[3]), size, mode)


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
    rows = (_on(tops, x)[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (_on(lefts, x)[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
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
    return (x * constant(LUMA, x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def blur_weights(sigma: np.ndarray, kernel: int, channels: int) -> torch.Tensor:
    """(N * channels, kernel) normalised Gaussian taps of std sigma[i] for image i's channels, on the host."""
    taps = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    weights = torch.exp(-taps[None] ** 2 / (2 * torch.as_tensor(sigma, dtype=torch.float32)[:, None] ** 2))
    return (weights / weights.sum(1, keepdim=True)).repeat_interleave(channels, 0)


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray, kernel: int) -> torch.Tensor:
    """Blur image i with a `kernel`-tap Gaussian of std sigma[i]: a separable grouped conv, reflect padding."""
    return blur(x, blur_weights(sigma, kernel, x.shape[1]))


def blur(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`gaussian_blur` with its (N*C, k) taps given (host or device)."""
    n, c, h, w = x.shape
    weights = _on(weights, x)
    kernel = weights.shape[1]
    half = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, weights[:, None, None, :], groups=n * c)
    y = F.conv2d(y, weights[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def one_of(x: torch.Tensor, ops: list[str], spec: dict[str, Any], rng: np.random.Generator) -> torch.Tensor:
    """Apply exactly one of `ops` (grayscale, solarize, gaussian_blur) to each image, chosen uniformly."""
    if not ops:
        return x
    choice, weights = draw_one_of(rng, len(x), ops, spec, x.shape[1])
    return apply_one_of(x, ops, spec, choice, weights)


def draw_one_of(rng: np.random.Generator, n: int, ops: list[str], spec: dict[str, Any],
                channels: int = 3) -> tuple[np.ndarray, torch.Tensor | None]:
    """`one_of`'s draws: each image's op (n,), and the blur taps (`blur_weights`) when gaussian_blur is an op."""
    choice = rng.integers(0, len(ops), n)
    blur_spec = spec["gaussian_blur"]
    sigma = rng.uniform(blur_spec["sigma"][0], blur_spec["sigma"][1], n)  # drawn even when unused: a fixed RNG stream
    weights = blur_weights(sigma, int(blur_spec["kernel"]), channels) if "gaussian_blur" in ops else None
    return choice, weights


def apply_one_of(x: torch.Tensor, ops: list[str], spec: dict[str, Any], choice: Any, weights: Any) -> torch.Tensor:
    """`one_of` with its draws given: every op on the whole batch, each image keeping its own (a constant number of
    kernels, whatever the batch)."""
    choice = _on(choice, x).view(-1, 1, 1, 1)
    out = x
    for i, op in enumerate(ops):
        if op == "grayscale":
            y = grayscale(x).expand_as(x)
        elif op == "solarize":
            y = torch.where(x >= spec["solarize_threshold"], 1.0 - x, x)
        elif op == "gaussian_blur":
            y = blur(x, weights)
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
    f = _on(factors, x, x.dtype).view(len(x), 3, 1, 1, 1).unbind(1)

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
    chosen = _on(order, x).view(len(x), 3, 1, 1, 1)
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
    native sizes (`recipe.load_size: native`), -> normalised float (N, 3, S, S).

    Every random parameter is drawn first, in the order the draws always had (a seed's augmentation is that of the
    stored keys), and goes to the device in one `upload`; then the ops run on the whole batch."""
    t = recipe["train_transform"]
    native = isinstance(images, list)
    n = len(images)
    device = (images[0].device if images else torch.device("cpu")) if native else images.device
    flip = rng.random(n) < float(t["hflip"])
    host: dict[str, Any] = {}  # the step's random parameters, bound for the device
    crop = t.get("random_resized_crop")
    if crop:
        height, width = native_sizes(images) if native else (images.shape[1], images.shape[2])
        boxes = crop_boxes(rng, n, height, width, crop["scale"], crop["ratio"])
        per_image = native or crop.get("antialias", False)  # torchvision's crop then resize, the study's
        if not per_image:  # synthray's earlier one-call crop (no antialiasing): the models keyed before the setting
            host["theta"] = crop_theta(boxes, flip, height, width)
    else:
        height, width = images.shape[1], images.shape[2]
        if t.get("random_crop"):
            side = int(t["random_crop"])
            host["crop"] = np.stack([rng.integers(0, height - side + 1, n), rng.integers(0, width - side + 1, n)])
            height = width = side
        pad = int(t.get("random_shift") or 0)
        if pad > 0:
            host["shift"] = np.stack([rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)])
        host["hflip"] = flip
    if t.get("vflip"):
        host["vflip"] = rng.random(n) < float(t["vflip"])
    ops = list(t.get("one_of") or [])
    if ops:
        host["choice"], weights = draw_one_of(rng, n, ops, t)
        if weights is not None:
            host["blur"] = weights
    if t.get("color_jitter"):
        host["jitter"] = torch.as_tensor(jitter_factors(rng, list(t["color_jitter"]), n), dtype=torch.float32)
        if t.get("color_jitter_order", "fixed") == "random":
            host["order"] = jitter_order(rng, n)
    p = upload(host, device)

    x = [to_unit(img[None])[0] for img in images] if native else to_unit(images)
    if crop and "theta" in p:
        x = sample_crop(x, p["theta"], int(crop["size"]), crop.get("interpolation", "bicubic"))
    elif crop:
        x = resized_crops(x, boxes, int(crop["size"]), flip, crop.get("interpolation", "bicubic"),
                          bool(crop.get("antialias", False)))
    else:
        if "crop" in p:
            x = gather_crops(x, p["crop"][0], p["crop"][1], height, width)
        if "shift" in p:
            padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
            x = gather_crops(padded, p["shift"][0], p["shift"][1], height, width)
        x = torch.where(p["hflip"].view(-1, 1, 1, 1), x.flip(-1), x)
    if "vflip" in p:
        x = torch.where(p["vflip"].view(-1, 1, 1, 1), x.flip(-2), x)
    if ops:
        x = apply_one_of(x, ops, t, p["choice"], p.get("blur"))
    if "jitter" in p:
        x = color_jitter(x, p["jitter"], p.get("order"))
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
