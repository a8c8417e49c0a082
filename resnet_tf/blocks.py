"""d2l's ``Residual`` and ``resnet_block`` in Keras 3, the ``Bottleneck`` beside them, with the
suite's explicit options.

The names and positional arguments are d2l's Keras ones (``Residual(num_channels, ...)``,
``ResnetBlock(num_channels, num_residuals, first_block=False)``: Keras infers input channels);
the keyword-only options (conv bias, shortcut BatchNorm, BatchNorm eps and momentum, padding)
default to d2l's PyTorch values, so the block is PyTorch's function, not the d2l Keras code's;
``padding="same"``, ``bn_eps=1e-3`` and ``bn_momentum=0.01`` make it the Keras code's.
``resnet_torch.blocks`` and ``resnet_mxnet.blocks`` are the same module. Two layers, which have
no twin because only Keras needs them, fix what differs:

* :class:`PaddedConv2D` pads ``kernel_size // 2`` zeros on *each* side like PyTorch's
  ``padding=k//2``; Keras's ``padding='same'`` puts the extra row and column of a stride-2
  convolution at the bottom/right only.
* :class:`PaddedMaxPooling2D` does the same for max pooling, padding with ``-inf``.

Momentum is given in PyTorch's convention (the weight of the *new* batch); Keras's
``BatchNormalization(momentum=...)`` is the weight of the *old* value, so it gets ``1 - m``.
"""

from __future__ import annotations

from typing import Any, Optional

import keras
from keras import layers, ops

from common.core.spec import ConvBias, bias_by_kind, bottleneck_strides

_PACKAGE = "resnet_tf"


def _odd_pair(value: Any, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(k % 2 == 0 for k in pair):
        raise ValueError(f"{what} must be odd (PyTorch's padding=k//2 is symmetric only then), "
                         f"got {value!r}")
    return pair


def _pad_spatial(x: Any, pad: tuple[int, int], data_format: str, value: float = 0.0) -> Any:
    """Pad height and width of an NHWC (or NCHW) tensor by ``pad`` on each side."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    spatial = [[ph, ph], [pw, pw]]
    widths = ([[0, 0]] + spatial + [[0, 0]] if data_format == "channels_last"
              else [[0, 0], [0, 0]] + spatial)
    return ops.pad(x, widths, constant_values=value)


def _padded_shape(shape: tuple, pad: tuple[int, int], data_format: str) -> tuple:
    axes = (1, 2) if data_format == "channels_last" else (2, 3)
    out = list(shape)
    for axis, p in zip(axes, pad):
        out[axis] = None if out[axis] is None else out[axis] + 2 * p
    return tuple(out)


def _strided_1x1_conv(x: Any, kernel: Any, strides: tuple[int, int], data_format: str) -> Any:
    """TensorFlow's strided 1x1 convolution, with its filter gradient taken at stride 1 on the
    subsampled input (see :meth:`PaddedConv2D.convolution_op`)."""
    import tensorflow as tf
    last = data_format == "channels_last"
    fmt, full = ("NHWC", [1, *strides, 1]) if last else ("NCHW", [1, 1, *strides])

    @tf.custom_gradient
    def conv(x: Any, kernel: Any) -> Any:
        def grad(dy: Any) -> tuple[Any, Any]:
            dx = tf.compat.v1.nn.conv2d_backprop_input(tf.shape(x), kernel, dy, full, "VALID",
                                                     data_format=fmt)
            sub = x[:, ::strides[0], ::strides[1], :] if last else x[:, :, ::strides[0], ::strides[1]]
            dk = tf.compat.v1.nn.conv2d_backprop_filter(sub, tf.shape(kernel), dy, [1, 1, 1, 1],
                                                        "VALID", data_format=fmt)
            return dx, dk
        return tf.nn.conv2d(x, kernel, full, "VALID", data_format=fmt), grad

    return conv(tf.convert_to_tensor(x), tf.convert_to_tensor(kernel))  # variables read outside


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PaddedConv2D(layers.Conv2D):
    """``Conv2D`` with PyTorch's padding: ``kernel_size // 2`` zeros on each side, any stride.

    For a stride-2 convolution the input is zero-padded symmetrically, then convolved
    ``'valid'``; at stride 1 Keras's own ``'same'`` already is symmetric and is used. With
    ``padding_mode="same"`` (the spec's ``padding="same"``, d2l's Keras code) it is Keras's own
    ``'same'`` at every stride. The kernel is an ordinary ``Conv2D`` kernel, ``(kh, kw, in, out)``.
    """

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1,
                 padding_mode: str = "symmetric", **kwargs: Any) -> None:
        if "padding" in kwargs:
            raise TypeError("PaddedConv2D pads as padding_mode says ('symmetric': "
                            "kernel_size // 2 on each side; 'same': Keras's); do not pass padding")
        k = _odd_pair(kernel_size, "kernel_size")
        s = (strides, strides) if isinstance(strides, int) else tuple(strides)
        native = s == (1, 1) or padding_mode == "same"
        super().__init__(filters, kernel_size, strides=strides,
                         padding="same" if native else "valid", **kwargs)
        self.padding_mode = padding_mode
        self.pad = (0, 0) if native else (k[0] // 2, k[1] // 2)

    def call(self, inputs: Any) -> Any:
        return super().call(_pad_spatial(inputs, self.pad, self.data_format))

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        """A strided 1x1 convolution on TensorFlow takes its filter gradient on the subsampled
        input at stride 1 (the same sum), away from TensorFlow's oneDNN filter gradient for
        strided 1x1 convolutions, which corrupts the heap (the trap "oneDNN strided 1x1 filter
        gradient"). The forward pass and the input gradient stay TensorFlow's own."""
        if (tuple(self.kernel_size) != (1, 1) or tuple(self.strides) == (1, 1) or self.groups != 1
                or keras.backend.backend() != "tensorflow"):
            return super().convolution_op(inputs, kernel)
        return _strided_1x1_conv(inputs, kernel, tuple(self.strides), self.data_format)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return super().compute_output_shape(_padded_shape(input_shape, self.pad, self.data_format))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("padding")  # derived from kernel_size, strides and padding_mode
        return {**config, "padding_mode": self.padding_mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PaddedMaxPooling2D(layers.MaxPooling2D):
    """``MaxPooling2D`` with PyTorch's padding: ``pool_size // 2`` of ``-inf`` on each side.

    PyTorch's ``MaxPool2d(3, stride=2, padding=1)``; padding never wins a max, even where
    every input is negative (zero padding would). With ``padding_mode="same"``, Keras's own
    ``'same'`` (which never lets padding win either).
    """

    def __init__(self, pool_size: Any = 3, strides: Any = 2, padding_mode: str = "symmetric",
                 **kwargs: Any) -> None:
        if "padding" in kwargs:
            raise TypeError("PaddedMaxPooling2D pads as padding_mode says ('symmetric': "
                            "pool_size // 2 on each side; 'same': Keras's); do not pass padding")
        k = _odd_pair(pool_size, "pool_size")
        native = padding_mode == "same"
        super().__init__(pool_size=pool_size, strides=strides,
                         padding="same" if native else "valid", **kwargs)
        self.padding_mode = padding_mode
        self.pad = (0, 0) if native else (k[0] // 2, k[1] // 2)

    def call(self, inputs: Any) -> Any:
        return super().call(_pad_spatial(inputs, self.pad, self.data_format, float("-inf")))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return super().compute_output_shape(_padded_shape(input_shape, self.pad, self.data_format))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("padding")
        return {**config, "padding_mode": self.padding_mode}


def padded_conv(num_channels: int, kernel_size: int, strides: int = 1, *,
                padding: str = "symmetric", **kwargs: Any) -> PaddedConv2D:
    """A conv padded as ``padding`` says (:data:`common.core.spec.PADDINGS`): ``kernel_size
    // 2`` on each side, or Keras's own 'same'."""
    return PaddedConv2D(num_channels, kernel_size, strides=strides, padding_mode=padding, **kwargs)


def max_pool(padding: str = "symmetric", **kwargs: Any) -> PaddedMaxPooling2D:
    """d2l's 3x3/2 max pool: padding 1 of ``-inf`` on each side, or Keras's own 'same'."""
    return PaddedMaxPooling2D(3, strides=2, padding_mode=padding, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's ``BatchNormalization`` whose inference on a 4-D channels-last float32 (or
    float16/bfloat16) tensor runs TensorFlow's fused kernel, as tf.keras's ``fused=True`` did.

    Keras 3 computes inference BatchNorm as ``tf.nn.batch_normalization``, an elementwise
    multiply and add that TensorFlow's graph optimiser cannot fuse into the conv before it;
    ``FusedBatchNormV3`` it can (measured: ResNet-50 at 224, 2 threads, tf.function forward
    350 -> 380 GFLOP/s). Training, and any other input, is Keras's own code, unchanged; the
    weights and their names are Keras's.
    """

    def call(self, inputs: Any, training: Optional[bool] = None, mask: Any = None) -> Any:
        if (training or mask is not None or self.synchronized or len(inputs.shape) != 4
                or self.axis not in (-1, 3) or inputs.dtype.name == "float64"
                or keras.backend.backend() != "tensorflow"):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"),
            mean=ops.cast(self.moving_mean, "float32"),
            variance=ops.cast(self.moving_variance, "float32"), epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
        return y


def batch_norm(*, bn_eps: float = 1e-5, bn_momentum: float = 0.1, **kwargs: Any
               ) -> layers.BatchNormalization:
    """A BatchNorm over the channels (NHWC: the last axis); ``bn_momentum`` in PyTorch's
    convention (the weight of the new batch), handed to Keras as ``momentum=1 - bn_momentum``.

    Keras learns the channel count when the layer is built, so unlike its twins this helper
    takes none; ``kwargs`` are the layer's own (``name``, ``dtype``). Keras's default eps is
    1e-3, never used here. The layer is :class:`FusedBatchNormalization`: Keras's own, with
    TensorFlow's fused kernel for inference.
    """
    return FusedBatchNormalization(epsilon=bn_eps, momentum=1.0 - bn_momentum, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Residual(layers.Layer):
    """The Residual block of ResNet: two 3x3 conv+BN, an optional 1x1 conv shortcut."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 conv_bias: ConvBias = True, shortcut_bn: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        self.num_channels, self.use_1x1conv, self.strides = num_channels, use_1x1conv, strides
        self.conv_bias, self.shortcut_bn = conv_bias, shortcut_bn
        self.bn_eps, self.bn_momentum, self.padding = bn_eps, bn_momentum, padding
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        bn["dtype"] = dt = self.dtype_policy  # sublayers compute in the block's dtype
        self.conv1 = PaddedConv2D(num_channels, 3, strides=strides, padding_mode=padding,
                                  use_bias=bias["3x3"], name="conv1", dtype=dt)
        self.bn1 = batch_norm(**bn, name="bn1")
        self.conv2 = PaddedConv2D(num_channels, 3, use_bias=bias["3x3"], name="conv2", dtype=dt)
        self.bn2 = batch_norm(**bn, name="bn2")
        self.conv3: Optional[PaddedConv2D] = (
            PaddedConv2D(num_channels, 1, strides=strides, use_bias=bias["shortcut"], name="conv3",
                         dtype=dt)
            if use_1x1conv else None)
        self.bn3: Optional[layers.BatchNormalization] = (
            batch_norm(**bn, name="bn3") if use_1x1conv and shortcut_bn else None)

    def build(self, input_shape: tuple) -> None:
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(shape)
        self.conv2.build(shape)
        self.bn2.build(shape)
        if self.conv3 is not None:
            self.conv3.build(input_shape)
        if self.bn3 is not None:
            self.bn3.build(shape)

    def call(self, X: Any, training: Optional[bool] = None) -> Any:
        Y = ops.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
            if self.bn3 is not None:
                X = self.bn3(X, training=training)
        return ops.relu(Y + X)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.conv1.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_channels": self.num_channels,
                "use_1x1conv": self.use_1x1conv, "strides": self.strides,
                "conv_bias": self.conv_bias, "shortcut_bn": self.shortcut_bn,
                "bn_eps": self.bn_eps, "bn_momentum": self.bn_momentum, "padding": self.padding}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Bottleneck(layers.Layer):
    """The bottleneck block of ResNet-50 and deeper: 1x1 conv down to ``bottleneck_channels``,
    3x3 conv (in ``groups``: ResNeXt), 1x1 conv up to ``num_channels``, each with BatchNorm;
    an optional 1x1 conv shortcut (``conv4``, ``bn4``). The stride sits on the 3x3 conv
    (``stride_at="3x3"``, v1.5) or on the first 1x1 (``"1x1"``, v1); every strided conv pads
    like PyTorch's."""

    def __init__(self, num_channels: int, bottleneck_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, groups: int = 1, stride_at: str = "3x3",
                 conv_bias: ConvBias = True, shortcut_bn: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        self._args = dict(num_channels=num_channels, bottleneck_channels=bottleneck_channels,
                          use_1x1conv=use_1x1conv, strides=strides, groups=groups,
                          stride_at=stride_at, conv_bias=conv_bias, shortcut_bn=shortcut_bn,
                          bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, dtype=self.dtype_policy)
        dt, mid = self.dtype_policy, bottleneck_channels
        s1, s3 = bottleneck_strides(stride_at, strides)
        self.conv1 = PaddedConv2D(mid, 1, strides=s1, use_bias=bias["1x1"], name="conv1", dtype=dt)
        self.bn1 = batch_norm(**bn, name="bn1")
        self.conv2 = PaddedConv2D(mid, 3, strides=s3, groups=groups, padding_mode=padding,
                                  use_bias=bias["3x3"], name="conv2", dtype=dt)
        self.bn2 = batch_norm(**bn, name="bn2")
        self.conv3 = PaddedConv2D(num_channels, 1, use_bias=bias["1x1"], name="conv3", dtype=dt)
        self.bn3 = batch_norm(**bn, name="bn3")
        self.conv4: Optional[PaddedConv2D] = (
            PaddedConv2D(num_channels, 1, strides=strides, use_bias=bias["shortcut"], name="conv4",
                         dtype=dt) if use_1x1conv else None)
        self.bn4: Optional[layers.BatchNormalization] = (
            batch_norm(**bn, name="bn4") if use_1x1conv and shortcut_bn else None)

    def build(self, input_shape: tuple) -> None:
        shape = input_shape
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
        if self.conv4 is not None:
            self.conv4.build(input_shape)
        if self.bn4 is not None:
            self.bn4.build(shape)

    def call(self, X: Any, training: Optional[bool] = None) -> Any:
        Y = ops.relu(self.bn1(self.conv1(X), training=training))
        Y = ops.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.conv4 is not None:
            X = self.conv4(X)
            if self.bn4 is not None:
                X = self.bn4(X, training=training)
        return ops.relu(Y + X)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        shape = input_shape
        for conv in (self.conv1, self.conv2, self.conv3):
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PreActResidual(layers.Layer):
    """The pre-activation Residual block (v2; He et al., Identity Mappings in Deep Residual
    Networks; d2l's exercise): BatchNorm, ReLU, 3x3 conv, twice; the 1x1 conv shortcut
    (``conv3``) reads the normalised input; nothing after the sum."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 conv_bias: ConvBias = True, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        self._args = dict(num_channels=num_channels, use_1x1conv=use_1x1conv, strides=strides,
                          conv_bias=conv_bias, bn_eps=bn_eps, bn_momentum=bn_momentum,
                          padding=padding)
        dt = self.dtype_policy
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, dtype=dt)
        self.bn1 = batch_norm(**bn, name="bn1")
        self.conv1 = PaddedConv2D(num_channels, 3, strides=strides, padding_mode=padding,
                                  use_bias=bias["3x3"], name="conv1", dtype=dt)
        self.bn2 = batch_norm(**bn, name="bn2")
        self.conv2 = PaddedConv2D(num_channels, 3, use_bias=bias["3x3"], name="conv2", dtype=dt)
        self.conv3: Optional[PaddedConv2D] = (
            PaddedConv2D(num_channels, 1, strides=strides, use_bias=bias["shortcut"], name="conv3",
                         dtype=dt) if use_1x1conv else None)

    def build(self, input_shape: tuple) -> None:
        self.bn1.build(input_shape)
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.bn2.build(shape)
        self.conv2.build(shape)
        if self.conv3 is not None:
            self.conv3.build(input_shape)

    def call(self, X: Any, training: Optional[bool] = None) -> Any:
        Y = ops.relu(self.bn1(X, training=training))
        if self.conv3 is not None:
            X = self.conv3(Y)
        Y = self.conv1(Y)
        Y = self.conv2(ops.relu(self.bn2(Y, training=training)))
        return Y + X

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.conv1.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PreActBottleneck(layers.Layer):
    """The pre-activation bottleneck (v2): BatchNorm, ReLU, conv for each of its 1x1, 3x3
    (grouped) and 1x1 convs; the 1x1 conv shortcut (``conv4``) reads the normalised input."""

    def __init__(self, num_channels: int, bottleneck_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, *, groups: int = 1, stride_at: str = "3x3",
                 conv_bias: ConvBias = True, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bias = bias_by_kind(conv_bias)  # which convs have a bias
        self._args = dict(num_channels=num_channels, bottleneck_channels=bottleneck_channels,
                          use_1x1conv=use_1x1conv, strides=strides, groups=groups,
                          stride_at=stride_at, conv_bias=conv_bias, bn_eps=bn_eps,
                          bn_momentum=bn_momentum, padding=padding)
        dt, mid = self.dtype_policy, bottleneck_channels
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, dtype=dt)
        s1, s3 = bottleneck_strides(stride_at, strides)
        self.bn1 = batch_norm(**bn, name="bn1")
        self.conv1 = PaddedConv2D(mid, 1, strides=s1, use_bias=bias["1x1"], name="conv1", dtype=dt)
        self.bn2 = batch_norm(**bn, name="bn2")
        self.conv2 = PaddedConv2D(mid, 3, strides=s3, groups=groups, padding_mode=padding,
                                  use_bias=bias["3x3"], name="conv2", dtype=dt)
        self.bn3 = batch_norm(**bn, name="bn3")
        self.conv3 = PaddedConv2D(num_channels, 1, use_bias=bias["1x1"], name="conv3", dtype=dt)
        self.conv4: Optional[PaddedConv2D] = (
            PaddedConv2D(num_channels, 1, strides=strides, use_bias=bias["shortcut"], name="conv4",
                         dtype=dt) if use_1x1conv else None)

    def build(self, input_shape: tuple) -> None:
        shape = input_shape
        for bn, conv in ((self.bn1, self.conv1), (self.bn2, self.conv2), (self.bn3, self.conv3)):
            bn.build(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        if self.conv4 is not None:
            self.conv4.build(input_shape)

    def call(self, X: Any, training: Optional[bool] = None) -> Any:
        Y = ops.relu(self.bn1(X, training=training))
        if self.conv4 is not None:
            X = self.conv4(Y)
        Y = self.conv1(Y)
        Y = self.conv2(ops.relu(self.bn2(Y, training=training)))
        Y = self.conv3(ops.relu(self.bn3(Y, training=training)))
        return Y + X

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        shape = input_shape
        for conv in (self.conv1, self.conv2, self.conv3):
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


BLOCKS: dict[tuple[str, bool], type[layers.Layer]] = {
    ("basic", False): Residual, ("bottleneck", False): Bottleneck,
    ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResnetBlock(layers.Layer):
    """A ResNet stage (d2l's ``ResnetBlock``): the first block halves height and width unless
    ``first_block``, and gets a 1x1 conv shortcut where it changes the shape. ``block[i]`` is
    the i-th block.

    Keras learns input channels only when the stage is built, so ``in_channels`` says them
    where they decide the shortcut (a first stage that widens, as every bottleneck network's
    does); left at 0, the first block gets one exactly when it downsamples, as in d2l.
    ``block`` is ``"basic"`` (:class:`Residual`) or ``"bottleneck"`` (:class:`Bottleneck`,
    with ``bottleneck_channels``, ``groups`` and ``stride_at``); with ``preact``, their
    pre-activation twins (:data:`BLOCKS`), which take no ``shortcut_bn``.
    """

    def __init__(self, num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int = 0, block: str = "basic", preact: bool = False,
                 bottleneck_channels: int = 0, groups: int = 1, stride_at: str = "3x3",
                 conv_bias: ConvBias = True, shortcut_bn: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "symmetric", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_channels, self.num_residuals, self.first_block = (
            num_channels, num_residuals, first_block)
        self.in_channels, self.block, self.preact = in_channels, block, preact
        self.residual_options = dict(conv_bias=conv_bias, bn_eps=bn_eps, bn_momentum=bn_momentum,
                                     padding=padding,
                                     **({} if preact else {"shortcut_bn": shortcut_bn}))
        self.block_options = ({} if block == "basic" else dict(
            bottleneck_channels=bottleneck_channels, groups=groups, stride_at=stride_at))
        make = BLOCKS[block, preact]
        self.residual_layers: list[layers.Layer] = []
        for i in range(num_residuals):
            strides = 2 if i == 0 and not first_block else 1
            widens = i == 0 and in_channels not in (0, num_channels)
            self.residual_layers.append(make(
                num_channels, use_1x1conv=strides != 1 or widens, strides=strides,
                **self.block_options, **self.residual_options, name=str(i),
                dtype=self.dtype_policy))

    def __getitem__(self, i: int) -> layers.Layer:
        return self.residual_layers[i]

    def __len__(self) -> int:
        return len(self.residual_layers)

    def build(self, input_shape: tuple) -> None:
        for layer in self.residual_layers:
            layer.build(input_shape)
            input_shape = layer.compute_output_shape(input_shape)

    def call(self, X: Any, training: Optional[bool] = None) -> Any:
        for layer in self.residual_layers:
            X = layer(X, training=training)
        return X

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        for layer in self.residual_layers:
            input_shape = layer.compute_output_shape(input_shape)
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_channels": self.num_channels,
                "num_residuals": self.num_residuals, "first_block": self.first_block,
                "in_channels": self.in_channels, "block": self.block, "preact": self.preact,
                **self.block_options, **self.residual_options}


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, *,
                 in_channels: int = 0, block: str = "basic", preact: bool = False,
                 **options: Any) -> ResnetBlock:
    """d2l's ``resnet_block``: a :class:`ResnetBlock` of ``num_residuals`` blocks (see there
    for ``in_channels``, ``block`` and ``preact``)."""
    return ResnetBlock(num_channels, num_residuals, first_block, in_channels=in_channels,
                       block=block, preact=preact, **options)
