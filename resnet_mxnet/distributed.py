"""d2l's Gluon loop data-parallel on MXNet's own engine: the ``dist_sync`` kvstore, each process
set up from the ``DMLC_*`` environment MXNet's launcher gives it (``mxnet.tools.launch``,
dmlc_tracker): a scheduler, servers and workers, every one running the same command. A server
or the scheduler never returns from ``import mxnet``: MXNet runs it there and exits.

Gradients: every worker pushes its gradient, the servers add them up (``dist_sync``: one round
per step, all workers in it) and every worker pulls the sum and updates its own weights
(``update_on_kvstore=False``); ``Trainer.step(batch_size)`` scales the gradient by
``1 / batch_size`` (``rescale_grad``). With the summed loss of d2l's loop, "mean" passes the
global batch, ``n * N``: the step of one process with the batch of B at the same lr. "sum"
passes the worker's own ``n``, the mistake ``step``'s argument invites: N times that step.

Two facts of MXNet 1.9.1 shape this:

* ``Trainer`` initialises the kvstore lazily, in the first ``step()``; with
  ``update_on_kvstore=False`` one key holds the initial weights and then the gradient sums, and
  the first pull of the weights is not ordered against the first push of gradients: measured,
  3 of 6 two-worker runs started from the summed gradients instead of the weights. :class:`DistributedTrainer`
  initialises the kvstore before the first forward and waits for it.
* BatchNorm is per device: ``gluon.contrib.nn.SyncBatchNorm(num_devices=k)`` synchronises the
  ``k`` devices of one process (it waits until all ``k`` have called it, an in-process barrier)
  and the kvstore reduces gradients, not batch statistics, so nothing synchronises BatchNorm
  across kvstore workers and ``--sync-bn on`` is refused (:data:`SYNC_BN`). Each worker keeps
  its own running statistics; rank 0's are saved.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Sequence

from common.core.spec import Unit

from ._compat import gluon, mx
from .train import Trainer

REDUCTIONS = ("mean", "sum")
# None where the engine synchronises BatchNorm in this command, else why it cannot
SYNC_BN = ("MXNet cannot synchronise BatchNorm across kvstore workers: "
           "gluon.contrib.nn.SyncBatchNorm synchronises the devices of one process (num_devices, "
           "an in-process barrier: with more than the process's own devices it waits forever) and "
           "the dist_sync kvstore reduces gradients, not batch statistics")
_METRICS_KEY = 1 << 24  # a kvstore key no parameter uses (Gluon numbers them 0, 1, ...)


class _GlobalStep(gluon.Trainer):
    """Gluon's Trainer on the dist_sync kvstore, ``step(n)`` normalising by ``n * scale``."""

    def __init__(self, params: Any, lr: float, kvstore: Any, scale: int) -> None:
        super().__init__(params, "sgd", {"learning_rate": lr}, kvstore=kvstore,
                         update_on_kvstore=False)
        self.scale = scale
        # initialise the kvstore (rank 0's weights, pulled by all) now, not in the first step
        self._init_kvstore()
        self._init_params()
        mx.nd.waitall()

    def step(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        super().step(batch_size * self.scale, ignore_stale_grad)


class DistributedTrainer(Trainer):
    """d2l's Gluon loop over this worker's shard, its Trainer on the dist_sync kvstore."""

    def __init__(self, model: gluon.HybridBlock, data: Any, batch_size: int, lr: float,
                 seed: int, *, engine: "Engine") -> None:
        super().__init__(model, data, batch_size, lr, seed)
        scale = engine.world_size if engine.reduction == "mean" else 1
        self.trainer = _GlobalStep(model.collect_params(), lr, engine.kv, scale)


class Engine:
    """One worker of a dist_sync run: the kvstore, and what the run asks of it."""

    def __init__(self, *, sync_bn: bool, reduction: str, timeout: float) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"gradient reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if sync_bn:
            raise ValueError(f"--sync-bn on: {SYNC_BN}; use --sync-bn off")
        self.reduction = reduction
        self.kv = mx.kv.create("dist_sync")
        self.rank, self.world_size = self.kv.rank, self.kv.num_workers
        self._metrics_shape: tuple[int, ...] = ()
        self.description = (f"MXNet kvstore dist_sync, {self.world_size} workers, gradients "
                            f"summed by the servers, step({'n x N' if reduction == 'mean' else 'n'})"
                            f", BatchNorm per worker")

    def scope(self) -> ContextManager[None]:
        """Where models are built (nothing to enter in Gluon)."""
        return contextlib.nullcontext()

    def prepare(self, model: gluon.HybridBlock, unit: Unit) -> gluon.HybridBlock:
        """The model as the run trains it: unchanged (BatchNorm per worker)."""
        return model

    def trainer(self, model: gluon.HybridBlock, data: Any, batch_size: int, lr: float,
                seed: int) -> DistributedTrainer:
        return DistributedTrainer(model, data, batch_size, lr, seed, engine=self)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Every worker's ``values`` added up (for the epoch's metrics): pushed to a key of
        their own, summed by the servers, pulled back."""
        local = mx.nd.array(list(values), dtype="float64")
        if self._metrics_shape != local.shape:
            self.kv.init(_METRICS_KEY, mx.nd.zeros(local.shape, dtype="float64"))
            self._metrics_shape = local.shape
        self.kv.push(_METRICS_KEY, local)
        out = mx.nd.zeros(local.shape, dtype="float64")
        self.kv.pull(_METRICS_KEY, out=out)
        return [float(v) for v in out.asnumpy()]

    def close(self) -> None:
        """Nothing to release: the kvstore says goodbye to the scheduler when the process ends."""


__all__ = ["REDUCTIONS", "SYNC_BN", "DistributedTrainer", "Engine"]
