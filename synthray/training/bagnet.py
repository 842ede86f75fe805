"""BagNet-9/17/33 (Brendel & Bethge, ICLR 2019) as the study builds them (its classifier/bag_net.py).

A ResNet-50 layout ([3, 4, 6, 3] bottlenecks, strides [2, 2, 2, 1]) in which every convolution is 1x1 except the
stem's second conv and the first block of the first 2, 3 or 4 stages: 3x3 with no padding. Each output location
therefore sees one 9, 17 or 33 px patch, and the class evidence of an image is the average of its patches'
logits: a texture probe with no global shape. timm has no BagNet.

Everything that changes the weights or the function follows the study's file: module names (`conv1`, `conv2`,
`bn1`, `layer1..4`, `fc`, so its checkpoints load as they are), construction order (the shortcut is built before
its block, so one seed gives the same draws), the stem BatchNorm's momentum 0.001, the normal(0, sqrt(2/n)) conv
init with n = kh * kw * out_channels, BatchNorm weight 1 and bias 0, the bottom-right crop of the shortcut, and
average pooling over the whole final map before `fc` (PyTorch's default Linear init, which the study keeps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STEM_BN_MOMENTUM = 0.001  # the study's `nn.BatchNorm2d(64, momentum=0.001)`; every other BatchNorm keeps 0.1


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, kernel_size: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # padding=0, not (kernel_size - 1) // 2: the unpadded 3x3 is what bounds the receptive field.
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=kernel_size, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        # The unpadded 3x3 shrinks the map; the shortcut loses its last rows and columns to match (the study
        # crops both sides by the width difference, the same thing on the square maps it trains on).
        dh, dw = residual.shape[-2] - out.shape[-2], residual.shape[-1] - out.shape[-1]
        if dh or dw:
            residual = residual[:, :, : residual.shape[-2] - dh, : residual.shape[-1] - dw]
        return self.relu(out + residual)


class BagNet(nn.Module):
    """(N, 3, H, W) -> logits (N, num_classes); `patch_logits` gives the (N, num_classes, h, w) map before pooling."""

    def __init__(self, kernel3: tuple[int, int, int, int], num_classes: int = 1000, layers=(3, 4, 6, 3), strides=(2, 2, 2, 1)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=STEM_BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(64, layers[0], strides[0], kernel3[0])
        self.layer2 = self._make_layer(128, layers[1], strides[1], kernel3[1])
        self.layer3 = self._make_layer(256, layers[2], strides[2], kernel3[2])
        self.layer4 = self._make_layer(512, layers[3], strides[3], kernel3[3])
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, planes: int, blocks: int, stride: int, kernel3: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        # The first `kernel3` blocks of a stage use 3x3 (kernel3 is 0 or 1 for BagNets); the rest are 1x1.
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, kernel_size=1 if kernel3 == 0 else 3)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, kernel_size=1 if kernel3 <= i else 3) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kc->nkhw", self.features(x), self.fc.weight) + self.fc.bias[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # The study's `nn.AvgPool2d(x.size()[2], stride=1)`: one window over the whole (square) final map.
        return self.fc(F.avg_pool2d(x, kernel_size=x.shape[-2:], stride=1).flatten(1))


RECEPTIVE_FIELDS = {"bagnet9": (1, 1, 0, 0), "bagnet17": (1, 1, 1, 0), "bagnet33": (1, 1, 1, 1)}


# 2: the study's stem BatchNorm momentum (0.001) and conv init; models and results of version 1 are not reused.
VERSION = 2
