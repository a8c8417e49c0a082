"""d2l's PyTorch loop data-parallel on PyTorch's own engine: ``DistributedDataParallel`` over
gloo, each worker set up from the environment ``torchrun`` gives it (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``: ``init_method="env://"``).

Gradients: DDP all-reduces them during ``backward`` and divides by the world size, so N workers
with a shard of B/N images each take the step of one process with the batch of B at the same
lr ("mean"); "sum" registers a comm hook that all-reduces without dividing, which is N times
that step (the linear-scaling rule's lr * N). BatchNorm: each replica normalises with its own
shard's statistics; DDP broadcasts rank 0's buffers (running statistics) before every forward,
so rank 0's running statistics are its own shard's and every replica evaluates with them.
PyTorch synchronises BatchNorm with ``SyncBatchNorm.convert_sync_batchnorm`` on GPUs only:
its kernels (``aten::batch_norm_stats`` and the rest) have no CPU implementation, and this
command trains on the CPU, so ``--sync-bn on`` is refused here (:data:`SYNC_BN`).
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any, ContextManager, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.core.spec import Unit

from .train import Trainer

REDUCTIONS = ("mean", "sum")
# None where the engine synchronises BatchNorm in this command, else why it cannot
SYNC_BN = ("PyTorch's SyncBatchNorm runs on GPUs only: its kernels (aten::batch_norm_stats) "
           "have no CPU implementation (on CPU tensors it raises 'SyncBatchNorm expected input "
           "tensor to be on GPU'), and this command trains on the CPU with gloo")


def _sum_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP comm hook that adds the workers' gradients and does not divide by their number."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


# DDP checks a hook's annotations against the objects themselves, not their names
_sum_hook.__annotations__ = {"state": Any, "bucket": dist.GradBucket,
                             "return": torch.futures.Future[torch.Tensor]}


class DistributedTrainer(Trainer):
    """d2l's PyTorch loop over this worker's shard, the model wrapped in DDP (which broadcasts
    rank 0's parameters and buffers when it is made)."""

    def __init__(self, model: nn.Module, data: Any, batch_size: int, lr: float, seed: int, *,
                 engine: "Engine") -> None:
        ddp = DistributedDataParallel(model)  # CPU: no device_ids
        if engine.reduction == "sum":
            ddp.register_comm_hook(None, _sum_hook)
        super().__init__(ddp, data, batch_size, lr, seed)
        self.module = model


class Engine:
    """One worker of a DDP run: the process group, and what the run asks of it."""

    def __init__(self, *, sync_bn: bool, reduction: str, timeout: float) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"gradient reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if sync_bn:
            raise ValueError(f"--sync-bn on: {SYNC_BN}; use --sync-bn off")
        self.reduction = reduction
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.description = (f"PyTorch DistributedDataParallel, gloo, {self.world_size} workers, "
                            f"gradients all-reduced and {'averaged' if reduction == 'mean' else 'summed'}")

    def scope(self) -> ContextManager[None]:
        """Where models are built (nothing to enter in PyTorch)."""
        return contextlib.nullcontext()

    def prepare(self, model: nn.Module, unit: Unit) -> nn.Module:
        """The model as the run trains it: unchanged (BatchNorm per replica)."""
        return model

    def trainer(self, model: nn.Module, data: Any, batch_size: int, lr: float,
                seed: int) -> DistributedTrainer:
        return DistributedTrainer(model, data, batch_size, lr, seed, engine=self)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Every worker's ``values`` added up (for the epoch's metrics), float64."""
        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Leave the group once every worker is done with it (rank 0 hosts its store)."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


__all__ = ["REDUCTIONS", "SYNC_BN", "DistributedTrainer", "Engine"]
