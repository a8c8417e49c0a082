"""d2l's ``Residual`` and ``resnet_block`` in PyTorch, with the suite's explicit options.

The names and positional arguments are d2l's PyTorch ones (the pre-1.0 edition, where
``Residual`` takes ``input_channels``); the keyword-only options (conv bias, shortcut BatchNorm,
BatchNorm eps and momentum) default to d2l's values. ``resnet_tf.blocks`` and
``resnet_mxnet.blocks`` are the same module in Keras and Gluon.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def batch_norm(num_channels: int, *, bn_eps: float = 1e-5, bn_momentum: float = 0.1
               ) -> nn.BatchNorm2d:
    """A BatchNorm over NCHW channels; ``bn_momentum`` is PyTorch's own convention (the weight
    of the new batch), the one the spec holds. PyTorch needs the channel count up front."""
    return nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)


class Residual(nn.Module):
    """The Residual block of ResNet: two 3x3 conv+BN, an optional 1x1 conv shortcut."""

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, conv_bias: bool = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides, bias=conv_bias)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=conv_bias)
        self.conv3 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides,
                                bias=conv_bias) if use_1x1conv else None)
        self.bn1 = batch_norm(num_channels, **bn)
        self.bn2 = batch_norm(num_channels, **bn)
        self.bn3 = batch_norm(num_channels, **bn) if use_1x1conv and shortcut_bn else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return F.relu(Y + X)


def resnet_block(input_channels: int, num_channels: int, num_residuals: int,
                 first_block: bool = False, **options: Any) -> list[Residual]:
    """A ResNet stage: the first Residual halves height and width unless ``first_block``.

    Returns a list, as d2l's PyTorch ``resnet_block`` does (``nn.Sequential(*resnet_block(...))``
    makes the stage; :func:`resnet_torch.model.block_from_spec` does that). ``options`` go to
    each :class:`Residual`.
    """
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2,
                                **options))
        else:
            blk.append(Residual(num_channels, num_channels, **options))
    return blk
