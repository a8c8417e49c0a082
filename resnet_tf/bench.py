"""Keras's ways to run the model for ``resnet-parity bench``: eager, ``tf.function``,
``tf.function(jit_compile=True)`` (XLA), and a frozen inference graph with BatchNorm folded
into the convolutions (``freeze``), whose training step is ``tf.function``'s."""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from ._layout import kernel_to_keras, nchw, nhwc
from .freeze import frozen_forward

# this framework's ways to run the model -> the kind ``resnet-parity bench --modes`` selects
MODES = {"eager": "eager", "function": "compiled", "xla": "compiled", "frozen": "compiled"}


def runners(model: keras.Model, mode: str, lr: float = 0.05
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], float]]:
    """``(forward(x) -> logits, train_step(x, y) -> loss)`` for one mode; NCHW numpy in.

    Frozen, ``forward`` freezes the weights at its first call for each input shape: call it
    on a model whose weights no longer change."""
    opt = keras.optimizers.SGD(learning_rate=lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def fwd(x):
        return model(x, training=False)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    if mode != "eager":
        jit = mode == "xla"
        fwd, step = tf.function(fwd, jit_compile=jit), tf.function(step, jit_compile=jit)

    if mode == "frozen":
        fwd = _frozen_per_shape(model)

    def forward(x: np.ndarray) -> np.ndarray:
        return np.asarray(fwd(tf.constant(nhwc(x))))

    def train_step(x: np.ndarray, y: np.ndarray) -> float:
        return float(step(tf.constant(nhwc(x)), tf.constant(y)))

    return forward, train_step


def _frozen_per_shape(model: keras.Model) -> Callable[[Any], Any]:
    """``model(x, training=False)`` through one frozen, BatchNorm-folded graph per input shape."""
    graphs: dict[tuple[int, ...], Callable[[Any], Any]] = {}

    def forward(x: Any) -> Any:
        key = (tuple(x.shape), x.dtype)
        if key not in graphs:
            graphs[key] = frozen_forward(model, tuple(x.shape), x.dtype)[0]
        return graphs[key](x)

    return forward


def conv_runner(x: np.ndarray, weight: np.ndarray, groups: int
                ) -> tuple[Callable[[], Any], Callable[[Any], np.ndarray]]:
    """``(run() -> output, to_numpy(output) -> NCHW)``: a 3x3 conv (padding 1, ``groups``) of
    NCHW ``x`` with a canonical ``weight``, as a ``tf.function`` graph (oneDNN); TensorFlow
    groups by the kernel's input channels."""
    xt, kernel = tf.constant(nhwc(x)), tf.constant(kernel_to_keras(weight, "conv"))
    conv = tf.function(lambda: tf.nn.conv2d(xt, kernel, strides=1, padding="SAME"),
                       autograph=False)
    return conv, nchw


def threads() -> dict[str, int]:
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def set_threads(n: int) -> None:
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(1)
