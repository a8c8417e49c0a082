"""Gluon's ways to run the model for ``resnet-parity bench``: imperative, and hybridized
(``static_alloc``, ``static_shape``) with the inference graph partitioned for oneDNN
(``optimize_for(backend="MKLDNN")``: conv, BatchNorm, ReLU and sum fused)."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Optional

import numpy as np

from ._compat import autograd, gluon, mx

# this framework's ways to run the model -> the kind ``resnet-parity bench --modes`` selects
MODES = {"imperative": "eager", "hybridized": "compiled"}


def runners(model: gluon.HybridBlock, mode: str, lr: float = 0.05
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], float]]:
    """``(forward(x) -> logits, train_step(x, y) -> loss)`` for one mode; NCHW numpy in.

    Hybridized, ``forward`` runs a ``SymbolBlock`` of the model's graph that shares its
    parameters, partitioned for oneDNN at its first call (BatchNorm folded into the convs:
    inference only); ``train_step`` runs the model's own hybridized graph."""
    infer: Optional[gluon.SymbolBlock] = None
    if mode == "hybridized":
        model.hybridize(static_alloc=True, static_shape=True)
        data = mx.sym.var("data")
        infer = gluon.SymbolBlock(model(data), data, params=model.collect_params())
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    partitioned = []

    def forward(x: np.ndarray) -> np.ndarray:
        xn = mx.nd.array(x)
        if infer is not None and not partitioned:
            infer.optimize_for(xn, backend="MKLDNN", static_alloc=True, static_shape=True)
            partitioned.append(True)
        with autograd.predict_mode():
            return (model if infer is None else infer)(xn).asnumpy()

    def train_step(x: np.ndarray, y: np.ndarray) -> float:
        with autograd.record():
            loss = loss_fn(model(mx.nd.array(x)), mx.nd.array(y))
        loss.backward()
        trainer.step(x.shape[0])
        return float(loss.mean().asscalar())

    return forward, train_step


def conv_runner(x: np.ndarray, weight: np.ndarray, groups: int
                ) -> tuple[Callable[[], Any], Callable[[Any], np.ndarray]]:
    """``(run() -> output, to_numpy(output) -> NCHW)``: a 3x3 conv (padding 1, ``num_group``)
    of NCHW ``x`` with a canonical ``weight``; ``run`` waits for MXNet's asynchronous engine."""
    xn, wn = mx.nd.array(x), mx.nd.array(weight)

    def run() -> Any:
        y = mx.nd.Convolution(xn, wn, kernel=(3, 3), pad=(1, 1), num_filter=weight.shape[0],
                              num_group=groups, no_bias=True)
        y.wait_to_read()
        return y

    return run, lambda y: y.asnumpy()


def threads() -> dict[str, int]:
    return {"omp": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}


def set_threads(n: int) -> None:
    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(n))
