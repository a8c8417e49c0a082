"""The whole network as a Gluon ``HybridBlock``, built from a :class:`common.ResNetSpec`."""

from __future__ import annotations

from typing import Any

from common.spec import ResidualSpec, ResnetBlockSpec, ResNetSpec, resnet18_spec

from ._compat import gluon, nn
from .blocks import Residual, batch_norm, resnet_block


class Stem(gluon.HybridBlock):
    """d2l's b1: ``conv`` (7x7/2), ``bn``, ``relu`` and, if the spec asks, ``pool`` (3x3/2)."""

    def __init__(self, spec: ResNetSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(spec.stem_channels, kernel_size=spec.stem_kernel,
                                  strides=spec.stem_stride, padding=spec.stem_padding,
                                  use_bias=spec.conv_bias, in_channels=spec.in_channels)
            self.bn = batch_norm(spec.stem_channels, bn_eps=spec.bn_eps,
                                 bn_momentum=spec.bn_momentum)
            self.relu = nn.Activation("relu")
            self.pool = (nn.MaxPool2D(pool_size=3, strides=2, padding=1)
                         if spec.stem_pool else None)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        x = self.relu(self.bn(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class Head(gluon.HybridBlock):
    """Global average pool, flatten, and the ``fc`` classifier."""

    def __init__(self, in_units: int, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.pool = nn.GlobalAvgPool2D()
            self.flatten = nn.Flatten()
            self.fc = nn.Dense(num_classes, in_units=in_units)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
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
            self.stem = Stem(spec)
            self.stages = nn.HybridSequential()
            with self.stages.name_scope():
                for stage in spec.stages():
                    self.stages.add(block_from_spec(stage))
            self.head = Head(spec.stage_channels[-1], spec.num_classes)

    def forward_features(self, x: Any) -> Any:
        """Stem and stages: the last feature map (imperative or symbolic)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Any) -> Any:
        return self.head(x)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.forward_head(self.forward_features(x))


def residual_from_spec(spec: ResidualSpec) -> Residual:
    return Residual(spec.num_channels, spec.use_1x1conv, spec.strides,
                    in_channels=spec.input_channels, **spec.options())


def block_from_spec(spec: ResnetBlockSpec) -> nn.HybridSequential:
    return resnet_block(spec.num_channels, spec.num_residuals, spec.first_block,
                        in_channels=spec.input_channels, **spec.options())


def resnet18(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNet:
    """d2l's ResNet-18 (1 input channel, 10 classes by default); call ``initialize()`` next."""
    return ResNet(resnet18_spec(in_channels, num_classes, **options))
