"""d2l's training loop in Gluon: a DataLoader over the shared batches, Trainer('sgd'),
softmax cross-entropy, the network hybridized."""

from __future__ import annotations

from typing import Callable

from common.core.data import ImageData

from ._compat import autograd, gluon, mx


class Trainer:
    """One epoch at a time, so several frameworks can be run side by side."""

    def __init__(self, model: gluon.HybridBlock, data: ImageData, batch_size: int, lr: float,
                 seed: int) -> None:
        self.model, self.data, self.batch_size, self.seed = model, data, batch_size, seed
        model.hybridize()
        self.trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        # batches in the model's dtype (a float64 twin)
        self.dtype = next(iter(model.collect_params().values())).dtype

    def loader(self, epoch: int) -> gluon.data.DataLoader:
        # The sampler yields the shared epoch order; batchify_fn builds the (resized) batch.
        def batchify(indices: list[int]) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
            x, y = self.data.batch(indices)
            return mx.nd.array(x, dtype=self.dtype), mx.nd.array(y, dtype=self.dtype)
        return gluon.data.DataLoader(
            gluon.data.SimpleDataset(list(range(len(self.data)))), batchify_fn=batchify,
            batch_sampler=self.data.order(self.batch_size, epoch, self.seed))

    def run_epoch(self, epoch: int, on_batch: Callable[[float, int], None]) -> tuple[float, float]:
        """Train one epoch; return (mean loss, train accuracy) over its examples."""
        total_loss, correct, seen = 0.0, 0, 0
        for X, y in self.loader(epoch):
            with autograd.record():
                y_hat = self.model(X)
                loss = self.loss(y_hat, y)
            loss.backward()
            n = X.shape[0]
            self.trainer.step(n)
            batch_loss = float(loss.sum().asscalar())
            total_loss += batch_loss
            correct += int((y_hat.argmax(axis=1) == y).sum().asscalar())
            seen += n
            on_batch(batch_loss / n, n)
        return total_loss / seen, correct / seen


__all__ = ["Trainer"]
