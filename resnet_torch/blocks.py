"""d2l's ``Residual`` and ``resnet_block`` in PyTorch, with the suite's explicit options.

The names and positional arguments are d2l's; the keyword-only options (conv bias, shortcut
BatchNorm, BatchNorm eps and momentum) default to d2l's PyTorch values.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Residual(nn.Module):
    """The Residual block of ResNet: two 3x3 conv+BN, an optional 1x1 conv shortcut."""

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, conv_bias: bool = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides, bias=conv_bias)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=conv_bias)
        self.conv3 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides,
                                bias=conv_bias) if use_1x1conv else None)
        self.bn3 = (nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)
                    if use_1x1conv and shortcut_bn else None)
        self.bn1 = nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)
        self.bn2 = nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return F.relu(Y + X)


def resnet_block(input_channels: int, num_channels: int, num_residuals: int,
                 first_block: bool = False, **options) -> list[Residual]:
    """A ResNet stage: the first Residual halves height and width unless ``first_block``."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2,
                                **options))
        else:
            blk.append(Residual(num_channels, num_channels, **options))
    return blk
