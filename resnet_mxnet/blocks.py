"""d2l's ``Residual`` and ``resnet_block`` in MXNet Gluon, with the suite's explicit options.

The names and positional arguments are d2l's Gluon ones (no input channel count: Gluon infers
it on the first call). ``in_channels`` is keyword-only and optional: leave it at 0 for d2l's
deferred initialisation, or give it to get parameters with known shapes straight after
``initialize()``. The other keyword-only options (conv bias, shortcut BatchNorm, BatchNorm eps
and momentum) default to d2l's values; ``bn_momentum`` is in PyTorch's convention (the weight of
the *new* batch), and is handed to Gluon as ``momentum=1 - bn_momentum``.
``resnet_torch.blocks`` and ``resnet_tf.blocks`` are the same module.

The blocks use the classic ``hybrid_forward(F, x)`` API (``mx.nd`` / ``mx.sym``), so they run
imperatively and hybridize, and never switch MXNet's global numpy mode (``npx.set_np()``).
"""

from __future__ import annotations

from typing import Any, Optional

from ._compat import gluon, nn


def batch_norm(num_channels: int = 0, *, bn_eps: float = 1e-5, bn_momentum: float = 0.1
               ) -> nn.BatchNorm:
    """A BatchNorm over NCHW channels; ``bn_momentum`` in PyTorch's convention (the weight of
    the new batch), handed to Gluon as ``momentum=1 - bn_momentum``. ``num_channels`` 0 leaves
    the count to Gluon's deferred initialisation."""
    return nn.BatchNorm(axis=1, epsilon=bn_eps, momentum=1.0 - bn_momentum,
                        in_channels=num_channels)


class Residual(gluon.HybridBlock):
    """The Residual block of ResNet: two 3x3 conv+BN, an optional 1x1 conv shortcut."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int = 0, conv_bias: bool = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        with self.name_scope():
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides,
                                   use_bias=conv_bias, in_channels=in_channels)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1, use_bias=conv_bias,
                                   in_channels=num_channels)
            self.conv3: Optional[nn.Conv2D] = (
                nn.Conv2D(num_channels, kernel_size=1, strides=strides, use_bias=conv_bias,
                          in_channels=in_channels) if use_1x1conv else None)
            self.bn1 = batch_norm(num_channels, **bn)
            self.bn2 = batch_norm(num_channels, **bn)
            self.bn3: Optional[nn.BatchNorm] = (
                batch_norm(num_channels, **bn) if use_1x1conv and shortcut_bn else None)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return F.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int = 0, **options: Any) -> nn.HybridSequential:
    """A ResNet stage: the first Residual halves height and width unless ``first_block``.

    ``in_channels`` is the stage's input channel count (0: inferred on the first call); every
    later Residual takes ``num_channels``. ``options`` go to each :class:`Residual`.
    """
    blk = nn.HybridSequential()
    with blk.name_scope():
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.add(Residual(num_channels, use_1x1conv=True, strides=2,
                                 in_channels=in_channels, **options))
            else:
                blk.add(Residual(num_channels, in_channels=in_channels if i == 0 else num_channels,
                                 **options))
    return blk
