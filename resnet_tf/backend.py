"""The TensorFlow/Keras backend: canonical state in and out, NCHW forward and trace.

Keras computes in NHWC; the suite's interface speaks NCHW, so arrays are transposed here, at the
edge, and nowhere else. Kernels are converted between Keras's ``(kh, kw, in, out)`` and the
canonical ``(out, in, kh, kw)``, dense kernels between ``(in, out)`` and ``(out, in)``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf

from common.backend import SGD, BaseBackend
from common.spec import ResnetBlockSpec, ResNetSpec, Unit
from common.trace import ModelOps
from common.training import Convention

from .model import ResNet, block_from_spec, residual_from_spec

# canonical BatchNorm name -> Keras attribute
_BN = {"gamma": "gamma", "beta": "beta", "running_mean": "moving_mean",
       "running_var": "moving_variance"}
# canonical layout <- Keras layout, per layer kind (inverse permutations are below)
_TO_CANON = {"conv": (3, 2, 0, 1), "dense": (1, 0)}
_TO_KERAS = {"conv": (2, 3, 1, 0), "dense": (1, 0)}

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)


def parity_mode() -> None:
    """Full float32 on GPU: TF32 matmuls and convolutions off (they cost ~1e-3 relative)."""
    tf.config.experimental.enable_tensor_float_32_execution(False)


def to_nhwc(x: np.ndarray) -> tf.Tensor:
    """NCHW numpy -> NHWC tensor on the current device."""
    return tf.convert_to_tensor(np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC)))


def to_nchw(x: Any) -> np.ndarray:
    """A 4-D NHWC tensor -> NCHW numpy; anything else (logits) as it is."""
    a = keras.ops.convert_to_numpy(x)
    return np.ascontiguousarray(np.transpose(a, NHWC_TO_NCHW)) if a.ndim == 4 else a


class TfBackend(BaseBackend):
    name = "tf"
    convention = Convention(running_var="biased", updated_in="forward")

    def __init__(self) -> None:
        super().__init__()
        self._grads: dict[int, np.ndarray] = {}  # id(variable) -> gradient of the last backward
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"resnet_tf needs Keras on TensorFlow; KERAS_BACKEND is "
                               f"{keras.backend.backend()!r}")

    def _build(self, unit: Unit, dtype: str) -> keras.layers.Layer:
        if isinstance(unit, ResNetSpec):
            return ResNet(unit, dtype=dtype)
        if isinstance(unit, ResnetBlockSpec):
            return block_from_spec(unit, dtype=dtype)
        return residual_from_spec(unit, dtype=dtype)

    def _read(self, layer: keras.layers.Layer, kind: str, grad: bool = False
              ) -> dict[str, np.ndarray]:
        value = (lambda var: self._grads[id(var)]) if grad else _numpy
        if kind == "bn":
            names = ("gamma", "beta") if grad else _BN
            return {canon: value(getattr(layer, _BN[canon])) for canon in names}
        out = {"weight": np.transpose(value(layer.kernel), _TO_CANON[kind])}
        if getattr(layer, "bias", None) is not None:
            out["bias"] = value(layer.bias)
        return out

    def _write(self, layer: keras.layers.Layer, kind: str,
               params: Mapping[str, np.ndarray]) -> None:
        for canon, value in params.items():
            if kind == "bn":
                var = getattr(layer, _BN[canon])
            elif canon == "weight":
                var, value = layer.kernel, np.transpose(value, _TO_KERAS[kind])
            else:
                var = layer.bias
            var.assign(np.ascontiguousarray(value, dtype=var.dtype))

    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if tf.config.list_physical_devices("GPU") else ["cpu"]

    @contextlib.contextmanager
    def _session(self, model: Any, training: bool, device: str) -> Iterator[None]:
        if device == "gpu":
            parity_mode()
        with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
            yield

    def _forward(self, model: keras.layers.Layer, x: np.ndarray, training: bool,
                 device: str) -> np.ndarray:
        return to_nchw(model(to_nhwc(x), training=training))

    def _loss_and_grads_tf(self, model: keras.layers.Layer, x: np.ndarray, y: np.ndarray
                           ) -> tuple[tf.Tensor, list, list]:
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            out = model(to_nhwc(x), training=True)
            logits = keras.ops.mean(out, axis=(1, 2)) if len(out.shape) == 4 else out
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        return loss, variables, tape.gradient(loss, variables)

    def _loss_and_grads(self, model: keras.layers.Layer, x: np.ndarray, y: np.ndarray,
                        device: str) -> float:
        loss, variables, grads = self._loss_and_grads_tf(model, x, y)
        self._grads = {id(v): _numpy(g) for v, g in zip(variables, grads)}
        return float(loss)

    def _sgd_step(self, model: keras.layers.Layer, x: np.ndarray, y: np.ndarray, hyper: SGD,
                  device: str) -> float:
        # Keras's own weight_decay is decoupled (w -= lr * wd * w outside the momentum buffer);
        # PyTorch's and Gluon's is L2 coupled into the gradient. The same trajectory comes from
        # adding wd * w to the gradient, which is what this does (README: weight decay).
        opt = self._optimizer(model, hyper, lambda: keras.optimizers.SGD(
            learning_rate=hyper.lr, momentum=hyper.momentum))
        loss, variables, grads = self._loss_and_grads_tf(model, x, y)
        if hyper.weight_decay:
            grads = [g + hyper.weight_decay * v for g, v in zip(grads, variables)]
        opt.apply_gradients(zip(grads, variables))
        return float(loss)

    def _trace_ops(self, model: Any, training: bool, device: str) -> "_Ops":
        return _Ops(model, training)


class _Ops(ModelOps):
    """How :func:`common.trace.trace` runs one Keras layer at a time (NHWC inside)."""

    def __init__(self, model: Any, training: bool) -> None:
        super().__init__(model)
        self.training = training

    def from_numpy(self, x: np.ndarray) -> tf.Tensor:
        return to_nhwc(x)

    def call(self, layer: keras.layers.Layer, x: tf.Tensor) -> tf.Tensor:
        return layer(x, training=self.training)

    def relu(self, x: tf.Tensor) -> tf.Tensor:
        return keras.ops.relu(x)

    def to_numpy(self, x: tf.Tensor) -> np.ndarray:
        return to_nchw(x)


def _numpy(x: Any) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def backend() -> TfBackend:
    return TfBackend()
