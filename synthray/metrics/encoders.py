"""Feature encoders for distribution metrics: CLIP and DINOv2 (transformers) and Inception-v3 (timm) embeddings.

An encoder loads a model from a local folder (`synthray.core.models` resolves hub ids, storage URIs and the tiny offline
twins `tiny:<kind>` to one) and maps uint8 (H, W, 3) images of any size to float32 (N, D) features. Preprocessing is the
model's own eval transform read from its processor / timm config (bicubic resize, center crop, normalise),
reimplemented in torch. On the CPU images are resized as uint8 (PIL's kernel); on a GPU the uint8 batch is uploaded
and resized, cropped and normalised there (`Preprocess.on_device`), since the CPU resize held ViT-L/14 to half the
model's speed (issue 25). Both give the same bytes but for fixed-point rounding, so they share keys (see on_device).
"""

from __future__ import annotations

import abc
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthray.core.registry import Registry, SynthrayError

FEATURE_MODELS = Registry("feature model")
# Default encoders; feature dims 768 (CLIP ViT-L/14 projection), 1024 (DINOv2-L CLS), 2048 (Inception pool). The
# study's density/coverage use CLIP ViT-B/32 (`openai/clip-vit-base-patch32`, its 512-d projected embedding) only.
DEFAULT_MODELS = {
    "clip": "openai/clip-vit-large-patch14",
    "dinov2": "facebook/dinov2-large",
    "inception": "timm/inception_v3.tv_in1k",
}
# What `save_pretrained` (transformers) and `save_for_hf` (timm) write: a config plus one of these weight files.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The tiny Inception twin is timm's CI-sized ResNet, not inception_v3: random-init inception_v3 (22M params) takes
# ~9 s for a 4-image forward at 299 px on 2 CPU cores. Loading goes through the same timm folder path either way.
TINY_TIMM_ARCH = "test_resnet"


@dataclass(frozen=True)
class Preprocess:
    """An eval transform: resize (int = shortest edge, aspect kept; (h, w) = exact), center crop, normalise."""

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str = "bicubic"

    def __call__(self, image: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 (H, W, 3) -> float32 (3, h, w) on `device`, normalised."""
        return self.batch([image], device)[0]

    def batch(self, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """uint8 (H, W, 3) images -> float32 (B, 3, h, w) on `device`, normalised; the images may differ in size
        when the transform ends in a fixed size (a crop or an exact resize). Each image is resized alone (the
        uint8 kernel is 1.7x slower on a stacked batch, measured), then the batch crosses to the device once, as
        uint8, and is normalised there: one transfer and three kernels per batch."""
        x = torch.stack([self.resized(im) for im in images])
        if device.type == "cuda":  # uint8 over the bus (a quarter of float32), asynchronously from pinned memory
            x = x.pin_memory().to(device, non_blocking=True)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x.to(device).float() / 255.0 - mean) / std

    @property
    def fixed(self) -> bool:
        """Whether every image comes out at one size (a crop or an exact resize), so any images batch together."""
        return self.crop is not None or not isinstance(self.resize, int)

    def size(self, h: int, w: int) -> tuple[int, int]:
        """The (h, w) an (h, w) image is resized to, before the crop."""
        if isinstance(self.resize, int):
            s = self.resize  # the long side is truncated, as in HF's and torchvision's shortest-edge resize
            return (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        return (int(self.resize[0]), int(self.resize[1]))

    def cropped(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is None:
            return x
        ch, cw = self.crop
        top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
        return x[..., top : top + ch, left : left + cw]

    def resized(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> uint8 (3, h, w): resized and centre-cropped, not yet normalised."""
        _check_image(image)
        x = torch.tensor(image).permute(2, 0, 1)[None]  # a copy: inputs may be read-only
        size = self.size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            # Resized as uint8 on the CPU: that kernel is PIL's (a = -0.5, rounded to bytes), so it matches the
            # reference processors within one level when upscaling too; one float pass differs by up to ~20.
            x = F.interpolate(x, size=size, mode=self.mode, antialias=True, align_corners=False)
        return self.cropped(x)[0].contiguous()

    def on_device(self, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """uint8 (H, W, 3) images -> float32 (B, 3, h, w) on `device`, normalised, every step but the upload on the
        device: the images of each size cross the bus as one uint8 tensor (from pinned memory, asynchronously),
        then are resized, cropped and normalised there. Needs a fixed output size (`fixed`).

        The resize is `resize_as_bytes`, PIL's two passes in float. Against `resized` (whose bytes equal HF's
        CLIPImageProcessor) it differs only by the uint8 kernel's fixed-point rounding: 0.04-0.3 % of pixels by one
        level, a few by two (random and smooth images, 256 -> 224 and odd sizes up and down). Tiny CLIP's features
        then move by at most 1.3e-3 (cosine 1 - 2.4e-7), a tenth of what the bf16 autocast that every GPU feature
        already runs under moves them (1.5e-2, cosine 1 - 1.1e-5; the device is in the key). So it is the same
        computation, and features stored under a key stay valid: no new setting."""
        if not self.fixed:
            raise ValueError("on_device needs a transform that ends in a fixed size (a crop or an exact resize)")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            _check_image(image)
            groups.setdefault(image.shape, []).append(i)
        pin = device.type == "cuda"  # pinned blocks come from torch's caching host allocator: cheap after the first
        parts = []
        for shape, rows in groups.items():
            host = torch.empty((len(rows), *shape), dtype=torch.uint8, pin_memory=pin)
            np.stack([images[i] for i in rows], out=host.numpy())
            x = host.to(device, non_blocking=pin).permute(0, 3, 1, 2).float().contiguous()
            parts.append(self.cropped(resize_as_bytes(x, self.size(*shape[:2]), self.mode)))
        if len(parts) == 1:
            pixels = parts[0]
        else:  # images of several sizes: put each row back in its place
            pixels = torch.empty((len(images), *parts[0].shape[1:]), device=device)
            for rows, part in zip(groups.values(), parts):
                pixels[torch.tensor(rows, device=device)] = part
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (pixels / 255.0 - mean) / std


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def resize_as_bytes(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """float (B, C, H, W) holding byte values -> float (B, C, h, w) holding byte values, antialiased.

    PIL's resize (and torch's uint8 kernel, which copies it) runs two separable passes, width first, and rounds
    and clips to bytes after each; the float kernels do the same arithmetic in one pass with no clipping between,
    so a bicubic overshoot survives into the second pass (up to ~20 levels on noise, measured). Two passes, each
    rounded, give PIL's bytes in float, on any device."""
    for step in ((x.shape[-2], size[1]), tuple(size)):
        if tuple(step) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=step, mode=mode, antialias=True, align_corners=False).round_().clamp_(0, 255)
    return x


def default_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def hf_preprocess(model: str, fallback_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Preprocess:
    """The eval transform in a transformers folder's `preprocessor_config.json`, else a plain resize to the input size."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError):  # no processor saved with the weights
        return Preprocess((fallback_size, fallback_size), None, mean, std)
    size = proc.size
    resize = size.shortest_edge if size.shortest_edge else (size.height, size.width)
    crop = (proc.crop_size.height, proc.crop_size.width) if getattr(proc, "do_center_crop", False) else None
    mode = {2: "bilinear", 3: "bicubic"}.get(int(getattr(proc, "resample", 3)), "bicubic")
    return Preprocess(resize, crop, tuple(proc.image_mean), tuple(proc.image_std), mode)


class Encoder(abc.ABC):
    """Shared batching: preprocess on the device, then `embed` under inference mode (bf16 autocast on CUDA)."""

    model: Any
    preprocess: Preprocess
    dim: int  # D, the feature width

    def __init__(self, device: str | None, batch_size: int):
        self.device = default_device(device)
        self.batch_size = batch_size

    @abc.abstractmethod
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised pixels -> (B, D) features."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32 on CPU: bf16 there is slow and changes the features

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images of any sizes -> float32 (N, D)."""
        chunks = [torch.zeros(0, self.dim, device=self.device)]
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            # On a GPU the uint8 batch crosses once and is resized and normalised there. On the CPU, the uint8
            # kernel image by image stays in cache: measured 1.7x faster than one pass over a float batch.
            with torch.inference_mode():
                if self.preprocess.fixed and self.device.type == "cuda":
                    pixels = self.preprocess.on_device(batch, self.device)
                else:
                    pixels = torch.stack([self.preprocess(im, self.device) for im in batch])
                with self.autocast():
                    # Features stay on the device until the end: no sync per batch, so the host stacks the
                    # next batch while the GPU runs this one.
                    chunks.append(self.embed(pixels).float())
        return torch.cat(chunks).cpu().numpy()


@FEATURE_MODELS.register("clip")
class ClipEncoder(Encoder):
    """CLIP image embeddings (`get_image_features`, after the projection), e.g. ViT-L/14 with D=768."""

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64):
        from transformers import CLIPModel

        super().__init__(device, batch_size)
        self.model = CLIPModel.from_pretrained(model).to(self.device).eval()
        config = self.model.config
        self.preprocess = hf_preprocess(model, config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        self.dim = config.projection_dim

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixels)
        return getattr(out, "pooler_output", out)  # transformers >= 5 returns an output whose pooler is projected


@FEATURE_MODELS.register("dinov2")
class Dinov2Encoder(Encoder):
    """DINOv2 CLS token of the last hidden state after the final layer norm (`pooler_output`), e.g. ViT-L D=1024."""

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64):
        from transformers import Dinov2Model

        super().__init__(device, batch_size)
        self.model = Dinov2Model.from_pretrained(model).to(self.device).eval()
        self.preprocess = hf_preprocess(model, self.model.config.image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.dim = self.model.config.hidden_size

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).pooler_output


@FEATURE_MODELS.register("inception")
class InceptionEncoder(Encoder):
    """Global-average-pool features of a timm model (Inception-v3: D=2048), from a timm folder or hub id.

    A folder is timm's `save_for_hf` format (config.json naming the architecture and its preprocessing, plus
    model.safetensors), which is also what a timm hub repo holds; a bare timm name uses timm's own download.
    """

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64):
        import timm
        from timm.data import resolve_model_data_config

        super().__init__(device, batch_size)
        if Path(model).is_dir():
            name = f"local-dir:{Path(model).resolve()}"
        else:
            name = f"hf-hub:{model}" if "/" in model else model
        # num_classes=0 drops the classifier, so the forward pass ends at the global average pool
        self.model = timm.create_model(name, pretrained=True, num_classes=0).to(self.device).eval()
        cfg = resolve_model_data_config(self.model)
        h, w = cfg["input_size"][1:]
        pct = cfg.get("crop_pct") or 1.0
        # timm's eval transform: resize to input / crop_pct (the short side when square), then center crop
        resize = math.floor(h / pct) if h == w else (math.floor(h / pct), math.floor(w / pct))
        mode = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.preprocess = Preprocess(resize, (h, w), tuple(cfg["mean"]), tuple(cfg["std"]), mode)
        self.dim = self.model.num_features

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


def check_encoder_folder(path: Path) -> Path:
    """`path`, resolved, if it holds a config.json and model weights; a one-line SynthrayError otherwise."""
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("model weights (model.safetensors or pytorch_model.bin)")
    if missing:
        raise SynthrayError(
            f"encoder weights not found: {path} has no {' or '.join(missing)} "
            "(a transformers save_pretrained or timm save_for_hf folder)"
        )
    return path.resolve()
