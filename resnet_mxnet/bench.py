"""Gluon's ways to run the model for ``resnet-parity bench``: imperative and
``hybridize(static_alloc=True, static_shape=True)``."""

from __future__ import annotations

import ctypes
import os
from typing import Callable

import numpy as np

from ._compat import autograd, gluon, mx

# this framework's ways to run the model -> the kind ``resnet-parity bench --modes`` selects
MODES = {"imperative": "eager", "hybridized": "compiled"}


def runners(model: gluon.HybridBlock, mode: str, lr: float = 0.05
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], float]]:
    """``(forward(x) -> logits, train_step(x, y) -> loss)`` for one mode; NCHW numpy in."""
    if mode == "hybridized":
        model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def forward(x: np.ndarray) -> np.ndarray:
        with autograd.predict_mode():
            return model(mx.nd.array(x)).asnumpy()

    def train_step(x: np.ndarray, y: np.ndarray) -> float:
        with autograd.record():
            loss = loss_fn(model(mx.nd.array(x)), mx.nd.array(y))
        loss.backward()
        trainer.step(x.shape[0])
        return float(loss.mean().asscalar())

    return forward, train_step


def threads() -> dict[str, int]:
    return {"omp": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}


def set_threads(n: int) -> None:
    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(n))
