"""Pseudo-labels from a promptable segmenter: SAM 3 (`Sam3Model` / `Sam3Processor` in transformers), prompted with
each image's class name, gives boxes, instance masks and scores for images that have only a class label.

The study (`Bill2462/When-Pretty-Isn-t-Useful-codebase`, `labelling/run_sam3.py`) does this one image at a time:
`processor(images=image, text=class_name)`, then `post_process_instance_segmentation(threshold=0.3,
mask_threshold=0.3, target_sizes=original_sizes)`. Its prompt is the bare coarse label of
`labelling/class_labels/tiny_imagenet.json` ("dog", "frog", "sea slug"). It keeps boxes and scores per image in a
JSON file and writes one mask per image, the union of the instance masks as a 0/255 PNG. An image with no
detection above the threshold keeps an all-zero mask and empty box and score lists (see `union_mask`).

`PromptSegmenter` is a Ray Data callable class: `ds.map_batches(PromptSegmenter, fn_constructor_args=(spec,),
batch_format="pandas", ...)` loads the model once per actor and labels pandas batches of encoded images.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from synthray.core.registry import SynthrayError

# The study's values (labelling/run_sam3.py: `detect_objects(threshold=0.3, mask_threshold=0.3)`). The processor's own
# mask_threshold default is 0.5; the study passes 0.3.
DEFAULTS: dict[str, Any] = {"revision": None, "dtype": "float32", "device": None, "threshold": 0.3, "mask_threshold": 0.3}
KEYS = ("model", "prompts", *DEFAULTS)
DTYPES = ("float32", "float16", "bfloat16")

# The label columns as Arrow types, so a batch whose images all have N=0 stores the same schema as any other (an
# inferred empty list would be list<null>) and Ray Data keeps them as plain lists, not its tensor extension types.
LABEL_TYPES: dict[str, pa.DataType] = {
    "boxes": pa.list_(pa.list_(pa.float32(), 4)),  # (N, 4) xyxy pixels
    "scores": pa.list_(pa.float32()),  # (N,)
    "masks": pa.list_(pa.binary()),  # N 1-bit PNGs of (height, width)
    "n": pa.int32(),
    "height": pa.int32(),
    "width": pa.int32(),
}


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A segmenter spec with its defaults filled in; a one-line SynthrayError names the first bad entry.

    Keys: `model` (a loadable folder or hub id), `revision` (hub revision, None for a folder), `dtype` (float32 |
    float16 | bfloat16, CUDA only; the CPU computes in float32), `device` (None: CUDA when there is one), `threshold`
    (score above which a detection is kept), `mask_threshold` (probability above which a mask pixel is set),
    `prompts` (class id -> text prompt).
    """
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise SynthrayError(f"segmenter spec has no key {unknown[0]!r}; keys: {', '.join(KEYS)}")
    out = {**DEFAULTS, **spec}
    if not out.get("model"):
        raise SynthrayError("segmenter spec needs a model (a save_pretrained folder or a hub id)")
    if out["dtype"] not in DTYPES:
        raise SynthrayError(f"segmenter dtype must be one of {', '.join(DTYPES)}, got {out['dtype']!r}")
    for key in ("threshold", "mask_threshold"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise SynthrayError(f"segmenter {key} must be a number in [0, 1], got {value!r}")
    prompts = out.get("prompts")
    if not isinstance(prompts, Mapping) or not prompts:
        raise SynthrayError("segmenter spec needs prompts: a mapping of class id -> text prompt")
    for class_id, text in prompts.items():
        if not isinstance(text, str) or not text.strip():
            raise SynthrayError(f"segmenter prompt for class {class_id!r} must be non-empty text, got {text!r}")
    # Keys as text: a config read from YAML or JSON may give class ids as strings, a dataset's `label` as ints.
    out["prompts"] = {str(k): v for k, v in prompts.items()}
    return out


def mask_png(mask: np.ndarray) -> bytes:
    """bool (H, W) -> a 1-bit single-channel PNG (Pillow mode "1"), deterministic (fixed compression level)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """A mask PNG -> bool (H, W)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("1"), dtype=bool)


def label_arrays(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One output row -> boxes float32 (N, 4), scores float32 (N,), masks bool (N, H, W)."""
    height, width = int(row["height"]), int(row["width"])
    boxes = np.asarray(list(row["boxes"]), dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(list(row["scores"]), dtype=np.float32)
    masks = np.stack([decode_mask(m) for m in row["masks"]]) if len(row["masks"]) else np.zeros((0, height, width), bool)
    return {"boxes": boxes, "scores": scores, "masks": masks}


def union_mask(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (N, H, W) -> bool (H, W): the study's one mask per image (every instance's pixels; all False when N=0),
    which its segmentation import (`segmentation/import_ds.py`) turns into that image's class index."""
    return masks.any(axis=0) if len(masks) else np.zeros((height, width), dtype=bool)


class PromptSegmenter:
    """SAM 3 (or another `Sam3Model` checkpoint) on one device, prompted per image with its class's text.

    Built from a plain dict spec (`check_spec`); called on a pandas batch with columns `image` (JPEG/PNG bytes) and
    `label` (class id), it returns the batch without `image`, plus the `LABEL_TYPES` columns, one row per image:
    - `boxes`: (N, 4) float32 xyxy in the image's own pixels, clipped to [0, width] x [0, height];
    - `scores`: (N,) float32, each above `threshold`;
    - `masks`: N 1-bit PNGs of (height, width), in the order of `boxes`;
    - `n`: N, 0 when nothing scores above the threshold; `height`, `width`: the image's size.
    Detections stay in the model's query order, as the study keeps them.
    """

    def __init__(self, spec: Mapping[str, Any]):
        import torch
        from transformers import Sam3Model, Sam3Processor

        self.spec = check_spec(spec)
        self.torch = torch
        self.device = self.spec["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        # Half precision on the CPU is slow and poorly supported; it computes in float32 there whatever the spec says.
        self.dtype = getattr(torch, self.spec["dtype"]) if str(self.device).startswith("cuda") else torch.float32
        revision = self.spec["revision"] or "main"  # ignored by from_pretrained for a local folder
        self.processor = Sam3Processor.from_pretrained(self.spec["model"], revision=revision)
        self.model = Sam3Model.from_pretrained(self.spec["model"], revision=revision, dtype=self.dtype).to(self.device).eval()
        self.prompts: dict[str, str] = self.spec["prompts"]

    def prompt(self, label: Any) -> str:
        """The text prompt of class `label` (an int or its text)."""
        try:
            return self.prompts[str(label)]
        except KeyError:
            raise SynthrayError(f"segmenter has no prompt for class {label!r}; prompts cover {len(self.prompts)} "
                                f"classes ({', '.join(sorted(self.prompts)[:5])}{', ...' if len(self.prompts) > 5 else ''})") from None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """pandas batch (columns `image`, `label`, any others) -> the same rows without `image`, plus the label columns."""
        from synthray.core.images import decode

        if isinstance(batch, pa.Table):  # batch_format="pyarrow"
            batch = batch.to_pandas()
        missing = [c for c in ("image", "label") if c not in batch.columns]
        if missing:
            raise SynthrayError(f"segmenter needs columns image and label; the batch has no {' or '.join(missing)}")
        texts = [self.prompt(label) for label in batch["label"]]  # every prompt checked before any forward pass
        images = [decode(data) for data in batch["image"]]
        labels: dict[str, list] = {name: [] for name in LABEL_TYPES}
        if images:
            # One processor call: it resizes every image to the same square and pads every prompt to 32 tokens, so
            # each image's pixels and token ids are the same bytes as in a call of its own (checked in the tests).
            inputs = self.processor(images=images, text=texts, return_tensors="pt")
            for i, image in enumerate(images):
                for name, value in self.label({k: v[i : i + 1] for k, v in inputs.items()}, image.height, image.width).items():
                    labels[name].append(value)
        out = batch.drop(columns=["image"]).reset_index(drop=True)
        for name, values in labels.items():
            out[name] = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(values, LABEL_TYPES[name])))
        return out

    def label(self, inputs: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
        """One image's processor outputs (pixel_values (1, 3, S, S), input_ids and attention_mask (1, 32)) and its
        size -> one row of label columns (Python lists and bytes, `LABEL_TYPES`).

        One image per forward pass, as the study runs it: float kernels are not batch-invariant (measured on the
        tiny twin on CPU: a batch of 4 moves mask logits by up to 4e-6 against one image alone), which can flip a
        score or a mask pixel at a threshold, and Ray Data slices batches wherever blocks end, so a stacked forward
        pass would let the batch size reach the bytes.
        """
        torch = self.torch
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k != "original_sizes"}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        # Scores, boxes and mask logits in float32 before thresholds, so half precision moves values, not the rule.
        for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
            setattr(outputs, name, getattr(outputs, name).float())
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=float(self.spec["threshold"]), mask_threshold=float(self.spec["mask_threshold"]),
            target_sizes=[(height, width)],
        )[0]
        # Predicted boxes are sigmoid (cx, cy, w, h) turned into corners, so they can reach past the image; the
        # study's training clamps them to the image (torchvision's ConvertCocoPolysToMask), so store them clamped.
        boxes = result["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        masks = result["masks"].bool().cpu().numpy()  # (N, H, W)
        return {
            "boxes": boxes.tolist(), "scores": result["scores"].cpu().numpy().astype(np.float32).tolist(),
            "masks": [mask_png(m) for m in masks], "n": len(boxes), "height": height, "width": width,
        }
