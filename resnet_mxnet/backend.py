"""The MXNet Gluon backend: canonical state in and out, NCHW forward and trace.

Gluon already speaks the canonical layouts (NCHW activations, conv kernels ``(out, in, kh, kw)``,
dense ``(out, in)``, BatchNorm ``gamma``/``beta``/``running_mean``/``running_var``), so state
crosses 1:1. Training mode runs under ``autograd.record(train_mode=True)``: BatchNorm then
normalises with the batch statistics. Gluon moves the running statistics in the *backward*
pass (with the biased batch variance), not in the forward: a training-mode forward, recorded or
not, leaves them as they were, unlike PyTorch's. ``parity_tests/test_gluon_idioms.py`` pins
this down.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import numpy as np

from common.core.backend import BaseBackend, Convention, SGDConfig
from common.core.data import ImageData
from common.core.spec import BottleneckSpec, ConvNeXtSpec, ResnetBlockSpec, ResNetSpec, Unit
from common.core.trace import ModelOps

from ._compat import autograd, gluon, mx
from .convnext import ConvNeXt
from .model import ResNet, block_from_spec, bottleneck_from_spec, residual_from_spec
from .train import Trainer

# canonical parameter name -> Gluon attribute, per layer kind
_PARAM_NAMES = {
    "conv": {"weight": "weight", "bias": "bias"},
    "dense": {"weight": "weight", "bias": "bias"},
    "bn": {p: p for p in ("gamma", "beta", "running_mean", "running_var")},
    "dwconv": {"weight": "weight", "bias": "bias"},
    "ln": {"gamma": "gamma", "beta": "beta"},
    "scale": {"gamma": "gamma"},
}


def parity_mode() -> None:
    """Plain float32 on GPU: no tensor-core (TF32) math, no cuDNN algorithm autotuning.

    MXNet reads these variables when it creates a GPU operator, so they apply to operators
    created afterwards. Untested on the CPU-only wheel this suite pins (1.9.1 has no GPU here).
    """
    os.environ["MXNET_CUDA_ALLOW_TENSOR_CORE"] = "0"
    os.environ["MXNET_CUDNN_AUTOTUNE_DEFAULT"] = "0"


class Backend(BaseBackend):
    name = "mxnet"
    convention = Convention(running_var="biased", updated_in="backward")

    def _build(self, unit: Unit, dtype: str, precision: str = "float32") -> gluon.HybridBlock:
        _amp(precision, dtype)
        if isinstance(unit, ResNetSpec):
            model = ResNet(unit)
        elif isinstance(unit, ConvNeXtSpec):
            model = ConvNeXt(unit)
        elif isinstance(unit, ResnetBlockSpec):
            model = block_from_spec(unit)
        elif isinstance(unit, BottleneckSpec):
            model = bottleneck_from_spec(unit)
        else:
            model = residual_from_spec(unit)
        model.initialize(ctx=mx.cpu())  # every in_channels is given: nothing is deferred
        if dtype != "float32":
            model.cast(dtype)
        return model

    def _read(self, layer: gluon.Block, kind: str, grad: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for canon, attr in _PARAM_NAMES[kind].items():
            param = getattr(layer, attr, None)
            if param is not None and not (grad and param.grad_req == "null"):
                out[canon] = (param.grad() if grad else param.data()).asnumpy()
        return out

    def _write(self, layer: gluon.Block, kind: str, params: Mapping[str, np.ndarray]) -> None:
        for canon, value in params.items():
            param = getattr(layer, _PARAM_NAMES[kind][canon])
            param.set_data(mx.nd.array(value, ctx=param.list_ctx()[0], dtype=param.dtype))

    def devices(self) -> list[str]:
        try:
            has_gpu = mx.context.num_gpus() > 0
        except mx.base.MXNetError:  # a CUDA build on a machine without a driver
            has_gpu = False
        return ["cpu", "gpu"] if has_gpu else ["cpu"]

    @contextlib.contextmanager
    def _session(self, model: gluon.Block, training: bool, device: str) -> Iterator[None]:
        ctx = _device(device)
        if device == "gpu":
            parity_mode()
        params = model.collect_params()
        if any(p.list_ctx() != [ctx] for p in params.values()):
            params.reset_ctx(ctx)
        # train_mode(): batch statistics in BatchNorm (the training methods record inside it);
        # predict_mode(): running statistics, even inside a caller's record() scope.
        mode = autograd.train_mode() if training else autograd.predict_mode()
        with ctx, mode:
            yield

    def _forward(self, model: gluon.Block, x: np.ndarray, training: bool, device: str
                 ) -> np.ndarray:
        return _numpy(model(mx.nd.array(x, ctx=_device(device), dtype=x.dtype)))

    def _loss(self, model: gluon.Block, x: np.ndarray, y: np.ndarray, device: str,
              mean: bool) -> mx.nd.NDArray:
        """Softmax cross-entropy per example (or its batch mean), recorded for backward."""
        ctx = _device(device)
        with autograd.record(train_mode=True):
            out = model(mx.nd.array(x, ctx=ctx, dtype=x.dtype))
            logits = out.mean(axis=(2, 3)) if out.ndim == 4 else out  # a lone block: pool H, W
            if logits.dtype not in (np.float32, np.float64):  # AMP's bfloat16: loss in float32
                logits = logits.astype("float32")
            loss = _CROSS_ENTROPY(logits, mx.nd.array(y, ctx=ctx, dtype=x.dtype))
            return loss.mean() if mean else loss

    def _loss_and_grads(self, model: gluon.Block, x: np.ndarray, y: np.ndarray,
                        device: str) -> float:
        loss = self._loss(model, x, y, device, mean=True)
        loss.backward()  # grad_req 'write': the gradient of the batch mean, nothing accumulated
        return float(loss.asscalar())

    def _sgd_step(self, model: gluon.Block, x: np.ndarray, y: np.ndarray, hyper: SGDConfig,
                  device: str) -> float:
        trainer = self._optimizer(model, hyper, lambda: _trainer(model, hyper))
        loss = self._loss(model, x, y, device, mean=False)
        # the sum over the batch; step(batch_size) rescales it to the mean
        if self.precision_of(model) == "float16":  # AMP's loss scaling for float16 gradients
            from mxnet.contrib import amp
            with autograd.record(train_mode=True), amp.scale_loss(loss, trainer) as scaled:
                pass
            scaled.backward()
        else:
            loss.backward()
        trainer.step(x.shape[0])
        return float(loss.mean().asscalar())

    def _trace_ops(self, model: gluon.Block, training: bool, device: str) -> "_Ops":
        return _Ops(model, _device(device))

    def trainer(self, model: gluon.HybridBlock, data: ImageData, batch_size: int, lr: float,
                seed: int) -> Trainer:
        return Trainer(model, data, batch_size, lr, seed)


class _Ops(ModelOps):
    """How :func:`common.core.trace.trace` calls and reads Gluon layers."""

    def __init__(self, model: gluon.Block, ctx: mx.Context) -> None:
        super().__init__(model)
        self.ctx = ctx

    def from_numpy(self, x: np.ndarray) -> mx.nd.NDArray:
        return mx.nd.array(x, ctx=self.ctx, dtype=x.dtype)

    def relu(self, x: mx.nd.NDArray) -> mx.nd.NDArray:
        return mx.nd.relu(x)

    def to_numpy(self, x: mx.nd.NDArray) -> np.ndarray:
        return _numpy(x)

    def dtype(self, x: mx.nd.NDArray) -> str:
        return _dtype_name(x.dtype)

    def channels_last(self, x: mx.nd.NDArray) -> mx.nd.NDArray:
        return mx.nd.transpose(x, axes=(0, 2, 3, 1))

    def channels_first(self, x: mx.nd.NDArray) -> mx.nd.NDArray:
        return mx.nd.transpose(x, axes=(0, 3, 1, 2))


_CROSS_ENTROPY = gluon.loss.SoftmaxCrossEntropyLoss()


def _trainer(model: gluon.Block, hyper: SGDConfig) -> gluon.Trainer:
    """Gluon's SGD trainer; under float16 AMP, with AMP's dynamic loss scaling."""
    trainer = gluon.Trainer(model.collect_params(), "sgd", {
        "learning_rate": hyper.lr, "momentum": hyper.momentum, "wd": hyper.weight_decay})
    if _AMP == ["float16"]:
        from mxnet.contrib import amp
        amp.init_trainer(trainer)
    return trainer

# MXNet's mixed precision is AMP, and ``amp.init`` is process-wide and final: it rewrites the
# operators of mx.nd and mx.sym, so from then on every float32 Convolution and FullyConnected
# in the process computes in the target dtype. The backend therefore refuses a float32 model
# once AMP is on, rather than hand back one that silently is not. float64 is left alone.
_AMP: list[str] = []


def _amp(precision: str, dtype: str) -> None:
    """Turn AMP on for ``precision`` (bfloat16, float16) once per process, or check that a
    float32 model can still compute in float32 here."""
    if precision == "float32":
        if _AMP and dtype == "float32":
            raise RuntimeError(f"MXNet AMP ({_AMP[0]}) is on in this process; a float32 Gluon "
                               "model would compute in it. Build float32 models in another "
                               "process")
        return
    if _AMP and _AMP[0] != precision:
        raise RuntimeError(f"MXNet AMP is on for {_AMP[0]} in this process; it cannot switch "
                           f"to {precision}")
    if not _AMP:
        from mxnet.contrib import amp
        amp.init(target_dtype=precision)
        _AMP.append(precision)


def _dtype_name(dtype: object) -> str:
    """MXNet's bfloat16 is a numpy record type (``[('bfloat16', '<u2')]``); the rest are numpy's."""
    names = np.dtype(dtype).names
    return names[0] if names else np.dtype(dtype).name


def _numpy(x: mx.nd.NDArray) -> np.ndarray:
    """An NDArray as numpy: float32 and float64 as they are, AMP's bfloat16 as float32."""
    if _dtype_name(x.dtype) not in ("float32", "float64"):
        x = x.astype("float32")
    return x.asnumpy()


def _device(device: str) -> mx.Context:
    """The suite's device name ("cpu", "gpu") as MXNet's context."""
    return mx.gpu(0) if device == "gpu" else mx.cpu()


def backend() -> Backend:
    return Backend()
