"""The whole network as a plain ``nn.Module``, built from a :class:`common.ResNetSpec`."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from common.spec import ResidualSpec, ResnetBlockSpec, ResNetSpec, resnet18_spec

from .blocks import Residual, resnet_block


class ResNet(nn.Module):
    """d2l's ResNet: ``stem`` (b1), ``stages`` (b2..b5), ``head`` (pool, flatten, fc).

    Attribute names are the canonical layer names (``stem.conv``, ``stages.1.0.conv1``,
    ``head.fc``), so ``state_dict`` keys read like the canonical state.
    """

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        bn = dict(eps=spec.bn_eps, momentum=spec.bn_momentum)
        stem: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(spec.in_channels, spec.stem_channels, kernel_size=spec.stem_kernel,
                           stride=spec.stem_stride, padding=spec.stem_padding,
                           bias=spec.conv_bias),
            bn=nn.BatchNorm2d(spec.stem_channels, **bn),
            relu=nn.ReLU())
        if spec.stem_pool:
            stem["pool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stem = nn.Sequential(stem)
        self.stages = nn.Sequential(*(nn.Sequential(*block_from_spec(s)) for s in spec.stages()))
        self.head = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d((1, 1)),
            flatten=nn.Flatten(),
            fc=nn.Linear(spec.stage_channels[-1], spec.num_classes)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def residual_from_spec(spec: ResidualSpec) -> Residual:
    return Residual(spec.input_channels, spec.num_channels, spec.use_1x1conv, spec.strides,
                    **spec.options())


def block_from_spec(spec: ResnetBlockSpec) -> list[Residual]:
    return resnet_block(spec.input_channels, spec.num_channels, spec.num_residuals,
                        spec.first_block, **spec.options())


def resnet18(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNet:
    """d2l's ResNet-18 (1 input channel, 10 classes by default)."""
    return ResNet(resnet18_spec(in_channels, num_classes, **options))
