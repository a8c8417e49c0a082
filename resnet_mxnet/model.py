"""The whole network as a Gluon ``HybridBlock``, built from a :class:`common.ResNetSpec`.

``Stem``, ``Head`` and ``ResNet`` take Gluon's own block arguments (``prefix``, ``params``)
through ``kwargs``.
"""

from __future__ import annotations

from typing import Any, Optional

from common.core.spec import (
    BottleneckSpec,
    ConvBias,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    bias_by_kind,
    resnet18_spec,
)

from ._compat import gluon, nn
from .blocks import BLOCKS, _relu, batch_norm, max_pool, padded_conv, resnet_block


class Stem(gluon.HybridBlock):
    """d2l's ``b1``: ``conv`` (padding ``kernel_size // 2``), ``bn``, ReLU and, with ``pool``,
    a 3x3/2 max ``pool`` (padding 1); with ``padding="same"``, TensorFlow's padding instead.
    ``in_channels`` 0 defers the conv's shape to Gluon."""

    def __init__(self, num_channels: int, kernel_size: int = 7, strides: int = 2,
                 pool: bool = True, *, in_channels: int = 0, conv_bias: ConvBias = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, padding: str = "symmetric",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        with self.name_scope():
            self.conv = padded_conv(num_channels, kernel_size, strides, padding=padding,
                                    use_bias=bias["stem"], in_channels=in_channels)
            self.bn = batch_norm(num_channels, bn_eps=bn_eps, bn_momentum=bn_momentum)
            self.pool: Optional[nn.MaxPool2D] = max_pool(padding) if pool else None

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        x = _relu(F, self.bn(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class Head(gluon.HybridBlock):
    """Global average ``pool``, ``flatten`` and the ``fc`` classifier; with ``preact`` (v2), a
    BatchNorm ``bn`` and ReLU first: the pre-activation blocks' sums are never normalised
    inside the stages. ``in_channels`` 0 defers the shapes to Gluon."""

    def __init__(self, num_classes: int, *, in_channels: int = 0, preact: bool = False,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn: Optional[nn.BatchNorm] = (
                batch_norm(in_channels, bn_eps=bn_eps, bn_momentum=bn_momentum)
                if preact else None)
            self.pool = nn.GlobalAvgPool2D()
            self.flatten = nn.Flatten()
            self.fc = nn.Dense(num_classes, in_units=in_channels)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self.bn is not None:
            x = _relu(F, self.bn(x))
        return self.fc(self.flatten(self.pool(x)))


class ResNet(gluon.HybridBlock):
    """d2l's ResNet: ``stem`` (b1), ``stages`` (b2..b5), ``head`` (pool, flatten, fc).

    Attribute names are the canonical layer names (``stem.conv``, ``stages[1][0].conv1``,
    ``head.fc``); every layer is given its input channels, so ``initialize()`` allocates all
    parameters at once (no deferred shapes) and the model hybridizes as it is.
    """

    def __init__(self, spec: ResNetSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        with self.name_scope():
            self.stem = Stem(spec.stem_channels, spec.stem_kernel, spec.stem_stride,
                             spec.stem_pool, in_channels=spec.in_channels,
                             conv_bias=spec.conv_bias, bn_eps=spec.bn_eps,
                             bn_momentum=spec.bn_momentum, padding=spec.padding)
            self.stages = nn.HybridSequential()
            with self.stages.name_scope():
                for stage in spec.stages():
                    self.stages.add(block_from_spec(stage))
            self.head = Head(spec.num_classes, in_channels=spec.stage_channels[-1],
                             preact=spec.preact, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)

    def forward_features(self, x: Any) -> Any:
        """Stem and stages: the last feature map (imperative or symbolic)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Any) -> Any:
        return self.head(x)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.forward_head(self.forward_features(x))


def residual_from_spec(spec: ResidualSpec) -> gluon.HybridBlock:
    """One :class:`Residual` (or, ``preact``, :class:`PreActResidual`) for ``spec``, its input
    channels given (no deferred shapes)."""
    make = BLOCKS["basic", spec.preact]
    return make(spec.num_channels, spec.use_1x1conv, spec.strides,
                in_channels=spec.input_channels, **spec.layer_options())


def bottleneck_from_spec(spec: BottleneckSpec) -> gluon.HybridBlock:
    """One :class:`Bottleneck` (or, ``preact``, :class:`PreActBottleneck`) for ``spec``, its
    input channels given (no deferred shapes)."""
    make = BLOCKS["bottleneck", spec.preact]
    return make(spec.num_channels, spec.bottleneck_channels, spec.use_1x1conv, spec.strides,
                in_channels=spec.input_channels, groups=spec.groups, stride_at=spec.stride_at,
                **spec.layer_options())


def block_from_spec(spec: ResnetBlockSpec) -> nn.HybridSequential:
    """One stage for ``spec``: a ``HybridSequential`` of blocks, ``stage[i]`` the i-th,
    its input channels given (no deferred shapes)."""
    return resnet_block(spec.num_channels, spec.num_residuals, spec.first_block,
                        in_channels=spec.input_channels, block=spec.block, preact=spec.preact,
                        **spec.block_options(), **spec.layer_options())


def resnet18(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNet:
    """d2l's ResNet-18 (1 input channel, 10 classes by default); call ``initialize()`` next."""
    return ResNet(resnet18_spec(in_channels, num_classes, **options))
