"""d2l's Keras loop (``compile`` and ``fit``) data-parallel on TensorFlow's own engine:
``tf.distribute.MultiWorkerMirroredStrategy``, each worker set up from its ``TF_CONFIG``
(the cluster's worker list and this worker's index).

Gradients: Keras divides each replica's loss by ``num_replicas_in_sync`` and the strategy's
all-reduce adds the replicas' gradients, so N workers with a shard of B/N images each take the
step of one process with the batch of B at the same lr ("mean"); "sum" weights the compiled loss
by N (``loss_weights``), so that each replica differentiates its own mean loss, as a custom
loop that forgets the global batch does: N times that step. BatchNorm: ``--sync-bn on`` sets
Keras's ``BatchNormalization(synchronized=True)`` on every BatchNorm, whose batch statistics
are then all-reduced over the workers (the mean and the biased variance of the global batch,
as one process computes them); off, each replica normalises with its own shard and keeps its
own running statistics.

Keras 3.15's ``fit`` does not run under this strategy as shipped (keras-team/keras#20585, open):
it reduces the first data batch across workers to learn its shapes (``_maybe_symbolic_build``:
"Attempt to convert a value (PerReplica...) to a Tensor"), and reduces every step's scalar
metrics with ``axis=0`` ("Invalid reduction dimension 0 for input with 0 dimensions").
:func:`_fit_under_multi_worker` works around both; everything else is Keras's own.
"""

from __future__ import annotations

import json
import os
from typing import Any, ContextManager, Sequence

import keras
import tensorflow as tf

from common.core.spec import Unit
from common.core.trace import resolve

from .train import Trainer

REDUCTIONS = ("mean", "sum")
# None where the engine synchronises BatchNorm in this command, else why it cannot
SYNC_BN = None


def _fit_under_multi_worker() -> None:
    """Reduce 0-d metrics with ``axis=None`` (Keras's ``reduce_per_replica`` passes ``axis=0``
    to ``strategy.reduce`` for every value under a multi-worker strategy); idempotent."""
    from keras.src.backend.tensorflow import trainer as keras_trainer

    original = keras_trainer.reduce_per_replica
    if getattr(original, "fixed_for_multi_worker", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if (reduction in ("auto", "mean")
                and keras_trainer._collective_all_reduce_multi_worker(strategy)):
            return tf.nest.map_structure(lambda v: strategy.reduce(
                "MEAN", v, axis=None if v.shape.rank == 0 else 0), values)
        return original(values, strategy, reduction)
    reduce_per_replica.fixed_for_multi_worker = True  # type: ignore[attr-defined]
    keras_trainer.reduce_per_replica = reduce_per_replica


class DistributedTrainer(Trainer):
    """d2l's Keras loop over this worker's shard: compiled in the strategy's scope, fed a
    ``distribute_datasets_from_function`` dataset (each worker's own shard, no auto-sharding),
    ``fit`` run in the scope."""

    def __init__(self, model: keras.Model, data: Any, batch_size: int, lr: float, seed: int, *,
                 engine: "Engine") -> None:
        self.strategy = engine.strategy
        with self.strategy.scope():
            super().__init__(model, data, batch_size, lr, seed)
            if engine.reduction == "sum":
                model.compile(optimizer=model.optimizer, loss=model.loss,
                              loss_weights=[float(engine.world_size)], metrics=["accuracy"])
        # keras-team/keras#20585: with no strategy recorded, fit takes the one of the scope it
        # runs in and skips the symbolic build that reduces a data batch across workers
        model._distribute_strategy = None

    def loader(self, epoch: int) -> Any:
        """This worker's batches of the epoch, as the strategy's distributed dataset."""
        return self.strategy.distribute_datasets_from_function(
            lambda context: Trainer.loader(self, epoch))

    def run_epoch(self, epoch: int, on_batch: Any) -> tuple[float, float]:
        with self.strategy.scope():
            return super().run_epoch(epoch, on_batch)


class Engine:
    """One worker of a MultiWorkerMirroredStrategy run, and what the run asks of it."""

    def __init__(self, *, sync_bn: bool, reduction: str, timeout: float) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"gradient reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if "TF_CONFIG" not in os.environ:
            raise ValueError("TF_CONFIG is not set: a MultiWorkerMirroredStrategy worker needs "
                             "the cluster's worker list and its own index")
        self.sync_bn, self.reduction = sync_bn, reduction
        _fit_under_multi_worker()
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=timeout))
        self.rank = int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
        self.world_size = self.strategy.num_replicas_in_sync
        self.description = (f"TensorFlow MultiWorkerMirroredStrategy, {self.world_size} workers, "
                            f"loss / {self.world_size} per replica, gradients all-reduced "
                            f"({'mean' if reduction == 'mean' else 'sum: loss weighted by N'}), "
                            f"BatchNorm {'synchronized' if sync_bn else 'per replica'}")

    def scope(self) -> ContextManager[None]:
        """Where models are built: variables made here are mirrored on every worker."""
        return self.strategy.scope()

    def prepare(self, model: keras.Model, unit: Unit) -> keras.Model:
        """With ``--sync-bn on``, every BatchNorm of the layer table made ``synchronized``
        (Keras reads the attribute at each call)."""
        if self.sync_bn:
            for layer in unit.layers():
                if layer.kind == "bn":
                    resolve(model, layer.attr).synchronized = True
        return model

    def trainer(self, model: keras.Model, data: Any, batch_size: int, lr: float,
                seed: int) -> DistributedTrainer:
        return DistributedTrainer(model, data, batch_size, lr, seed, engine=self)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Every worker's ``values`` added up (for the epoch's metrics), float64."""
        local = tf.constant(list(values), tf.float64)
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                     self.strategy.run(lambda: tf.identity(local)), axis=None)
        return [float(v) for v in total.numpy()]

    def close(self) -> None:
        """Nothing to release: the strategy's servers end with the process."""


__all__ = ["REDUCTIONS", "SYNC_BN", "DistributedTrainer", "Engine"]
