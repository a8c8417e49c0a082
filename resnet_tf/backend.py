"""The TensorFlow/Keras backend: canonical state in and out, NCHW forward and trace.

Keras computes in NHWC with ``(kh, kw, in, out)`` conv and ``(in, out)`` dense kernels; the
suite's interface speaks NCHW and the canonical layouts. Every crossing goes through
``resnet_tf._layout``, the package's one edge.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf

from common.core.backend import BaseBackend, Convention, SGDConfig
from common.core.data import ImageData
from common.core.spec import BottleneckSpec, ConvNeXtSpec, ResnetBlockSpec, ResNetSpec, Unit
from common.core.trace import ModelOps

from ._layout import kernel_to_canonical, kernel_to_keras, nchw, nhwc
from .convnext import ConvNeXt
from .model import ResNet, block_from_spec, bottleneck_from_spec, residual_from_spec
from .train import Trainer

# canonical parameter name -> Keras attribute, per layer kind
_PARAM_NAMES = {
    "conv": {"weight": "kernel", "bias": "bias"},
    "dense": {"weight": "kernel", "bias": "bias"},
    "bn": {"gamma": "gamma", "beta": "beta", "running_mean": "moving_mean",
           "running_var": "moving_variance"},
    "dwconv": {"weight": "kernel", "bias": "bias"},
    "ln": {"gamma": "gamma", "beta": "beta"},
    "scale": {"gamma": "gamma"},
}


def parity_mode() -> None:
    """Full float32 on GPU: TF32 matmuls and convolutions off (they cost ~1e-3 relative)."""
    tf.config.experimental.enable_tensor_float_32_execution(False)


class Backend(BaseBackend):
    name = "tf"
    convention = Convention(running_var="biased", updated_in="forward")

    def __init__(self) -> None:
        super().__init__()
        self._grads: dict[int, np.ndarray] = {}  # id(variable) -> gradient of the last backward
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"resnet_tf needs Keras on TensorFlow; KERAS_BACKEND is "
                               f"{keras.backend.backend()!r}")

    def _build(self, unit: Unit, dtype: str, precision: str = "float32") -> keras.layers.Layer:
        # mixed precision the Keras way: a dtype policy, float32 variables, float16/bfloat16
        # compute; a layer's policy is fixed when it is made
        if precision != "float32":
            dtype = f"mixed_{precision}"
        if isinstance(unit, ResNetSpec):
            return ResNet(unit, dtype=dtype)
        if isinstance(unit, ConvNeXtSpec):
            return ConvNeXt(unit, dtype=dtype)
        if isinstance(unit, ResnetBlockSpec):
            return block_from_spec(unit, dtype=dtype)
        if isinstance(unit, BottleneckSpec):
            return bottleneck_from_spec(unit, dtype=dtype)
        return residual_from_spec(unit, dtype=dtype)

    def _read(self, layer: keras.layers.Layer, kind: str, grad: bool = False
              ) -> dict[str, np.ndarray]:
        out = {}
        for canon, attr in _PARAM_NAMES[kind].items():
            var = getattr(layer, attr, None)
            if var is None or (grad and not var.trainable):  # no bias; running statistics
                continue
            value = self._grads[id(var)] if grad else keras.ops.convert_to_numpy(var)
            out[canon] = kernel_to_canonical(value, kind) if canon == "weight" else value
        return out

    def _write(self, layer: keras.layers.Layer, kind: str,
               params: Mapping[str, np.ndarray]) -> None:
        for canon, value in params.items():
            var = getattr(layer, _PARAM_NAMES[kind][canon])
            if canon == "weight":
                value = kernel_to_keras(value, kind)
            var.assign(np.ascontiguousarray(value, dtype=var.dtype))

    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if tf.config.list_physical_devices("GPU") else ["cpu"]

    @contextlib.contextmanager
    def _session(self, model: Any, training: bool, device: str) -> Iterator[None]:
        if device == "gpu":
            parity_mode()
        with tf.device(_device(device)):
            yield

    def _forward(self, model: keras.layers.Layer, x: np.ndarray, training: bool,
                 device: str) -> np.ndarray:
        return nchw(_wide(model(nhwc(x), training=training)))

    def _loss_and_grads_tf(self, model: keras.layers.Layer, x: np.ndarray, y: np.ndarray,
                           opt: Any = None) -> tuple[tf.Tensor, list, list]:
        """Loss, variables and gradients; with a LossScaleOptimizer ``opt``, the gradients of
        its scaled loss (its ``apply_gradients`` unscales them)."""
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            out = model(nhwc(x), training=True)
            logits = keras.ops.mean(out, axis=(1, 2)) if len(out.shape) == 4 else out
            # under a mixed policy the logits are float16/bfloat16; Keras's guide takes the
            # loss in float32
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                y, _wide(logits), from_logits=True))
            scaled = opt.scale_loss(loss) if opt is not None else loss
        grads = tape.gradient(scaled, variables)
        return loss, variables, grads

    def _loss_and_grads(self, model: keras.layers.Layer, x: np.ndarray, y: np.ndarray,
                        device: str) -> float:
        loss, variables, grads = self._loss_and_grads_tf(model, x, y)
        self._grads = {id(v): keras.ops.convert_to_numpy(g) for v, g in zip(variables, grads)}
        return float(loss)

    def _sgd_step(self, model: keras.layers.Layer, x: np.ndarray, y: np.ndarray, hyper: SGDConfig,
                  device: str) -> float:
        # Keras's own weight_decay is decoupled (w -= lr * wd * w outside the momentum buffer);
        # PyTorch's and Gluon's is L2 coupled into the gradient. The same trajectory comes from
        # adding wd * w to the gradient, which is what this does (README: weight decay).
        opt = self._optimizer(model, hyper, lambda: _sgd(hyper, model))
        scaling = isinstance(opt, keras.optimizers.LossScaleOptimizer)
        loss, variables, grads = self._loss_and_grads_tf(model, x, y, opt if scaling else None)
        if hyper.weight_decay:  # in the scaled gradients' units where the loss is scaled
            wd = opt.scale_loss(hyper.weight_decay) if scaling else hyper.weight_decay
            grads = [g + keras.ops.cast(wd, v.dtype) * v for g, v in zip(grads, variables)]
        opt.apply_gradients(zip(grads, variables))
        return float(loss)

    def _trace_ops(self, model: Any, training: bool, device: str) -> "_Ops":
        return _Ops(model, training)

    def trainer(self, model: keras.Model, data: ImageData, batch_size: int, lr: float,
                seed: int) -> Trainer:
        return Trainer(model, data, batch_size, lr, seed)


class _Ops(ModelOps):
    """How :func:`common.core.trace.trace` runs one Keras layer at a time (NHWC inside)."""

    def __init__(self, model: Any, training: bool) -> None:
        super().__init__(model)
        self.training = training

    def from_numpy(self, x: np.ndarray) -> tf.Tensor:
        return tf.convert_to_tensor(nhwc(x))

    def call(self, layer: keras.layers.Layer, x: tf.Tensor) -> tf.Tensor:
        return layer(x, training=self.training)

    def relu(self, x: tf.Tensor) -> tf.Tensor:
        return keras.ops.relu(x)

    def to_numpy(self, x: tf.Tensor) -> np.ndarray:
        return nchw(_wide(x))

    def dtype(self, x: tf.Tensor) -> str:
        return x.dtype.name

    def channels_last(self, x: tf.Tensor) -> tf.Tensor:
        return x  # NHWC already

    def channels_first(self, x: tf.Tensor) -> tf.Tensor:
        return x  # stays NHWC inside Keras; to_numpy turns it NCHW


def _sgd(hyper: SGDConfig, model: keras.layers.Layer) -> keras.optimizers.Optimizer:
    """Keras's SGD; under a mixed_float16 policy wrapped in its LossScaleOptimizer, as Keras's
    mixed-precision guide prescribes (float16 gradients underflow without loss scaling)."""
    sgd = keras.optimizers.SGD(learning_rate=hyper.lr, momentum=hyper.momentum)
    if model.dtype_policy.compute_dtype == "float16":
        return keras.optimizers.LossScaleOptimizer(sgd)
    return sgd


def _wide(x: tf.Tensor) -> tf.Tensor:
    """float16 and bfloat16 tensors (a mixed policy's compute dtype) as float32."""
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def _device(device: str) -> str:
    """The suite's device name ("cpu", "gpu") as TensorFlow's device."""
    return "/GPU:0" if device == "gpu" else "/CPU:0"


def backend() -> Backend:
    return Backend()
