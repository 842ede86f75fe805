"""The depth probe: every image becomes the depth map a monocular depth model predicts for it.

The study's model is Depth-Anything-V2-Large (a DINOv2-L backbone with a DPT head). Its prediction is min-max
normalised per image to 0..255 and replicated to 3 channels, so the classifier sees a grey image of relative depth.
A tiny random-weight twin of the same class (`model: tiny:depth`) runs every line offline.

How, in `probes.depth` (base default first; the study's, from its labelling/extract_depth_maps.py and
depth_models.py, second):
- `dtype`: float16 | float32 on CUDA (CPU always computes in float32). The study: fp32, no autocast.
- `input_size`: null, the processor's own size (518 for Depth-Anything-V2) | an int, a square size of that many px.
- `square_crop`: false | true, centre-crop the short side's square first (`crop_to_square`).
- `output_size`: input, the map resized back (bicubic) to the image | model, `predicted_depth` as the model outputs it.
- `quantize`: round | floor, `(d * 255.0).clip(0, 255).astype(np.uint8)` truncates.
A map that is flat to float noise becomes 0 either way (the study would divide by zero).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from synthray.core.registry import SynthrayError
from synthray.probes.checks import check_flag, check_size

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Large-hf"

# A span this small relative to the depth's magnitude is float noise (e.g. bicubic resampling of a constant map),
# which min-max scaling would blow up into a full-contrast pattern; such maps become 0 instead.
FLAT_RELATIVE_SPAN = 1e-5
# The options of `probes.depth` at the values that compute what the probe computed before they existed.
DEPTH_DEFAULTS = {"dtype": "float16", "input_size": None, "square_crop": False, "output_size": "input", "quantize": "round"}
DEPTH_CHOICES = {"dtype": ("float16", "bfloat16", "float32"), "output_size": ("input", "model"), "quantize": ("round", "floor")}


def depth_options(params: dict[str, Any]) -> dict[str, Any]:
    """The estimator options among a `probes.depth` section's parameters (not model, batch_size)."""
    return {k: params[k] for k in DEPTH_DEFAULTS if k in params}


def check_depth(name: str, params: dict[str, Any]) -> None:
    """`probes.<name>` of the depth probe: each option named in one line when wrong."""
    unknown = sorted(set(params) - {"model", "batch_size", *DEPTH_DEFAULTS})
    if unknown:
        raise SynthrayError(f"probes.{name} has no key {unknown[0]}; keys: model, batch_size, {', '.join(DEPTH_DEFAULTS)}")
    for key, choices in DEPTH_CHOICES.items():
        if key in params and params[key] not in choices:
            raise SynthrayError(f"probes.{name}.{key} must be one of {', '.join(choices)}, got {params[key]!r}")
    check_flag(name, params, "square_crop")
    check_size(name, params, "input_size", "the processor's own")


def crop_to_square(image: np.ndarray) -> np.ndarray:
    """The centre square of the short side, (H, W, C) -> (s, s, C), at the study's offsets ((W - s) // 2, (H - s) // 2)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side]


class DepthEstimator:
    """A transformers depth-estimation model and its image processor on one device.

    Weights are in `dtype` on CUDA (fp16 by default: more mantissa than bf16, which matters once depth is quantised
    to 256 levels; the study's fp32 with `dtype="float32"`) and fp32 on CPU, where half precision is slow and poorly
    supported. The other options are those of the module docstring.
    """

    def __init__(self, model: str, device: str | None = None, batch_size: int = 16, dtype: str = "float16",
                 input_size: int | None = None, square_crop: bool = False, output_size: str = "input",
                 quantize: str = "round"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        check_depth("depth", {"dtype": dtype, "input_size": input_size, "square_crop": square_crop,
                              "output_size": output_size, "quantize": quantize})
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, dtype) if self.device.startswith("cuda") else torch.float32
        self.batch_size = int(batch_size)
        self.size = None if input_size is None else {"height": int(input_size), "width": int(input_size)}
        self.square_crop, self.output_size, self.quantize = square_crop, output_size, quantize
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModelForDepthEstimation.from_pretrained(model, dtype=self.dtype).to(self.device).eval()

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H, W, 3) images -> uint8 (h, w, 3) depth views, one per image, in order: (h, w) is the image's
        (its centre square's with `square_crop`), or the model's output size with `output_size="model"`.

        Images are batched by size: the processor keeps aspect ratios, so only equal sizes stack into one tensor.
        """
        views: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        images = list(images)
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"depth expects uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
            if self.square_crop:
                images[i] = image = crop_to_square(image)
            by_size.setdefault((image.shape[0], image.shape[1]), []).append(i)
        for (height, width), index in by_size.items():
            for start in range(0, len(index), self.batch_size):
                chunk = index[start:start + self.batch_size]
                for i, view in zip(chunk, self._views([images[i] for i in chunk], height, width)):
                    views[i] = view
        return views  # type: ignore[return-value]

    def _views(self, batch: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
        """One forward pass over equal-size images (B of (H, W, 3)) -> B uint8 (H, W, 3) views."""
        torch = self.torch
        # One writable copy: decoded PIL arrays are read-only, which torch.from_numpy warns about in every actor.
        batch = list(np.stack(batch))
        sized = {} if self.size is None else {"size": self.size}
        inputs = self.processor(images=batch, return_tensors="pt", input_data_format="channels_last", **sized)
        pixels = inputs["pixel_values"].to(self.device, self.dtype)  # (B, 3, h, w), h and w multiples of the patch
        with torch.inference_mode():
            depth = self.model(pixel_values=pixels).predicted_depth.float()  # (B, h, w); fp32 so fp16 does not band it
            if self.output_size == "input":  # bicubic, as the processor's own post_process_depth_estimation does
                depth = torch.nn.functional.interpolate(
                    depth[:, None], size=(height, width), mode="bicubic", align_corners=False
                )[:, 0]
            if not torch.isfinite(depth).all():
                raise SynthrayError(f"depth model produced NaN/inf in {self.dtype}; run it in float32 (probes.depth.dtype=float32)")
            lo = depth.amin(dim=(1, 2), keepdim=True)
            hi = depth.amax(dim=(1, 2), keepdim=True)
            span = hi - lo
            flat = span <= FLAT_RELATIVE_SPAN * torch.maximum(lo.abs(), hi.abs())
            scaled = torch.where(flat, torch.zeros_like(depth), (depth - lo) / torch.where(flat, torch.ones_like(span), span))
            scaled = scaled * 255.0
            scaled = scaled.floor() if self.quantize == "floor" else scaled.round()  # floor: the study's astype(uint8)
            grey = scaled.clamp(0, 255).to(torch.uint8).cpu().numpy()  # (B, h, w)
        return [np.repeat(g[:, :, None], 3, axis=2) for g in grey]


@functools.lru_cache(maxsize=2)
def estimator(model_path: str, batch_size: int = 16, **options: Any) -> DepthEstimator:
    """One loaded `DepthEstimator` per model folder, options and process: loading is the expensive part."""
    return DepthEstimator(model_path, batch_size=batch_size, **options)


def depth_worker(model_path: str, batch_size: int = 16, **options: Any) -> Callable[[dict], dict]:
    """`map_shards` factory: load the model once per actor, then turn shard tasks into columns with depth images.

    `task["src"]` is a parquet shard; every column is returned unchanged except `image`, which becomes PNG bytes.
    Shards are decoded `batch_size` images at a time, so memory stays bounded whatever the shard size. `options`:
    the `DepthEstimator` options (dtype, input_size, square_crop, output_size, quantize).
    """
    from PIL import Image

    from synthray.core.images import decode_array, encode, read_shard

    predict = estimator(model_path, batch_size, **options)

    def work(task: dict[str, Any]) -> dict[str, list]:
        columns = read_shard(task["src"]).to_pydict()
        encoded = columns["image"]
        out: list[bytes] = []
        for start in range(0, len(encoded), batch_size):
            views = predict([decode_array(b) for b in encoded[start:start + batch_size]])
            out.extend(encode(Image.fromarray(v), "png") for v in views)
        columns["image"] = out
        return columns

    return work
