"""The whole network as a subclassed ``keras.Model``, built from a :class:`common.ResNetSpec`.

Data inside Keras is NHWC (channels last), the idiomatic layout and the one CPU TensorFlow
convolves; the backend converts the suite's NCHW arrays at the edge.
"""

from __future__ import annotations

from typing import Any, Optional

import keras
from keras import layers, ops

from common.spec import ResidualSpec, ResnetBlockSpec, ResNetSpec, resnet18_spec, spec_from_dict

from .blocks import (
    PaddedConv2D,
    PaddedMaxPooling2D,
    Residual,
    ResnetBlock,
    batch_norm,
    resnet_block,
)

_PACKAGE = "resnet_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Stem(layers.Layer):
    """d2l's ``b1``: conv (PyTorch padding), BatchNorm, ReLU, optional 3x3/2 max pool."""

    def __init__(self, filters: int, kernel_size: int = 7, strides: int = 2, pool: bool = True,
                 *, conv_bias: bool = True, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(filters=filters, kernel_size=kernel_size, strides=strides, pool=pool,
                          conv_bias=conv_bias, bn_eps=bn_eps, bn_momentum=bn_momentum)
        dt = self.dtype_policy  # sublayers compute in the stem's dtype
        self.conv = PaddedConv2D(filters, kernel_size, strides=strides, use_bias=conv_bias,
                                 name="conv", dtype=dt)
        self.bn = batch_norm(bn_eps, bn_momentum, name="bn", dtype=dt)
        self.pool: Optional[PaddedMaxPooling2D] = (
            PaddedMaxPooling2D(3, strides=2, name="pool", dtype=dt) if pool else None)

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
    """Global average pool (kept 4-D, like PyTorch's ``AdaptiveAvgPool2d(1)``), flatten, dense."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        dt = self.dtype_policy
        self.pool = layers.GlobalAveragePooling2D(keepdims=True, name="pool", dtype=dt)
        self.flatten = layers.Flatten(name="flatten", dtype=dt)
        self.fc = layers.Dense(num_classes, name="fc", dtype=dt)

    def build(self, input_shape: tuple) -> None:
        self.fc.build((input_shape[0], input_shape[-1]))

    def call(self, x: Any) -> Any:
        return self.fc(self.flatten(self.pool(x)))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


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
        self.stem = Stem(spec.stem_channels, spec.stem_kernel, spec.stem_stride, spec.stem_pool,
                         conv_bias=spec.conv_bias, bn_eps=spec.bn_eps,
                         bn_momentum=spec.bn_momentum, name="stem", dtype=self.dtype_policy)
        self.stages = [block_from_spec(s, build=False, name=f"stages_{i}", dtype=self.dtype_policy)
                       for i, s in enumerate(spec.stages())]
        self.head = Head(spec.num_classes, name="head", dtype=self.dtype_policy)
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

    def forward_head(self, x: Any) -> Any:
        return self.head(x)

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        return self.forward_head(self.forward_features(x, training=training))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.spec.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": self.spec.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ResNet":
        config = dict(config)
        spec = spec_from_dict(config.pop("spec"))
        return cls(spec, **config)


def residual_from_spec(spec: ResidualSpec, *, build: bool = True, **kwargs: Any) -> Residual:
    """A :class:`Residual` for ``spec``, built for its input channels unless ``build=False``."""
    layer = Residual(spec.num_channels, spec.use_1x1conv, spec.strides, **spec.options(),
                     **kwargs)
    if build:
        layer.build((None, None, None, spec.input_channels))
    return layer


def block_from_spec(spec: ResnetBlockSpec, *, build: bool = True, **kwargs: Any) -> ResnetBlock:
    """A :class:`ResnetBlock` for ``spec``, built for its input channels unless ``build=False``."""
    block = resnet_block(spec.num_channels, spec.num_residuals, spec.first_block,
                         **spec.options(), **kwargs)
    if build:
        block.build((None, None, None, spec.input_channels))
    return block


def resnet18(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNet:
    """d2l's ResNet-18 (1 input channel, 10 classes by default), NHWC input."""
    return ResNet(resnet18_spec(in_channels, num_classes, **options))
