"""BagNet-9/17/33 (Brendel & Bethge, ICLR 2019): a ResNet-50 layout whose receptive field is 9, 17 or 33 px.

Every convolution is 1x1 except the stem's second conv and the first block of the first 2, 3 or 4 stages, which
are 3x3 with no padding. Each output location therefore sees one local patch, and the class evidence of an
image is the average of its patches' logits: a texture probe with no global shape. timm has no BagNet.
"""

from __future__ import annotations

import torch
from torch import nn

from synthray.training.archs import ARCHS


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, kernel_size: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * self.expansion)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # The unpadded 3x3 shrinks the map; crop the shortcut to match, as the reference implementation does.
        dh, dw = residual.shape[-2] - out.shape[-2], residual.shape[-1] - out.shape[-1]
        if dh or dw:
            residual = residual[:, :, : residual.shape[-2] - dh, : residual.shape[-1] - dw]
        return self.relu(out + residual)


class BagNet(nn.Module):
    """(N, 3, H, W) -> logits (N, num_classes); `patch_logits` gives the (N, num_classes, h, w) map before pooling."""

    def __init__(self, kernel3: tuple[int, int, int, int], num_classes: int = 1000, layers=(3, 4, 6, 3), strides=(2, 2, 2, 1)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 1, bias=False), nn.Conv2d(64, 64, 3, padding=0, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        stages, inplanes = [], 64
        for planes, blocks, stride, k3 in zip((64, 128, 256, 512), layers, strides, kernel3):
            stage = []
            for i in range(blocks):
                # The first `k3` blocks of a stage use 3x3 (k3 is 0 or 1 for BagNets); the rest are 1x1.
                stage.append(Bottleneck(inplanes, planes, stride if i == 0 else 1, 3 if i < k3 else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(inplanes, num_classes)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        return torch.einsum("nchw,kc->nkhw", features, self.fc.weight) + self.fc.bias[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


RECEPTIVE_FIELDS = {"bagnet9": (1, 1, 0, 0), "bagnet17": (1, 1, 1, 0), "bagnet33": (1, 1, 1, 1)}


def _register(name: str, kernel3: tuple[int, int, int, int]) -> None:
    ARCHS.register(name)(lambda num_classes, **_: BagNet(kernel3, num_classes=num_classes))


for _name, _kernel3 in RECEPTIVE_FIELDS.items():
    _register(_name, _kernel3)
