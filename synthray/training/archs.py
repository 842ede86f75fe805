"""Classifier architectures: synthray's own registered members, `tv:<name>` for torchvision's classification
models, and any timm model name.

The study builds resnet50, resnet18, convnext_tiny and swin_t from torchvision and vit_tiny_patch16_224 from timm
(classifier/train.py, `get_model_architecture`); `tv:` names keep the source visible, because timm's `resnet50`
or `convnext_tiny` is a different implementation (init, stochastic depth, layer layout) from torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from synthray.core.registry import Registry, SynthrayError, unknown_name
from synthray.training import bagnet

ARCHS = Registry("architecture")


@dataclass(frozen=True)
class Arch:
    """One of synthray's own architectures: `build(num_classes, **kw) -> nn.Module`. `version` is bumped when it
    changes what it computes, and is then in the keys of its models and results (None: never changed)."""

    name: str
    build: Callable[..., nn.Module]
    source: str
    version: int | None = None


def register_arch(arch: Arch) -> Arch:
    return ARCHS.register(arch.name)(arch)


def arch_identity(name: str) -> dict[str, Any]:
    """What a key records of an architecture: its name, and its version once it has been changed."""
    version = ARCHS.get(name).version if name in ARCHS else None
    return {"arch": name, **({"arch_version": version} if version is not None else {})}


def tiny_cnn(num_classes: int, width: int = 16, **_: Any) -> nn.Module:
    """A 4-conv net for the embedded default (32px digits on a CPU): ~25k parameters, any input size."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, width), *block(width, width), nn.MaxPool2d(2),
        *block(width, 2 * width), *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


register_arch(Arch("tiny-cnn", tiny_cnn, "synthray (a 4-conv net for the 32 px smoke run)"))
# bagnet9/17/33 register here: the registry imports its members, never the reverse.
for _name, _kernel3 in bagnet.RECEPTIVE_FIELDS.items():
    register_arch(Arch(_name, lambda num_classes, _k=_kernel3, **_: bagnet.BagNet(_k, num_classes=num_classes),
                       "synthray (the study's classifier/bag_net.py)", bagnet.VERSION))


TORCHVISION = "tv:"
# The study's torchvision architectures (`swin_t` is what its `--model_arch swin_v2_tiny` builds: Swin-T v1).
STUDY_TORCHVISION = ("resnet50", "resnet18", "convnext_tiny", "swin_t")
# Models whose training-mode output is a tuple with auxiliary heads, which one cross-entropy cannot train.
_NO_AUX = ("googlenet", "inception_v3")


def torchvision_names() -> list[str]:
    """torchvision's classification model builders (detection, segmentation and video live in submodules)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def check_arch(name: str) -> None:
    if name in ARCHS:  # before importing timm: it brings torchvision and torch._dynamo, seconds of a warm rerun
        return
    import timm

    if name.startswith(TORCHVISION):
        if name[len(TORCHVISION):] in torchvision_names():
            return
        err = unknown_name("architecture", name, [TORCHVISION + n for n in torchvision_names()])
        hint = str(err).split("; choices:")[0]
        raise SynthrayError(f"{hint}; choices: tv:<name> for any of torchvision.models.list_models(module=torchvision.models)")
    if timm.is_model(name):
        return
    err = unknown_name("architecture", name, ARCHS.names() + timm.list_models())
    hint = str(err).split("; choices:")[0]  # timm's ~1,300 names are too many for one line
    raise SynthrayError(f"{hint}; choices: {', '.join(ARCHS.names())}, tv:<torchvision name> or any timm model name "
                        "(timm.list_models())")


def _torchvision_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """`torchvision.models.<name>(num_classes=n)`, as the study builds them: random init by torchvision's own
    initialiser, the builder's defaults (convnext stochastic depth 0.1, swin 0.2), no weights."""
    import torchvision.models

    if name in _NO_AUX:
        kwargs.setdefault("aux_logits", False)
    return torchvision.models.get_model_builder(name)(num_classes=num_classes, **kwargs)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build `name` with random weights for `num_classes` outputs (timm's `create_model` drops None kwargs)."""
    import timm

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in ARCHS:
        return ARCHS.get(name).build(num_classes=num_classes, **kwargs)
    if name.startswith(TORCHVISION):
        check_arch(name)
        return _torchvision_model(name[len(TORCHVISION):], num_classes, **kwargs)
    if not timm.is_model(name):
        check_arch(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise SynthrayError(f"architecture {name}: {err}") from None


def describe() -> list[str]:
    """`synthray list archs`: every name an architecture axis takes, with where its model comes from."""
    ours = sorted(ARCHS.names(), key=lambda n: (n != "tiny-cnn", len(n), n))  # tiny-cnn, bagnet9, bagnet17, bagnet33
    rows = [(n, ARCHS.get(n).source) for n in ours]
    rows += [(TORCHVISION + n, f"torchvision (the study's {'swin_v2_tiny, which builds Swin-T v1' if n == 'swin_t' else n})")
             for n in STUDY_TORCHVISION]
    rows += [("tv:<name>", "torchvision: any of torchvision.models.list_models(module=torchvision.models)"),
             ("vit_tiny_patch16_224", "timm (the study's)"),
             ("<name>", "timm: any timm model name (timm.list_models()), e.g. resnet50, swin_tiny_patch4_window7_224")]
    return [f"{name:<22} {source}" for name, source in rows]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
