"""d2l's training loop in Keras: tf.data over the shared batches, ``compile`` and ``fit``
with SGD and sparse categorical cross-entropy, a callback for progress."""

from __future__ import annotations

from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from common.core.data import ImageData

from ._layout import nhwc


class _Progress(keras.callbacks.Callback):
    """Turns Keras's running means into per-batch losses for the shared progress bar."""

    def __init__(self, sizes: list[int], on_batch: Callable[[float, int], None]) -> None:
        super().__init__()
        self.sizes, self.on_batch = sizes, on_batch
        self.seen, self.loss_sum = 0, 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        n = self.sizes[batch]
        self.seen += n
        running = float(logs["loss"]) * self.seen  # Keras: the mean over the epoch so far
        self.on_batch((running - self.loss_sum) / n, n)
        self.loss_sum = running


class Trainer:
    """One epoch at a time, so several frameworks can be run side by side."""

    def __init__(self, model: keras.Model, data: ImageData, batch_size: int, lr: float,
                 seed: int) -> None:
        self.model, self.data, self.batch_size, self.seed = model, data, batch_size, seed
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr),
                      # in the weights' dtype (a float64 twin): Keras computes a loss in floatx otherwise
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True, dtype=model.variable_dtype),
                      metrics=["accuracy"])

    def loader(self, epoch: int) -> tf.data.Dataset:
        """The epoch's batches, in the shared order, as a ``tf.data`` pipeline of NHWC images."""
        order = self.data.order(self.batch_size, epoch, self.seed)

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for indices in order:
                x, y = self.data.batch(indices)
                yield nhwc(x), y
        c, h, w = self.data.shape
        return tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec((None, h, w, c), tf.float32),
            tf.TensorSpec((None,), tf.int64))).prefetch(2)

    def run_epoch(self, epoch: int, on_batch: Callable[[float, int], None]) -> tuple[float, float]:
        """Train one epoch; return (mean loss, train accuracy) over its examples."""
        sizes = [len(i) for i in self.data.order(self.batch_size, epoch, self.seed)]
        history = self.model.fit(self.loader(epoch), epochs=1, steps_per_epoch=len(sizes),
                                 shuffle=False, verbose=0, callbacks=[_Progress(sizes, on_batch)])
        return float(history.history["loss"][-1]), float(history.history["accuracy"][-1])


__all__ = ["Trainer"]
