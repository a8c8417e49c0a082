"""d2l's ``Residual`` and ``resnet_block`` in MXNet Gluon, the ``Bottleneck`` beside them, with
the suite's explicit options.

The names and positional arguments are d2l's Gluon ones (no input channel count: Gluon infers
it on the first call). ``in_channels`` is keyword-only and optional: leave it at 0 for d2l's
deferred initialisation, or give it to get parameters with known shapes straight after
``initialize()``. The other keyword-only options (conv bias, shortcut BatchNorm, BatchNorm eps
and momentum, padding) default to d2l's values; ``bn_momentum`` is in PyTorch's convention (the weight of
the *new* batch), and is handed to Gluon as ``momentum=1 - bn_momentum``.
``resnet_torch.blocks`` and ``resnet_tf.blocks`` are the same module.

The blocks use the classic ``hybrid_forward(F, x)`` API (``mx.nd`` / ``mx.sym``), so they run
imperatively and hybridize, and never switch MXNet's global numpy mode (``npx.set_np()``).
"""

from __future__ import annotations

from typing import Any, Optional

from common.core.spec import ConvBias, bias_by_kind, bottleneck_strides

from ._compat import gluon, nn


def batch_norm(num_channels: int = 0, *, bn_eps: float = 1e-5, bn_momentum: float = 0.1
               ) -> nn.BatchNorm:
    """A BatchNorm over NCHW channels; ``bn_momentum`` in PyTorch's convention (the weight of
    the new batch), handed to Gluon as ``momentum=1 - bn_momentum``. ``num_channels`` 0 leaves
    the count to Gluon's deferred initialisation."""
    return nn.BatchNorm(axis=1, epsilon=bn_eps, momentum=1.0 - bn_momentum,
                        in_channels=num_channels)


def _relu(F: Any, x: Any) -> Any:
    """ReLU as Gluon's model zoo spells it: MXNet 1.9 runs ``Activation(act_type='relu')`` in
    oneDNN and fuses it into the conv before it, while ``F.relu`` converts the tensor to plain
    NCHW and back (measured: a quarter of a hybridized ResNet-50's forward time on 2 cores)."""
    return F.Activation(x, act_type="relu")


def _same_pad(F: Any, x: Any, kernel: int, value: float = 0.0) -> Any:
    """TensorFlow's padding='same' for an odd ``kernel`` at stride 2, written so it hybridizes
    (a symbol has no shape to compute pad widths from): pad ``kernel // 2`` on every side, then
    drop the first row and column where the input size is even, which leaves the padding
    ``kernel // 2 - 1`` before and ``kernel // 2`` after, as Keras has it. The dropped row is
    replaced by a copy of the last one ('clip'), which a stride-2 window never reaches."""
    p = kernel // 2
    x_p = F.pad(x, mode="constant", constant_value=value, pad_width=(0, 0, 0, 0, p, p, p, p))
    shape = F.shape_array(x)
    for axis in (2, 3):
        even = 1 - F.slice_axis(shape, axis=0, begin=axis, end=axis + 1) % 2
        index = F.broadcast_add(F.cast(F.contrib.arange_like(x_p, axis=axis), "int64"), even)
        x_p = F.take(x_p, index, axis=axis, mode="clip")
    return x_p


class Conv2DSame(nn.Conv2D):
    """``Conv2D`` with TensorFlow's padding='same' at stride 2 (the spec's ``padding="same"``,
    d2l's Keras code): at an even size the extra row and column are the bottom and right ones.
    Parameters and names are ``Conv2D``'s."""

    def __init__(self, channels: int, kernel_size: int, strides: int = 2, **kwargs: Any) -> None:
        if strides != 2 or kernel_size % 2 == 0:
            raise ValueError(f"Conv2DSame pads an odd kernel at stride 2, got kernel_size="
                             f"{kernel_size}, strides={strides}")
        super().__init__(channels, kernel_size, strides=strides, padding=0, **kwargs)
        self._same = kernel_size

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        return super().hybrid_forward(F, _same_pad(F, x, self._same), weight, bias)


class MaxPool2DSame(nn.MaxPool2D):
    """d2l's 3x3/2 max pool with TensorFlow's padding='same', padded with ``-inf`` so that
    padding never wins a max."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(pool_size=3, strides=2, padding=0, **kwargs)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return super().hybrid_forward(F, _same_pad(F, x, 3, float("-inf")))


def padded_conv(num_channels: int, kernel_size: int, strides: int = 1, *,
                padding: str = "symmetric", **kwargs: Any) -> nn.Conv2D:
    """A conv padded as ``padding`` says (:data:`common.core.spec.PADDINGS`): ``kernel_size
    // 2`` on each side, or TensorFlow's 'same' where that differs (a stride)."""
    if padding == "same" and strides != 1:
        return Conv2DSame(num_channels, kernel_size, strides, **kwargs)
    return nn.Conv2D(num_channels, kernel_size=kernel_size, strides=strides,
                     padding=kernel_size // 2, **kwargs)


def max_pool(padding: str = "symmetric") -> nn.MaxPool2D:
    """d2l's 3x3/2 max pool: padding 1 (of ``-inf``) on each side, or TensorFlow's 'same'."""
    return MaxPool2DSame() if padding == "same" else nn.MaxPool2D(pool_size=3, strides=2, padding=1)


class Residual(gluon.HybridBlock):
    """The Residual block of ResNet: two 3x3 conv+BN, an optional 1x1 conv shortcut."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int = 0, conv_bias: ConvBias = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, padding: str = "symmetric",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        with self.name_scope():
            self.conv1 = padded_conv(num_channels, 3, strides, padding=padding,
                                     use_bias=bias["3x3"], in_channels=in_channels)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1, use_bias=bias["3x3"],
                                   in_channels=num_channels)
            self.conv3: Optional[nn.Conv2D] = (
                nn.Conv2D(num_channels, kernel_size=1, strides=strides, use_bias=bias["shortcut"],
                          in_channels=in_channels) if use_1x1conv else None)
            self.bn1 = batch_norm(num_channels, **bn)
            self.bn2 = batch_norm(num_channels, **bn)
            self.bn3: Optional[nn.BatchNorm] = (
                batch_norm(num_channels, **bn) if use_1x1conv and shortcut_bn else None)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X)
        return _relu(F, Y + X)


class Bottleneck(gluon.HybridBlock):
    """The bottleneck block of ResNet-50 and deeper: 1x1 conv down to ``bottleneck_channels``,
    3x3 conv (in ``groups``: ResNeXt), 1x1 conv up to ``num_channels``, each with BatchNorm;
    an optional 1x1 conv shortcut (``conv4``, ``bn4``). The stride sits on the 3x3 conv
    (``stride_at="3x3"``, v1.5) or on the first 1x1 (``"1x1"``, v1)."""

    def __init__(self, num_channels: int, bottleneck_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, in_channels: int = 0, groups: int = 1,
                 stride_at: str = "3x3", conv_bias: ConvBias = True, shortcut_bn: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, padding: str = "symmetric",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        mid = bottleneck_channels
        s1, s3 = bottleneck_strides(stride_at, strides)
        with self.name_scope():
            self.conv1 = nn.Conv2D(mid, kernel_size=1, strides=s1, use_bias=bias["1x1"],
                                   in_channels=in_channels)
            self.conv2 = padded_conv(mid, 3, s3, padding=padding, groups=groups,
                                     use_bias=bias["3x3"], in_channels=mid)
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, use_bias=bias["1x1"],
                                   in_channels=mid)
            self.conv4: Optional[nn.Conv2D] = (
                nn.Conv2D(num_channels, kernel_size=1, strides=strides, use_bias=bias["shortcut"],
                          in_channels=in_channels) if use_1x1conv else None)
            self.bn1 = batch_norm(mid, **bn)
            self.bn2 = batch_norm(mid, **bn)
            self.bn3 = batch_norm(num_channels, **bn)
            self.bn4: Optional[nn.BatchNorm] = (
                batch_norm(num_channels, **bn) if use_1x1conv and shortcut_bn else None)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = _relu(F, self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.conv4(X)
            if self.bn4 is not None:
                X = self.bn4(X)
        return _relu(F, Y + X)


class PreActResidual(gluon.HybridBlock):
    """The pre-activation Residual block (v2; He et al., Identity Mappings in Deep Residual
    Networks; d2l's exercise): BatchNorm, ReLU, 3x3 conv, twice; the 1x1 conv shortcut
    (``conv3``) reads the normalised input; nothing after the sum."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int = 0, conv_bias: ConvBias = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        with self.name_scope():
            self.bn1 = batch_norm(in_channels, **bn)
            self.conv1 = padded_conv(num_channels, 3, strides, padding=padding,
                                     use_bias=bias["3x3"], in_channels=in_channels)
            self.bn2 = batch_norm(num_channels, **bn)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1, use_bias=bias["3x3"],
                                   in_channels=num_channels)
            self.conv3: Optional[nn.Conv2D] = (
                nn.Conv2D(num_channels, kernel_size=1, strides=strides, use_bias=bias["shortcut"],
                          in_channels=in_channels) if use_1x1conv else None)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(X))
        if self.conv3 is not None:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(_relu(F, self.bn2(Y)))
        return Y + X


class PreActBottleneck(gluon.HybridBlock):
    """The pre-activation bottleneck (v2): BatchNorm, ReLU, conv for each of its 1x1, 3x3
    (grouped) and 1x1 convs; the 1x1 conv shortcut (``conv4``) reads the normalised input."""

    def __init__(self, num_channels: int, bottleneck_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, in_channels: int = 0, groups: int = 1,
                 stride_at: str = "3x3", conv_bias: ConvBias = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        mid = bottleneck_channels
        s1, s3 = bottleneck_strides(stride_at, strides)
        with self.name_scope():
            self.bn1 = batch_norm(in_channels, **bn)
            self.conv1 = nn.Conv2D(mid, kernel_size=1, strides=s1, use_bias=bias["1x1"],
                                   in_channels=in_channels)
            self.bn2 = batch_norm(mid, **bn)
            self.conv2 = padded_conv(mid, 3, s3, padding=padding, groups=groups,
                                     use_bias=bias["3x3"], in_channels=mid)
            self.bn3 = batch_norm(mid, **bn)
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, use_bias=bias["1x1"],
                                   in_channels=mid)
            self.conv4: Optional[nn.Conv2D] = (
                nn.Conv2D(num_channels, kernel_size=1, strides=strides, use_bias=bias["shortcut"],
                          in_channels=in_channels) if use_1x1conv else None)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(X))
        if self.conv4 is not None:
            X = self.conv4(Y)
        Y = self.conv1(Y)
        Y = self.conv2(_relu(F, self.bn2(Y)))
        Y = self.conv3(_relu(F, self.bn3(Y)))
        return Y + X


BLOCKS: dict[tuple[str, bool], type[gluon.HybridBlock]] = {
    ("basic", False): Residual, ("bottleneck", False): Bottleneck,
    ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int = 0, block: str = "basic", preact: bool = False,
                 **options: Any) -> nn.HybridSequential:
    """A ResNet stage: the first block halves height and width unless ``first_block``, and gets
    a 1x1 conv shortcut where it changes the shape.

    ``in_channels`` is the stage's input channel count: given, parameters have their shapes at
    ``initialize()`` and a first stage that widens (as every bottleneck network's does) gets
    its shortcut; 0 leaves shapes to Gluon's first call and gives the first block a shortcut
    exactly when it downsamples, as in d2l. ``block`` is ``"basic"`` (:class:`Residual`) or
    ``"bottleneck"`` (:class:`Bottleneck`, whose ``bottleneck_channels``, ``groups`` and
    ``stride_at`` come in ``options``); with ``preact``, their pre-activation twins
    (:data:`BLOCKS`).
    """
    make = BLOCKS[block, preact]
    blk = nn.HybridSequential()
    with blk.name_scope():
        for i in range(num_residuals):
            cin = in_channels if i == 0 else num_channels
            strides = 2 if i == 0 and not first_block else 1
            widens = cin not in (0, num_channels)
            blk.add(make(num_channels, use_1x1conv=strides != 1 or widens, strides=strides,
                         in_channels=cin, **options))
    return blk
