"""Detection building blocks (issue 26): the study's Faster R-CNN recipe, its detectors, targets from pseudo-labels,
its learning-rate schedule, training steps, prediction and an exact-resume state. Not wired into the planner yet.

The study (`Bill2462/When-Pretty-Isn-t-Useful-codebase`, `object_detection/`) runs torchvision's detection reference
(`train.py`; `engine.py`, `presets.py` and `transforms.py` are torchvision's `references/detection` files, not in
the repository) on a COCO file written by `import_ds.py` from SAM 3's boxes. Images are lists of float (3, H, W)
tensors in [0, 1]; boxes are (x0, y0, x1, y1) in image pixels; label 0 is torchvision's background.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from synthray.core.registry import SynthrayError, unknown_name
from synthray.training.loop import rng_state, set_rng_state

DETECTION_RECIPE: dict[str, Any] = {
    "model": "fasterrcnn_resnet50_fpn",  # README.md: --model fasterrcnn_resnet50_fpn
    "weights": None,  # README.md: no --weights, so no COCO-trained detector
    "weights_backbone": "ResNet50_Weights.IMAGENET1K_V1",  # README.md: --weights-backbone
    # train.py passes trainable_backbone_layers=None; torchvision makes it 3 (layer2-4) and the BatchNorms frozen
    # (FrozenBatchNorm2d) because a backbone is pretrained (fasterrcnn_resnet50_fpn's _validate_trainable_layers).
    "trainable_backbone_layers": 3,
    "num_classes": 200,  # train.py get_dataset: {"coco": (200, ...)}, although import_ds.py writes 50 classes (ids 0-49)
    "classes": 50,  # import_ds.py: sorted(class names)[:50], category ids 0..49 (id 0 is also torchvision's background)
    "epochs": 26,  # README.md --epochs 26
    "batch_size": 16,  # README.md -b 16 (images per GPU)
    "optimizer": "sgd",  # train.py --opt default
    "lr": 0.02,  # train.py --lr default; README.md passes none and train.py never rescales it
    "momentum": 0.9,  # train.py --momentum default
    "weight_decay": 1e-4,  # train.py --wd default; --norm-weight-decay None: one value for every trainable tensor
    "lr_steps": (16, 22),  # README.md --lr-steps 16 22 (MultiStepLR, stepped once per epoch)
    "lr_gamma": 0.1,  # train.py --lr-gamma default
    "warmup_factor": 1e-3,  # engine.py train_one_epoch: epoch 0 only, LinearLR(start_factor=1/1000) per iteration
    "warmup_iters": 1000,  # engine.py: total_iters=min(1000, len(data_loader) - 1)
    "hflip_prob": 0.5,  # train.py --data-augmentation hflip -> presets.DetectionPresetTrain: RandomHorizontalFlip(0.5)
    "min_size": 800,  # FasterRCNN defaults (GeneralizedRCNNTransform): shorter side to 800, longer at most 1333
    "max_size": 1333,
    "aspect_ratio_group_factor": 3,  # README.md: batches drawn from one of 3-quantile aspect-ratio groups
    "amp": False,  # README.md passes no --amp
    "label_start": 0,  # import_ds.py: category ids 0..49, so the first class is torchvision's background (1: every class)
    "box_format": "study-xywh-bug",  # import_ds.py: SAM's xyxy boxes written into COCO's xywh field (targets_from_labels)
    "train_drop_empty": True,  # coco_utils.py get_coco: _coco_remove_images_without_annotations on train only
    "eval_batch_size": 1,  # train.py data_loader_test; val keeps images without boxes
}
BOX_FORMATS = ("xyxy", "study-xywh-bug")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python: Faster R-CNN samples anchors and proposals with torch's global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _resnet50_fpn(num_classes: int, backbone_weights: str | os.PathLike | None, recipe: Mapping[str, Any]) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    # The study's shape whether or not weights are given: frozen BatchNorm and 3 trainable stages are what torchvision
    # builds for a pretrained backbone. weights_backbone= would download, so the weights come from a local file.
    backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    if backbone_weights is not None:
        path = os.fspath(backbone_weights)
        if os.path.isdir(path):  # a torch hub cache folder: the IMAGENET1K_V1 file under its own name
            path = os.path.join(path, os.path.basename(ResNet50_Weights.IMAGENET1K_V1.url))
        if not os.path.isfile(path):
            raise SynthrayError(f"no ResNet-50 backbone weights at {path} (the study used ResNet50_Weights.IMAGENET1K_V1)")
        backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    backbone = _resnet_fpn_extractor(backbone, int(recipe["trainable_backbone_layers"]))
    return FasterRCNN(backbone, num_classes=num_classes, min_size=recipe["min_size"], max_size=recipe["max_size"])


def _tiny_fasterrcnn(num_classes: int, backbone_weights: str | os.PathLike | None, recipe: Mapping[str, Any]) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if backbone_weights is not None:
        raise SynthrayError("tiny-fasterrcnn has random weights only; backbone_weights is for fasterrcnn_resnet50_fpn")
    # Two stride-2 convolutions and no normalisation: one stride-4 feature map, so one anchor size set and one RoI
    # level. Every sampler and head is torchvision's own, only smaller, so the training path is the real one.
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    backbone.out_channels = 16
    return FasterRCNN(
        backbone, num_classes=None, min_size=64, max_size=64,
        rpn_anchor_generator=AnchorGenerator(sizes=((8, 16, 32),), aspect_ratios=((1.0,),)),
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64, box_batch_size_per_image=32,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=4, sampling_ratio=2),
        box_head=TwoMLPHead(16 * 4 * 4, 32), box_predictor=FastRCNNPredictor(32, num_classes),
    )


DETECTORS = {"fasterrcnn_resnet50_fpn": _resnet50_fpn, "tiny-fasterrcnn": _tiny_fasterrcnn}


def build_detector(name: str, num_classes: int, backbone_weights: str | os.PathLike | None = None, seed: int = 0,
                   recipe: Mapping[str, Any] = DETECTION_RECIPE) -> nn.Module:
    """A torchvision Faster R-CNN with random heads. `num_classes` counts the background (50 classes -> 51).

    `backbone_weights`: a torchvision ResNet-50 state-dict file, or a folder holding `resnet50-0676ba61.pth`
    (the study's ResNet50_Weights.IMAGENET1K_V1). The initialisation draws from a generator seeded with `seed`,
    without touching the caller's global RNG state.
    """
    if name not in DETECTORS:
        raise unknown_name("detector", name, DETECTORS)
    if num_classes < 2:
        raise SynthrayError(f"a detector needs num_classes >= 2 (background + at least one class), got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DETECTORS[name](num_classes, backbone_weights, recipe)


def make_label_map(class_ids: Iterable[Any], start: int = 1) -> dict[str, int]:
    """Class id -> target label, in sorted order as the study's import_ds.py. `start=1` keeps 0 for the background;
    the study's start=0 gives its first class label 0, which torchvision trains and predicts as background."""
    return {str(c): i + start for i, c in enumerate(sorted({str(c) for c in class_ids}))}


def _boxes(row: Mapping[str, Any]) -> np.ndarray:
    boxes = np.asarray([list(b) for b in row["boxes"]], dtype=np.float32).reshape(-1, 4)
    if "n" in row and len(boxes) != int(row["n"]):
        raise SynthrayError(f"label row has n={row['n']} but {len(boxes)} boxes")
    return boxes


def targets_from_labels(rows: Iterable[Mapping[str, Any]], label_map: Mapping[str, int],
                        box_format: str = "xyxy") -> list[dict[str, torch.Tensor]]:
    """Label rows (synthray/labels/segmenter.py: `boxes` (N, 4) xyxy pixels, `label`, `n`, `height`, `width`) ->
    torchvision targets {boxes float32 (M, 4) xyxy, labels int64 (M,)}, one per row; N=0 gives (0, 4) and (0,).

    Every box gets its image's class: SAM was prompted with that class. `box_format="study-xywh-bug"` replays
    import_ds.py, which writes SAM's (x0, y0, x1, y1) into COCO's (x, y, w, h) field, and coco_utils.py's
    ConvertCocoPolysToMask, which reads it back as (x0, y0, x0 + x1, y0 + y1) clamped to the image. Both formats
    then drop boxes with no width or height (that class's `keep`), which torchvision refuses in training.
    """
    if box_format not in BOX_FORMATS:
        raise SynthrayError(f"box_format must be one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    if hasattr(rows, "to_dict"):  # a pandas DataFrame
        rows = rows.to_dict("records")
    out = []
    for row in rows:
        key = str(row["label"])
        if key not in label_map:
            raise SynthrayError(f"class {row['label']!r} is not in the label map ({len(label_map)} classes)")
        height, width = float(row["height"]), float(row["width"])
        boxes = np.maximum(_boxes(row), 0.0)  # import_ds.py: max(0, coord)
        if box_format == "study-xywh-bug":
            boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        boxes = boxes[(boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])]
        out.append({"boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
                    "labels": torch.full((len(boxes),), int(label_map[key]), dtype=torch.int64)})
    return out


def study_keeps_for_training(row: Mapping[str, Any], box_format: str = "xyxy") -> bool:
    """coco_utils.py _coco_remove_images_without_annotations on one label row: the study trains on an image only when
    it has a box and not every box's COCO fields 3 and 4 are <= 1 px. With the importer's bug those fields hold x1 and
    y1, not width and height. Validation keeps every image."""
    boxes = np.maximum(_boxes(row), 0.0)
    if not len(boxes):
        return False
    wh = boxes[:, 2:] if box_format == "study-xywh-bug" else boxes[:, 2:] - boxes[:, :2]
    return not bool((wh <= 1).any(axis=1).all())


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor], generator: torch.Generator,
          prob: float = DETECTION_RECIPE["hflip_prob"]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The study's only train augmentation (transforms.RandomHorizontalFlip): image (3, H, W), boxes mirrored.
    The coin comes from `generator`, so a row's flip does not depend on what else was drawn."""
    if torch.rand(1, generator=generator).item() >= prob:
        return image, target
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def base_lr(recipe: Mapping[str, Any] = DETECTION_RECIPE, batch_size: int | None = None) -> float:
    """The recipe's lr scaled linearly from its batch size to `batch_size` (None: the recipe's)."""
    return float(recipe["lr"]) * (batch_size or recipe["batch_size"]) / recipe["batch_size"]


def lr_at(epoch: int, iteration: int, recipe: Mapping[str, Any] = DETECTION_RECIPE, steps_per_epoch: int | None = None,
          batch_size: int | None = None) -> float:
    """Learning rate of step `iteration` (0-based) of epoch `epoch` (0-based), as train.py and engine.py set it.

    MultiStepLR multiplies by `lr_gamma` at each epoch in `lr_steps`; in epoch 0 a LinearLR warm-up runs from
    `warmup_factor` x lr to lr over min(`warmup_iters`, steps_per_epoch - 1) steps (None: an epoch longer than
    that). `batch_size` scales lr linearly from the recipe's batch (torchvision's reference rule, 0.02 per 16 images;
    the study itself never rescales, and at its batch of 16 the two agree). torch's schedulers compute this product
    step by step, so they agree to float rounding, not bit for bit.
    """
    lr = base_lr(recipe, batch_size) * float(recipe["lr_gamma"]) ** sum(epoch >= m for m in recipe["lr_steps"])
    if epoch == 0 and recipe.get("warmup_iters"):
        total = int(recipe["warmup_iters"]) if steps_per_epoch is None else min(int(recipe["warmup_iters"]), steps_per_epoch - 1)
        # total 0 (a one-batch epoch) would leave the study's LinearLR at its start factor for good; synthray skips it.
        if total > 0:
            start = float(recipe["warmup_factor"])
            lr *= start + (1.0 - start) * min(iteration, total) / total
    return lr


def make_optimizer(model: nn.Module, recipe: Mapping[str, Any] = DETECTION_RECIPE, batch_size: int | None = None) -> torch.optim.Optimizer:
    """train.py's SGD over the trainable parameters (frozen backbone stages excluded), lr `base_lr`;
    train_steps sets each step's lr from `lr_at`."""
    if recipe["optimizer"] != "sgd":
        raise SynthrayError(f"the detection recipe knows optimizer sgd only, got {recipe['optimizer']!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=base_lr(recipe, batch_size), momentum=float(recipe["momentum"]),
                           weight_decay=float(recipe["weight_decay"]))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[dict[str, torch.Tensor]]]],
                device: torch.device | str, lrs: Iterable[float] | None = None) -> list[dict[str, float]]:
    """One optimiser step per (images, targets) batch, as engine.py's train_one_epoch without AMP: images a list
    of (3, H, W) floats in [0, 1], targets `targets_from_labels` dicts. `lrs`, when given, sets each step's lr
    (`lr_at`). Returns per step torchvision's four losses and their sum, `loss`, as floats."""
    device = torch.device(device)
    model.to(device).train()
    lrs = iter(lrs) if lrs is not None else None
    history = []
    for images, targets in batches:
        if lrs is not None:
            lr = next(lrs)
            for group in optimizer.param_groups:
                group["lr"] = lr
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):  # engine.py stops the run on a non-finite loss
            raise SynthrayError(f"detection loss is {loss.item()} at step {len(history)}: {({k: v.item() for k, v in losses.items()})}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({**{k: v.item() for k, v in losses.items()}, "loss": loss.item()})
    return history


@torch.inference_mode()
def predict(model: nn.Module, images: Sequence[torch.Tensor], score_threshold: float = 0.0,
            device: torch.device | str = "cpu") -> list[dict[str, np.ndarray]]:
    """Detections per image: boxes float32 (K, 4) xyxy in the input's pixels, scores float32 (K,), labels int64 (K,),
    by falling score. The model's own box_score_thresh (0.05 by default) and 100 detections per image apply first."""
    model.to(device).eval()
    outputs = model([image.to(device) for image in images])
    result = []
    for out in outputs:
        keep = out["scores"] >= score_threshold
        result.append({"boxes": out["boxes"][keep].float().cpu().numpy().reshape(-1, 4),
                       "scores": out["scores"][keep].float().cpu().numpy(), "labels": out["labels"][keep].cpu().numpy().astype(np.int64)})
    return result


def state(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> dict[str, Any]:
    """A copy of everything the next step depends on: weights, SGD momentum, the RNGs (the RPN and RoI samplers draw
    from torch's), and where in the run it is. The lr is a function of (epoch, step), so no scheduler is kept.
    Loadable with torch.load(weights_only=True)."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()), "rng": rng_state(), "epoch": int(epoch), "step": int(step)}


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> tuple[int, int]:
    """Load a `state` into a freshly built model and its `make_optimizer`; returns (epoch, step) to continue from."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    return int(saved["epoch"]), int(saved["step"])
