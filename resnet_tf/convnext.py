"""ConvNeXt (Liu et al. 2022) in Keras 3, built from a :class:`common.ConvNeXtSpec`.

The twin of ``resnet_torch.convnext``, name for name. Data is NHWC throughout, so every
LayerNorm and Linear acts on the last axis with no permute, and the depthwise conv is Keras's
own ``DepthwiseConv2D`` (kernel ``(kh, kw, C, 1)``; ``resnet_tf._layout`` maps it). Keras's
defaults differ from ConvNeXt's, so nothing is left to them: ``LayerNormalization`` defaults to
eps 1e-3 and ``keras.ops.gelu`` to the tanh approximation; here every eps is the spec's and the
GELU form is named (:class:`GELU`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import keras
from keras import layers, ops

from common.core.spec import ConvNeXtSpec, convnext_tiny_spec, spec_from_dict

_PACKAGE = "resnet_tf"
_SQRT_HALF, _SQRT_2_OVER_PI = math.sqrt(0.5), math.sqrt(2.0 / math.pi)


def layer_norm(*, ln_eps: float = 1e-6, **kwargs: Any) -> layers.LayerNormalization:
    """A LayerNorm over channels alone (the last axis: Keras is NHWC, so the stem's norm and a
    block's are the same layer). Keras's default eps is 1e-3; ConvNeXt's is 1e-6."""
    return layers.LayerNormalization(axis=-1, epsilon=ln_eps, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GELU(layers.Layer):
    """GELU, exact (``approximate=False``, ``x * Phi(x)`` with the error function; ConvNeXt's)
    or the tanh approximation; ``keras.activations.gelu`` defaults to exact, ``keras.ops.gelu``
    to tanh. Written out with ``ops.erf`` and ``ops.tanh``: TensorFlow's own GELU kernel (behind
    both) is 5e-9 off the exact function in float64, while ``ops.erf`` is exact; in float32 the
    two agree to rounding (README: GELU)."""

    def __init__(self, approximate: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.approximate = approximate

    def call(self, x: Any) -> Any:
        if self.approximate:
            return 0.5 * x * (1.0 + ops.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
        return 0.5 * x * (1.0 + ops.erf(x * _SQRT_HALF))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "approximate": self.approximate}


def gelu_layer(form: str = "exact", **kwargs: Any) -> GELU:
    """GELU, ``"exact"`` (ConvNeXt's) or ``"tanh"`` (the approximation)."""
    return GELU(approximate=form == "tanh", **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerScale(layers.Layer):
    """A learned per-channel scale ``gamma``, set to ``init_value``."""

    def __init__(self, num_channels: int, init_value: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_channels, self.init_value = num_channels, init_value

    def build(self, input_shape: tuple) -> None:
        # made in build, under the model's name scope: its path reads ".../layer_scale/gamma"
        self.gamma = self.add_weight(shape=(self.num_channels,), name="gamma",
                                     initializer=keras.initializers.Constant(self.init_value))

    def call(self, x: Any) -> Any:
        return x * self.gamma

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_channels": self.num_channels,
                "init_value": self.init_value}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(layers.Layer):
    """Stochastic depth, per sample: in training, zero a sample's whole branch with probability
    ``rate`` and scale the kept ones by ``1 / (1 - rate)``; the identity otherwise."""

    def __init__(self, rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator() if rate > 0 else None

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator,
                                                     dtype=x.dtype))
        return x * mask / keep

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvNeXtBlock(layers.Layer):
    """One ConvNeXt block of width ``dim``: ``dwconv`` (depthwise, 'same' padding: at stride 1
    and an odd kernel, ``kernel_size // 2`` on every side), ``norm``, ``pwconv1`` (to
    ``mlp_ratio * dim``), ``act``, ``pwconv2``, ``layer_scale`` (None when ``layer_scale_init``
    is 0), ``drop_path`` at rate ``drop_path``, plus the input."""

    def __init__(self, dim: int, drop_path: float = 0.0, *, kernel_size: int = 7,
                 mlp_ratio: int = 4, ln_eps: float = 1e-6, layer_scale_init: float = 1e-6,
                 gelu: str = "exact", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(dim=dim, drop_path=drop_path, kernel_size=kernel_size,
                          mlp_ratio=mlp_ratio, ln_eps=ln_eps, layer_scale_init=layer_scale_init,
                          gelu=gelu)
        dt = self.dtype_policy
        self.dwconv = layers.DepthwiseConv2D(kernel_size, padding="same", name="dwconv", dtype=dt)
        self.norm = layer_norm(ln_eps=ln_eps, name="norm", dtype=dt)
        self.pwconv1 = layers.Dense(mlp_ratio * dim, name="pwconv1", dtype=dt)
        self.act = gelu_layer(gelu, name="act", dtype=dt)
        self.pwconv2 = layers.Dense(dim, name="pwconv2", dtype=dt)
        self.layer_scale: Optional[LayerScale] = (
            LayerScale(dim, layer_scale_init, name="layer_scale", dtype=dt)
            if layer_scale_init > 0 else None)
        self.drop_path = DropPath(drop_path, name="drop_path", dtype=dt)

    def build(self, input_shape: tuple) -> None:
        dim, hidden = self._args["dim"], self._args["mlp_ratio"] * self._args["dim"]
        self.dwconv.build(input_shape)
        self.norm.build((None, dim))
        self.pwconv1.build((None, dim))
        self.pwconv2.build((None, hidden))
        if self.layer_scale is not None:
            self.layer_scale.build((None, dim))

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return x + self.drop_path(y, training=training)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Downsample(layers.Layer):
    """Between stages: ``norm`` (over channels) and ``conv``, 2x2 at stride 2."""

    def __init__(self, num_channels: int, *, ln_eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(num_channels=num_channels, ln_eps=ln_eps)
        dt = self.dtype_policy
        self.norm = layer_norm(ln_eps=ln_eps, name="norm", dtype=dt)
        self.conv = layers.Conv2D(num_channels, 2, strides=2, name="conv", dtype=dt)

    def build(self, input_shape: tuple) -> None:
        self.norm.build(input_shape)
        self.conv.build(input_shape)

    def call(self, x: Any) -> Any:
        return self.conv(self.norm(x))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvNeXtStage(layers.Layer):
    """One stage: ``downsample`` (None for the first stage) and ``blocks``, one per rate in
    ``drop_path_rates``; ``stage.blocks[j]`` is the j-th block."""

    def __init__(self, num_channels: int, drop_path_rates: Sequence[float], *,
                 downsample: bool = True, **options: Any) -> None:
        block_options = {k: options.pop(k) for k in
                         ("kernel_size", "mlp_ratio", "ln_eps", "layer_scale_init", "gelu")
                         if k in options}
        super().__init__(**options)
        self._args = dict(num_channels=num_channels, drop_path_rates=list(drop_path_rates),
                          downsample=downsample, **block_options)
        dt = self.dtype_policy
        self.downsample: Optional[Downsample] = (
            Downsample(num_channels, ln_eps=block_options.get("ln_eps", 1e-6), name="downsample",
                       dtype=dt) if downsample else None)
        self.blocks = [ConvNeXtBlock(num_channels, rate, **block_options, name=f"blocks.{j}",
                                     dtype=dt)
                       for j, rate in enumerate(drop_path_rates)]

    def build(self, input_shape: tuple) -> None:
        if self.downsample is not None:
            self.downsample.build(input_shape)
            input_shape = self.downsample.compute_output_shape(input_shape)
        for block in self.blocks:
            block.build(input_shape)

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        if self.downsample is not None:
            input_shape = self.downsample.compute_output_shape(input_shape)
        return input_shape[:-1] + (self._args["num_channels"],)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchifyStem(layers.Layer):
    """``conv``, ``patch_size`` x ``patch_size`` at stride ``patch_size``, and ``norm``."""

    def __init__(self, num_channels: int, patch_size: int = 4, *, ln_eps: float = 1e-6,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(num_channels=num_channels, patch_size=patch_size, ln_eps=ln_eps)
        dt = self.dtype_policy
        self.conv = layers.Conv2D(num_channels, patch_size, strides=patch_size, name="conv",
                                  dtype=dt)
        self.norm = layer_norm(ln_eps=ln_eps, name="norm", dtype=dt)

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, x: Any) -> Any:
        return self.norm(self.conv(x))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvNeXtHead(layers.Layer):
    """Global average ``pool`` (kept 4-D), ``flatten``, ``norm`` (eps ``head_ln_eps``), ``fc``."""

    def __init__(self, num_classes: int, *, head_ln_eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(num_classes=num_classes, head_ln_eps=head_ln_eps)
        dt = self.dtype_policy
        self.pool = layers.GlobalAveragePooling2D(keepdims=True, name="pool", dtype=dt)
        self.flatten = layers.Flatten(name="flatten", dtype=dt)
        self.norm = layer_norm(ln_eps=head_ln_eps, name="norm", dtype=dt)
        self.fc = layers.Dense(num_classes, name="fc", dtype=dt)

    def build(self, input_shape: tuple) -> None:
        self.norm.build((input_shape[0], input_shape[-1]))
        self.fc.build((input_shape[0], input_shape[-1]))

    def call(self, x: Any) -> Any:
        return self.fc(self.norm(self.flatten(self.pool(x))))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self._args["num_classes"])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvNeXt(keras.Model):
    """ConvNeXt: ``stem``, ``stages`` (``stages[i].downsample``, ``stages[i].blocks[j]``),
    ``head``, named as the PyTorch twin. Built for ``spec.in_channels`` at construction, so its
    weights exist at once; NHWC input."""

    def __init__(self, spec: ConvNeXtSpec, **kwargs: Any) -> None:
        if not isinstance(spec, ConvNeXtSpec):
            raise TypeError(f"ConvNeXt takes a ConvNeXtSpec, got {type(spec).__name__}")
        kwargs.setdefault("name", spec.name)
        super().__init__(**kwargs)
        self.spec = spec
        dt = self.dtype_policy
        self.stem = PatchifyStem(spec.widths[0], spec.patch_size, ln_eps=spec.ln_eps, name="stem",
                                 dtype=dt)
        self.stages = [ConvNeXtStage(c, rates, downsample=i > 0, **spec.block_options(),
                                     name=f"stages.{i}", dtype=dt)
                       for i, (c, rates) in enumerate(zip(spec.widths, spec.drop_path_rates()))]
        self.head = ConvNeXtHead(spec.num_classes, head_ln_eps=spec.head_ln_eps, name="head",
                                 dtype=dt)
        self.build((None, None, None, spec.in_channels))

    def build(self, input_shape: tuple) -> None:
        self.stem.build(input_shape)
        shape = self.stem.compute_output_shape(input_shape)
        for stage in self.stages:
            stage.build(shape)
            shape = stage.compute_output_shape(shape)
        self.head.build(shape)

    def forward_features(self, x: Any, training: Optional[bool] = None) -> Any:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x, training=training)
        return x

    def call(self, x: Any, training: Optional[bool] = None) -> Any:
        return self.head(self.forward_features(x, training=training))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.spec.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": self.spec.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ConvNeXt":
        config = dict(config)
        spec = spec_from_dict(config.pop("spec"))
        return cls(spec, **config)


def convnext_from_spec(spec: ConvNeXtSpec, **kwargs: Any) -> ConvNeXt:
    """The network for ``spec``, built (its weights exist)."""
    return ConvNeXt(spec, **kwargs)


def convnext_tiny(**options: Any) -> ConvNeXt:
    """torchvision's ConvNeXt-T (3 input channels, 1000 classes by default), NHWC input."""
    return ConvNeXt(convnext_tiny_spec(**options))
