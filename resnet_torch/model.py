"""The whole network as a plain ``nn.Module``, built from a :class:`common.ResNetSpec`."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from common.core.spec import (
    BottleneckSpec,
    ConvBias,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    bias_by_kind,
    resnet18_spec,
)

from .blocks import BLOCKS, batch_norm, max_pool, padded_conv, resnet_block


class Stem(nn.Module):
    """d2l's ``b1``: ``conv`` (padding ``kernel_size // 2``), ``bn``, ReLU and, with ``pool``,
    a 3x3/2 max ``pool`` (padding 1); with ``padding="same"``, TensorFlow's padding instead."""

    def __init__(self, input_channels: int, num_channels: int, kernel_size: int = 7,
                 strides: int = 2, pool: bool = True, *, conv_bias: ConvBias = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, padding: str = "symmetric") -> None:
        super().__init__()
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        self.conv = padded_conv(input_channels, num_channels, kernel_size, strides,
                                bias=bias["stem"], padding=padding)
        self.bn = batch_norm(num_channels, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.pool: Optional[nn.MaxPool2d] = max_pool(padding) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class Head(nn.Module):
    """Global average ``pool`` (kept 4-D), ``flatten`` and the ``fc`` classifier; with
    ``preact`` (v2), a BatchNorm ``bn`` and ReLU first: the pre-activation blocks' sums are
    never normalised inside the stages."""

    def __init__(self, input_channels: int, num_classes: int, *, preact: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.bn: Optional[nn.BatchNorm2d] = (
            batch_norm(input_channels, bn_eps=bn_eps, bn_momentum=bn_momentum) if preact else None)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(input_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return self.fc(self.flatten(self.pool(x)))


class ResNet(nn.Module):
    """d2l's ResNet: ``stem`` (b1), ``stages`` (b2..b5), ``head`` (pool, flatten, fc).

    Attribute names are the canonical layer names (``stem.conv``, ``stages.1.0.conv1``,
    ``head.fc``), so ``state_dict`` keys read like the canonical state.
    """

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.in_channels, spec.stem_channels, spec.stem_kernel, spec.stem_stride,
                         spec.stem_pool, conv_bias=spec.conv_bias, bn_eps=spec.bn_eps,
                         bn_momentum=spec.bn_momentum, padding=spec.padding)
        self.stages = nn.Sequential(*(block_from_spec(s) for s in spec.stages()))
        self.head = Head(spec.stage_channels[-1], spec.num_classes, preact=spec.preact,
                         bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: the last feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def residual_from_spec(spec: ResidualSpec) -> nn.Module:
    """One :class:`Residual` (or, ``preact``, :class:`PreActResidual`) for ``spec``."""
    make = BLOCKS["basic", spec.preact]
    return make(spec.input_channels, spec.num_channels, spec.use_1x1conv, spec.strides,
                **spec.layer_options())


def bottleneck_from_spec(spec: BottleneckSpec) -> nn.Module:
    """One :class:`Bottleneck` (or, ``preact``, :class:`PreActBottleneck`) for ``spec``."""
    make = BLOCKS["bottleneck", spec.preact]
    return make(spec.input_channels, spec.num_channels, spec.bottleneck_channels,
                spec.use_1x1conv, spec.strides, groups=spec.groups, stride_at=spec.stride_at,
                **spec.layer_options())


def block_from_spec(spec: ResnetBlockSpec) -> nn.Sequential:
    """One stage for ``spec``: an ``nn.Sequential`` of blocks, ``stage[i]`` the i-th."""
    return nn.Sequential(*resnet_block(spec.input_channels, spec.num_channels,
                                       spec.num_residuals, spec.first_block, block=spec.block,
                                       preact=spec.preact, **spec.block_options(),
                                       **spec.layer_options()))


def resnet18(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNet:
    """d2l's ResNet-18 (1 input channel, 10 classes by default)."""
    return ResNet(resnet18_spec(in_channels, num_classes, **options))
