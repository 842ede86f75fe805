"""Semantic segmentation with the study's recipe: torchvision DeepLabV3 trained on pseudo-label class maps (issue 26).

The study (`Bill2462/When-Pretty-Isn-t-Useful-codebase`) converts SAM 3's per-image union mask into a VOC-style class
map (`segmentation/import_ds.py`) and trains with torchvision's reference script (`segmentation/train.py`, which imports
torchvision's `references/segmentation/presets.py` and `transforms.py`; the README gives the command line).

Building blocks only, each a plain function that tests call on tiny inputs: the recipe, the models, the class map, the
transforms, the lr schedule, the optimizer, training steps, prediction and exact-resume state. Images in a batch are
float32 (B, 3, H, W), normalised; class maps are int64 (B, H, W) with 0 = background and 255 = ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from synthray.core.registry import SynthrayError, unknown_name
from synthray.labels.segmenter import label_arrays, union_mask

SEGMENTATION_RECIPE: dict[str, Any] = {
    "model": "deeplabv3_resnet50",  # segmentation/README.md: --model deeplabv3_resnet50
    "weights": None,  # segmentation/train.py: --weights default None (README passes none)
    "weights_backbone": "ResNet50_Weights.IMAGENET1K_V1",  # segmentation/README.md: --weights-backbone
    "aux_loss": True,  # segmentation/README.md: --aux-loss
    "aux_weight": 0.5,  # segmentation/train.py criterion(): losses["out"] + 0.5 * losses["aux"]
    "aux_lr_scale": 10.0,  # segmentation/train.py main(): the aux_classifier group gets lr * 10
    "num_classes": 51,  # segmentation/train.py get_dataset(): "custom" has 51; import_ds.py: first 50 classes + background 0
    "ignore_index": 255,  # segmentation/train.py criterion(); references transforms.py pads targets with 255
    "lr": 0.02,  # segmentation/README.md: --lr 0.02
    "momentum": 0.9,  # segmentation/train.py: --momentum default
    "weight_decay": 1e-4,  # segmentation/train.py: --wd default, on every group
    "lr_power": 0.9,  # segmentation/train.py: PolynomialLR(power=0.9), stepped every iteration
    "warmup_epochs": 0,  # segmentation/train.py: --lr-warmup-epochs default 0 (README passes none)
    "epochs": 30,  # segmentation/train.py: --epochs default 30 (README evaluates model_29.pth)
    "batch_size": 20,  # segmentation/README.md: -b 20 (per GPU); train loader drop_last=True
    "val_batch_size": 1,  # segmentation/train.py: data_loader_test batch_size=1 (val images differ in size)
    "base_size": 520,  # segmentation/train.py get_transform(): base_size=520, train and val
    "crop_size": 480,  # segmentation/train.py get_transform(): crop_size=480
    "resize_range": (0.5, 2.0),  # references presets.py: RandomResize(int(0.5 * base), int(2.0 * base)), shorter side
    "hflip_prob": 0.5,  # references presets.py: hflip_prob=0.5
    "mean": (0.485, 0.456, 0.406),  # references presets.py: ImageNet mean
    "std": (0.229, 0.224, 0.225),  # references presets.py: ImageNet std
    "absent_iou": "zero",  # segmentation/train.py segmentation_metrics: a class in neither map has IoU 0 and counts (nan: left out)
    "amp": False,  # segmentation/train.py: --amp is a flag the README does not pass
}


# --- models -------------------------------------------------------------------------------------------------------


def _deeplabv3_resnet50(num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _tiny_deeplabv3(num_classes: int) -> nn.Module:
    """torchvision's DeepLabV3, ASPP and FCNHead on a 5-conv backbone with ResNet's layout: output stride 8 (layers 3 and 4
    dilated instead of strided, as torchvision's `replace_stride_with_dilation=[False, True, True]`), `aux` from
    layer3 and `out` from layer4, so every code path of the real model runs."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    body = nn.Sequential()
    body.add_module("conv1", _conv(3, 8, stride=2))
    body.add_module("layer1", _conv(8, 8, stride=2))
    body.add_module("layer2", _conv(8, 16, stride=2))
    body.add_module("layer3", _conv(16, 16, dilation=2))
    body.add_module("layer4", _conv(16, 32, dilation=4))
    backbone = IntermediateLayerGetter(body, return_layers={"layer4": "out", "layer3": "aux"})
    # DeepLabHead's layers with 32 channels instead of 256 and atrous rates 2/4/6 instead of 12/24/36: on the few-pixel
    # maps of tiny images, rate 36 would pad a 4x4 map to 76x76 and make the step 10x slower for nothing.
    head = nn.Sequential(ASPP(32, [2, 4, 6], out_channels=32), _conv(32, 32), nn.Conv2d(32, num_classes, 1))
    return DeepLabV3(backbone, head, FCNHead(16, num_classes))


SEGMENTERS = {"deeplabv3_resnet50": _deeplabv3_resnet50, "tiny-deeplabv3": _tiny_deeplabv3}


def build_segmenter(name: str, num_classes: int, backbone_weights: str | None = None, seed: int = 0) -> nn.Module:
    """A DeepLabV3 with an aux head, randomly initialised from `seed` (the global torch RNG is left as it was).

    `model(x)` with x float (B, 3, H, W) gives {"out": (B, C, H, W), "aux": (B, C, H, W)} logits. Nothing is
    downloaded: `backbone_weights` is a local file holding the backbone's classifier state dict (for
    `deeplabv3_resnet50`, torchvision's `resnet50().state_dict()`, as the study's IMAGENET1K_V1 backbone); its `fc.*`
    entries are dropped and the rest must match the backbone exactly.
    """
    if name not in SEGMENTERS:
        raise unknown_name("segmenter", name, SEGMENTERS)
    if num_classes < 2 or num_classes > 255:  # 255 is the ignore index, so a class map must stay below it
        raise SynthrayError(f"segmenter num_classes must be in [2, 255], got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SEGMENTERS[name](num_classes)
    if backbone_weights is not None:
        state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            model.backbone.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise SynthrayError(f"backbone weights {backbone_weights} do not fit {name}: {str(err).splitlines()[1].strip()}") from None
    return model


# --- labels -------------------------------------------------------------------------------------------------------


def class_map(row: Mapping[str, Any], label_index: Mapping[Any, int], num_classes: int) -> np.ndarray:
    """A label row (`synthray.labels.segmenter.LABEL_TYPES` columns plus `label`) -> int64 (H, W) class map.

    As the study's `segmentation/import_ds.py`: the union of the image's instance masks gets the image's class,
    `label_index[label] + 1` (index 0-based within the class subset, 0 left for background); every other pixel, and
    every pixel of an image with N=0, is background 0. A label outside `label_index` raises: the study imports no
    image of a class outside its first 50, so the caller filters those rows first.
    """
    label = row["label"]
    index = label_index.get(label, label_index.get(str(label)))
    if index is None:
        raise SynthrayError(f"class map: label {label!r} is not in the class subset ({len(label_index)} classes)")
    value = int(index) + 1
    if not 0 < value < num_classes:
        raise SynthrayError(f"class map: label {label!r} maps to {value}, outside [1, {num_classes})")
    height, width = int(row["height"]), int(row["width"])
    masks = label_arrays(row)["masks"]
    if len(masks) != int(row["n"]) or masks.shape[1:] != (height, width):
        raise SynthrayError(f"class map: row has n={row['n']} and size {height}x{width}, its masks are {masks.shape}")
    out = np.zeros((height, width), dtype=np.int64)
    out[union_mask(masks, height, width)] = value
    return out


# --- transforms (torchvision's references/segmentation, PIL backend, with an explicit numpy Generator) --------------


def _resize_short(image: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shorter side to `size`, the longer by int(size * long / short) as torchvision's F.resize(int): bilinear image
    (PIL, as the study's PIL backend), nearest target, so no pixel gets a class between two classes."""
    from PIL import Image

    h, w = target.shape
    oh, ow = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    img = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    tgt = np.asarray(Image.fromarray(target.astype(np.uint8)).resize((ow, oh), Image.NEAREST)).astype(np.int64)
    return img, tgt


def _to_tensors(image: np.ndarray, target: np.ndarray, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    # np.array copies: PIL's arrays are read-only and flips/crops are views, which torch would share.
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x, torch.from_numpy(np.array(target, dtype=np.int64))


def _check_pair(image: np.ndarray, target: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != target.shape:
        raise SynthrayError(f"segmentation pair must be uint8 (H, W, 3) and (H, W), got {image.shape} {image.dtype} and {target.shape}")


def train_transform(image: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                    recipe: Mapping[str, Any] = SEGMENTATION_RECIPE) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) image and int (H, W) class map -> float32 (3, C, C) normalised, int64 (C, C), C = crop_size.

    The study's SegmentationPresetTrain: shorter side to a size drawn uniformly from [0.5, 2.0] x base_size
    (inclusive, as random.randint), hflip with probability 0.5, pad right and bottom to the crop (image 0, target
    255 so padding is ignored by the loss), random crop. Draw order, fixed so a seed gives one augmentation:
    size, flip, crop top, crop left.
    """
    _check_pair(image, target)
    base, crop = int(recipe["base_size"]), int(recipe["crop_size"])
    lo, hi = (int(f * base) for f in recipe["resize_range"])
    image, target = _resize_short(image, target, int(rng.integers(lo, hi, endpoint=True)))
    if rng.random() < float(recipe["hflip_prob"]):
        image, target = image[:, ::-1], target[:, ::-1]
    h, w = target.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        target = np.pad(target, ((0, ph), (0, pw)), constant_values=int(recipe["ignore_index"]))
    h, w = target.shape
    top, left = int(rng.integers(0, h - crop, endpoint=True)), int(rng.integers(0, w - crop, endpoint=True))
    image, target = image[top : top + crop, left : left + crop], target[top : top + crop, left : left + crop]
    return _to_tensors(image, target, recipe["mean"], recipe["std"])


def val_transform(image: np.ndarray, target: np.ndarray,
                  recipe: Mapping[str, Any] = SEGMENTATION_RECIPE) -> tuple[torch.Tensor, torch.Tensor]:
    """The study's SegmentationPresetEval: shorter side to base_size, no crop, normalised. Output sizes follow the
    image's aspect, which is why the study evaluates one image per batch."""
    _check_pair(image, target)
    image, target = _resize_short(image, target, int(recipe["base_size"]))
    return _to_tensors(image, target, recipe["mean"], recipe["std"])


# --- optimisation -------------------------------------------------------------------------------------------------


def lr_at(iteration: int, total_iterations: int, recipe: Mapping[str, Any] = SEGMENTATION_RECIPE) -> float:
    """The base lr used by step `iteration` (0-based) of `total_iterations` (= iterations per epoch x epochs):
    torch's PolynomialLR, lr * (1 - t / T) ** power, stepped after every iteration, 0 from T on."""
    if recipe.get("warmup_epochs", 0):
        raise SynthrayError("segmentation lr warmup is not implemented; the study's recipe has none")
    if total_iterations <= 0 or iteration < 0:
        raise SynthrayError(f"lr_at needs 0 <= iteration and total_iterations > 0, got {iteration}, {total_iterations}")
    return float(recipe["lr"]) * (1.0 - min(iteration, total_iterations) / total_iterations) ** float(recipe["lr_power"])


def make_optimizer(model: nn.Module, recipe: Mapping[str, Any] = SEGMENTATION_RECIPE) -> torch.optim.SGD:
    """SGD with the study's groups: backbone and classifier at lr, aux_classifier at lr x 10; momentum and weight
    decay on all. Each group keeps its `base_lr`, which `train_steps` scales by the schedule."""
    lr = float(recipe["lr"])
    groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad], "base_lr": lr},
              {"params": [p for p in model.classifier.parameters() if p.requires_grad], "base_lr": lr}]
    if getattr(model, "aux_classifier", None) is not None:
        aux_lr = lr * float(recipe["aux_lr_scale"])
        groups.append({"params": [p for p in model.aux_classifier.parameters() if p.requires_grad], "lr": aux_lr, "base_lr": aux_lr})
    return torch.optim.SGD(groups, lr=lr, momentum=float(recipe["momentum"]), weight_decay=float(recipe["weight_decay"]))


def segmentation_loss(outputs: Mapping[str, torch.Tensor], target: torch.Tensor,
                      recipe: Mapping[str, Any] = SEGMENTATION_RECIPE) -> torch.Tensor:
    """The study's criterion: cross-entropy of `out`, plus aux_weight x that of `aux` when the model has one; pixels
    at ignore_index (crop padding) count in neither."""
    ignore = int(recipe["ignore_index"])
    loss = nn.functional.cross_entropy(outputs["out"], target, ignore_index=ignore)
    if "aux" in outputs:
        loss = loss + float(recipe["aux_weight"]) * nn.functional.cross_entropy(outputs["aux"], target, ignore_index=ignore)
    return loss


def _step_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                device: str | torch.device, *, start: int = 0, total_iterations: int | None = None, seed: int = 0,
                recipe: Mapping[str, Any] = SEGMENTATION_RECIPE) -> list[float]:
    """Train on `batches` of (images float (B, 3, H, W), class maps int64 (B, H, W)), one optimizer step each;
    returns each step's loss (out + aux_weight x aux).

    `start` is the global iteration of the first batch. With `total_iterations`, each group's lr is its base_lr
    scaled by the poly schedule at that iteration (`lr_at`); without, lrs stay as they are. Dropout draws from a
    torch RNG seeded by (seed, iteration) inside a forked RNG, so a step's randomness depends on its iteration alone:
    the same batches give the same weights, and resuming at any step (`state`/`restore`) is exact. B must be >= 2:
    the ASPP pooling branch batch-normalises a 1x1 map, which fails for one image in train mode.
    """
    model.train()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    losses: list[float] = []
    for iteration, (images, targets) in enumerate(batches, start):
        if total_iterations is not None:
            factor = lr_at(iteration, total_iterations, recipe) / float(recipe["lr"])
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_step_seed(seed, iteration))
            with torch.autocast(torch.device(device).type, enabled=bool(recipe.get("amp"))):
                loss = segmentation_loss(model(images.to(device)), targets.to(device), recipe)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) normalised images -> int64 (B, H, W) class maps, the argmax of `out` (eval mode, as the
    study's evaluate())."""
    model.eval()
    device = next(model.parameters()).device
    return model(images.to(device))["out"].argmax(1)


def state(model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> dict[str, Any]:
    """A checkpoint to resume from: weights and BN statistics, optimizer (momentum buffers, lrs) and the next
    iteration. Deep-copied, so training on does not change it."""
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": int(iteration)})


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> int:
    """Load `state(...)` into a model and optimizer built the same way; returns the iteration to continue from."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return int(saved["iteration"])
