"""d2l's ``Residual`` and ``resnet_block`` in PyTorch, the ``Bottleneck`` beside them, with the
suite's explicit options.

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

from common.core.spec import ConvBias, bias_by_kind, bottleneck_strides, same_padding


def batch_norm(num_channels: int, *, bn_eps: float = 1e-5, bn_momentum: float = 0.1
               ) -> nn.BatchNorm2d:
    """A BatchNorm over NCHW channels; ``bn_momentum`` is PyTorch's own convention (the weight
    of the new batch), the one the spec holds. PyTorch needs the channel count up front."""
    return nn.BatchNorm2d(num_channels, eps=bn_eps, momentum=bn_momentum)


def _same_pads(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """``F.pad``'s (left, right, top, bottom) for TensorFlow's padding='same' on NCHW ``x``."""
    (top, bottom), (left, right) = (same_padding(n, k, s) for n, k, s in
                                    zip(x.shape[-2:], kernel, stride))
    return [left, right, top, bottom]


class Conv2dSame(nn.Conv2d):
    """``Conv2d`` with TensorFlow's padding='same' (the spec's ``padding="same"``, d2l's Keras
    code): worked out from the input size at each call, so at stride 2 and an even size the
    extra row and column are the bottom and right ones. Weights and names are ``Conv2d``'s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, _same_pads(x, self.kernel_size, self.stride)))


class MaxPool2dSame(nn.MaxPool2d):
    """``MaxPool2d`` with TensorFlow's padding='same', padded with ``-inf``: padding never
    wins a max, as in Keras's own pool."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__(kernel_size, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = (self.kernel_size,) * 2, (self.stride,) * 2
        return super().forward(F.pad(x, _same_pads(x, k, s), value=float("-inf")))


def padded_conv(input_channels: int, num_channels: int, kernel_size: int, strides: int = 1, *,
                bias: bool = True, groups: int = 1, padding: str = "symmetric") -> nn.Conv2d:
    """A conv padded as ``padding`` says (:data:`common.core.spec.PADDINGS`): PyTorch's
    ``kernel_size // 2`` on each side, or TensorFlow's 'same' where that differs (a stride)."""
    if padding == "same" and strides != 1:
        return Conv2dSame(input_channels, num_channels, kernel_size, stride=strides, bias=bias,
                          groups=groups)
    return nn.Conv2d(input_channels, num_channels, kernel_size, stride=strides,
                     padding=kernel_size // 2, bias=bias, groups=groups)


def max_pool(padding: str = "symmetric") -> nn.MaxPool2d:
    """d2l's 3x3/2 max pool: padding 1 of ``-inf`` on each side, or TensorFlow's 'same'."""
    return MaxPool2dSame(3, 2) if padding == "same" else nn.MaxPool2d(3, stride=2, padding=1)


class Residual(nn.Module):
    """The Residual block of ResNet: two 3x3 conv+BN, an optional 1x1 conv shortcut."""

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, conv_bias: ConvBias = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 padding: str = "symmetric") -> None:
        super().__init__()
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.conv1 = padded_conv(input_channels, num_channels, 3, strides, bias=bias["3x3"],
                                 padding=padding)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=bias["3x3"])
        self.conv3 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides,
                                bias=bias["shortcut"]) if use_1x1conv else None)
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


class Bottleneck(nn.Module):
    """The bottleneck block of ResNet-50 and deeper: 1x1 conv down to ``bottleneck_channels``,
    3x3 conv (in ``groups``: ResNeXt), 1x1 conv up to ``num_channels``, each with BatchNorm;
    an optional 1x1 conv shortcut (``conv4``, ``bn4``). The stride sits on the 3x3 conv
    (``stride_at="3x3"``, v1.5) or on the first 1x1 (``"1x1"``, v1)."""

    def __init__(self, input_channels: int, num_channels: int, bottleneck_channels: int,
                 use_1x1conv: bool = False, strides: int = 1, *, groups: int = 1,
                 stride_at: str = "3x3", conv_bias: ConvBias = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 padding: str = "symmetric") -> None:
        super().__init__()
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        mid = bottleneck_channels
        s1, s3 = bottleneck_strides(stride_at, strides)
        self.conv1 = nn.Conv2d(input_channels, mid, kernel_size=1, stride=s1, bias=bias["1x1"])
        self.conv2 = padded_conv(mid, mid, 3, s3, groups=groups, bias=bias["3x3"], padding=padding)
        self.conv3 = nn.Conv2d(mid, num_channels, kernel_size=1, bias=bias["1x1"])
        self.conv4 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides,
                                bias=bias["shortcut"]) if use_1x1conv else None)
        self.bn1 = batch_norm(mid, **bn)
        self.bn2 = batch_norm(mid, **bn)
        self.bn3 = batch_norm(num_channels, **bn)
        self.bn4 = batch_norm(num_channels, **bn) if use_1x1conv and shortcut_bn else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.conv4(X)
            if self.bn4 is not None:
                X = self.bn4(X)
        return F.relu(Y + X)


class PreActResidual(nn.Module):
    """The pre-activation Residual block (v2; He et al., Identity Mappings in Deep Residual
    Networks; d2l's exercise): BatchNorm, ReLU, 3x3 conv, twice; the 1x1 conv shortcut
    (``conv3``) reads the normalised input; nothing after the sum."""

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, conv_bias: ConvBias = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric") -> None:
        super().__init__()
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.bn1 = batch_norm(input_channels, **bn)
        self.conv1 = padded_conv(input_channels, num_channels, 3, strides, bias=bias["3x3"],
                                 padding=padding)
        self.bn2 = batch_norm(num_channels, **bn)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1,
                               bias=bias["3x3"])
        self.conv3 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides,
                                bias=bias["shortcut"]) if use_1x1conv else None)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(X))
        if self.conv3 is not None:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck (v2): BatchNorm, ReLU, conv for each of its 1x1, 3x3
    (grouped) and 1x1 convs; the 1x1 conv shortcut (``conv4``) reads the normalised input."""

    def __init__(self, input_channels: int, num_channels: int, bottleneck_channels: int,
                 use_1x1conv: bool = False, strides: int = 1, *, groups: int = 1,
                 stride_at: str = "3x3", conv_bias: ConvBias = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric") -> None:
        super().__init__()
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        mid = bottleneck_channels
        s1, s3 = bottleneck_strides(stride_at, strides)
        self.bn1 = batch_norm(input_channels, **bn)
        self.conv1 = nn.Conv2d(input_channels, mid, kernel_size=1, stride=s1, bias=bias["1x1"])
        self.bn2 = batch_norm(mid, **bn)
        self.conv2 = padded_conv(mid, mid, 3, s3, groups=groups, bias=bias["3x3"], padding=padding)
        self.bn3 = batch_norm(mid, **bn)
        self.conv3 = nn.Conv2d(mid, num_channels, kernel_size=1, bias=bias["1x1"])
        self.conv4 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides,
                                bias=bias["shortcut"]) if use_1x1conv else None)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(X))
        if self.conv4 is not None:
            X = self.conv4(Y)
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        Y = self.conv3(F.relu(self.bn3(Y)))
        return Y + X


BLOCKS: dict[tuple[str, bool], type[nn.Module]] = {
    ("basic", False): Residual, ("bottleneck", False): Bottleneck,
    ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


def resnet_block(input_channels: int, num_channels: int, num_residuals: int,
                 first_block: bool = False, *, block: str = "basic", preact: bool = False,
                 **options: Any) -> list[nn.Module]:
    """A ResNet stage: the first block halves height and width unless ``first_block``, and gets
    a 1x1 conv shortcut where it changes the shape (for d2l's stages: exactly when it halves).

    ``block`` is ``"basic"`` (:class:`Residual`) or ``"bottleneck"`` (:class:`Bottleneck`,
    whose ``bottleneck_channels``, ``groups`` and ``stride_at`` come in ``options``); with
    ``preact``, their pre-activation twins (:data:`BLOCKS`). Returns
    a list, as d2l's PyTorch ``resnet_block`` does (``nn.Sequential(*resnet_block(...))`` makes
    the stage; :func:`resnet_torch.model.block_from_spec` does that).
    """
    make = BLOCKS[block, preact]
    blk = []
    for i in range(num_residuals):
        cin = input_channels if i == 0 else num_channels
        strides = 2 if i == 0 and not first_block else 1
        blk.append(make(cin, num_channels, use_1x1conv=strides != 1 or cin != num_channels,
                        strides=strides, **options))
    return blk
