"""The whole network as a subclassed ``keras.Model``, built from a :class:`common.ResNetSpec`.

Data inside Keras is NHWC (channels last), the idiomatic layout and the one CPU TensorFlow
convolves; ``resnet_tf._layout`` converts the suite's NCHW arrays at the edge. Every layer,
and unlike their twins ``residual_from_spec`` and ``block_from_spec`` too, takes Keras's own
keyword arguments (``name``, ``dtype``) through ``kwargs``: a Keras layer's dtype is fixed when
it is made, while PyTorch and Gluon cast a built model.
"""

from __future__ import annotations

from typing import Any, Optional

import keras
from keras import layers, ops

from common.core.spec import (
    BottleneckSpec,
    ConvBias,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    bias_by_kind,
    resnet18_spec,
    spec_from_dict,
)

from .blocks import (
    BLOCKS,
    PaddedMaxPooling2D,
    ResnetBlock,
    batch_norm,
    max_pool,
    padded_conv,
    resnet_block,
)

_PACKAGE = "resnet_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Stem(layers.Layer):
    """d2l's ``b1``: ``conv`` (padding ``kernel_size // 2`` on each side, as PyTorch's), ``bn``,
    ReLU and, with ``pool``, a 3x3/2 max ``pool`` (padding 1 of ``-inf``)."""

    def __init__(self, num_channels: int, kernel_size: int = 7, strides: int = 2,
                 pool: bool = True, *, conv_bias: ConvBias = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        self._args = dict(num_channels=num_channels, kernel_size=kernel_size, strides=strides,
                          pool=pool, conv_bias=conv_bias, bn_eps=bn_eps, bn_momentum=bn_momentum,
                          padding=padding)
        dt = self.dtype_policy  # sublayers compute in the stem's dtype
        self.conv = padded_conv(num_channels, kernel_size, strides, padding=padding,
                                use_bias=bias["stem"], name="conv", dtype=dt)
        self.bn = batch_norm(bn_eps=bn_eps, bn_momentum=bn_momentum, name="bn", dtype=dt)
        self.pool: Optional[PaddedMaxPooling2D] = (
            max_pool(padding, name="pool", dtype=dt) if pool else None)

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        x = ops.relu(self.bn(self.conv(x), training=training))
        return x if self.pool is None else self.pool(x)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        shape = self.conv.compute_output_shape(input_shape)
        return shape if self.pool is None else self.pool.compute_output_shape(shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Head(layers.Layer):
    """Global average ``pool`` (kept 4-D, like PyTorch's ``AdaptiveAvgPool2d(1)``), ``flatten``
    and the ``fc`` classifier; with ``preact`` (v2), a BatchNorm ``bn`` and ReLU first: the
    pre-activation blocks' sums are never normalised inside the stages."""

    def __init__(self, num_classes: int, *, preact: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(num_classes=num_classes, preact=preact, bn_eps=bn_eps,
                          bn_momentum=bn_momentum)
        self.num_classes = num_classes
        dt = self.dtype_policy
        self.bn: Optional[layers.BatchNormalization] = (
            batch_norm(bn_eps=bn_eps, bn_momentum=bn_momentum, name="bn", dtype=dt)
            if preact else None)
        self.pool = layers.GlobalAveragePooling2D(keepdims=True, name="pool", dtype=dt)
        self.flatten = layers.Flatten(name="flatten", dtype=dt)
        self.fc = layers.Dense(num_classes, name="fc", dtype=dt)

    def build(self, input_shape: tuple) -> None:
        if self.bn is not None:
            self.bn.build(input_shape)
        self.fc.build((input_shape[0], input_shape[-1]))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        if self.bn is not None:
            x = ops.relu(self.bn(x, training=training))
        return self.fc(self.flatten(self.pool(x)))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResNet(keras.Model):
    """d2l's ResNet: ``stem`` (b1), ``stages`` (b2..b5), ``head`` (pool, flatten, fc).

    Attribute names are the canonical layer names (``stem.conv``, ``stages[1][0].conv1``,
    ``head.fc``), as in the PyTorch twin. Weights exist as soon as the model is constructed
    (built for ``spec.in_channels`` channels, any height and width), so it exports, loads and
    saves straight away. Input is NHWC.
    """

    def __init__(self, spec: ResNetSpec, **kwargs: Any) -> None:
        if not isinstance(spec, ResNetSpec):
            raise TypeError(f"ResNet takes a ResNetSpec, got {type(spec).__name__}")
        kwargs.setdefault("name", spec.name)
        super().__init__(**kwargs)
        self.spec = spec
        dt = self.dtype_policy  # every layer computes in the model's dtype
        self.stem = Stem(spec.stem_channels, spec.stem_kernel, spec.stem_stride, spec.stem_pool,
                         conv_bias=spec.conv_bias, bn_eps=spec.bn_eps,
                         bn_momentum=spec.bn_momentum, padding=spec.padding, name="stem", dtype=dt)
        # Unlike its twins, ResNet does not take its stages from block_from_spec, which builds
        # them at once: built here, in the model's build, their weight paths carry the model's
        # name ("resnet18/stages.1/0/conv3/kernel").
        self.stages = [resnet_block(s.num_channels, s.num_residuals, s.first_block,
                                    in_channels=s.input_channels, block=s.block,
                                    preact=s.preact, **s.block_options(), **s.layer_options(),
                                    name=f"stages.{i}", dtype=dt)
                       for i, s in enumerate(spec.stages())]
        self.head = Head(spec.num_classes, preact=spec.preact, bn_eps=spec.bn_eps,
                         bn_momentum=spec.bn_momentum, name="head", dtype=dt)
        self.build((None, None, None, spec.in_channels))

    def build(self, input_shape: tuple) -> None:
        self.stem.build(input_shape)
        shape = self.stem.compute_output_shape(input_shape)
        for stage in self.stages:
            stage.build(shape)
            shape = stage.compute_output_shape(shape)
        self.head.build(shape)

    def forward_features(self, x: Any, training: Optional[bool] = None) -> Any:
        x = self.stem(x, training=training)
        for stage in self.stages:
            x = stage(x, training=training)
        return x

    def forward_head(self, x: Any, training: Optional[bool] = None) -> Any:
        return self.head(x, training=training)

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        return self.forward_head(self.forward_features(x, training=training), training=training)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.spec.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": self.spec.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ResNet":
        config = dict(config)
        spec = spec_from_dict(config.pop("spec"))
        return cls(spec, **config)


def residual_from_spec(spec: ResidualSpec, **kwargs: Any) -> layers.Layer:
    """One :class:`Residual` (or, ``preact``, :class:`PreActResidual`) for ``spec``, built for
    its input channels (its weights exist)."""
    make = BLOCKS["basic", spec.preact]
    layer = make(spec.num_channels, spec.use_1x1conv, spec.strides, **spec.layer_options(),
                 **kwargs)
    layer.build((None, None, None, spec.input_channels))
    return layer


def bottleneck_from_spec(spec: BottleneckSpec, **kwargs: Any) -> layers.Layer:
    """One :class:`Bottleneck` (or, ``preact``, :class:`PreActBottleneck`) for ``spec``, built
    for its input channels (its weights exist)."""
    make = BLOCKS["bottleneck", spec.preact]
    layer = make(spec.num_channels, spec.bottleneck_channels, spec.use_1x1conv, spec.strides,
                 groups=spec.groups, stride_at=spec.stride_at, **spec.layer_options(), **kwargs)
    layer.build((None, None, None, spec.input_channels))
    return layer


def block_from_spec(spec: ResnetBlockSpec, **kwargs: Any) -> ResnetBlock:
    """One stage for ``spec``: a :class:`ResnetBlock`, ``stage[i]`` the i-th block, built
    for its input channels (its weights exist)."""
    block = resnet_block(spec.num_channels, spec.num_residuals, spec.first_block,
                         in_channels=spec.input_channels, block=spec.block, preact=spec.preact,
                         **spec.block_options(), **spec.layer_options(), **kwargs)
    block.build((None, None, None, spec.input_channels))
    return block


def resnet18(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNet:
    """d2l's ResNet-18 (1 input channel, 10 classes by default), NHWC input."""
    return ResNet(resnet18_spec(in_channels, num_classes, **options))
