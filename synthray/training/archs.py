"""Classifier architectures: synthray's own registered members first, then any timm model name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from synthray.registry import Registry, SynthrayError, unknown_name

ARCHS = Registry("architecture")


@ARCHS.register("tiny-cnn")
def tiny_cnn(num_classes: int, width: int = 16, **_: Any) -> nn.Module:
    """A 4-conv net for the embedded default (32px digits on a CPU): ~25k parameters, any input size."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, width), *block(width, width), nn.MaxPool2d(2),
        *block(width, 2 * width), *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


def check_arch(name: str) -> None:
    import timm

    if name in ARCHS or timm.is_model(name):
        return
    err = unknown_name("architecture", name, ARCHS.names() + timm.list_models())
    hint = str(err).split("; choices:")[0]  # timm's ~1,300 names are too many for one line
    raise SynthrayError(f"{hint}; choices: {', '.join(ARCHS.names())} or any timm model name (timm.list_models())")


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build `name` with random weights for `num_classes` outputs (timm's `create_model` drops None kwargs)."""
    import timm

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in ARCHS:
        return ARCHS.get(name)(num_classes=num_classes, **kwargs)
    if not timm.is_model(name):
        check_arch(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise SynthrayError(f"architecture {name}: {err}") from None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
import synthray.training.bagnet  # noqa: E402,F401  (registers bagnet9/17/33)
