"""The PyTorch backend: canonical state in and out, NCHW forward and trace.

PyTorch already speaks the canonical layouts (NCHW activations, conv kernels
``(out, in, kh, kw)``, dense ``(out, in)``); only BatchNorm's gamma and beta are called
``weight`` and ``bias`` here.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.core.backend import BaseBackend, Convention, SGDConfig
from common.core.data import ImageData
from common.core.spec import BottleneckSpec, ConvNeXtSpec, ResnetBlockSpec, ResNetSpec, Unit
from common.core.trace import ModelOps

from .convnext import ConvNeXt
from .model import ResNet, block_from_spec, bottleneck_from_spec, residual_from_spec
from .train import Trainer

# canonical parameter name -> PyTorch attribute, per layer kind
_PARAM_NAMES = {
    "conv": {"weight": "weight", "bias": "bias"},
    "dense": {"weight": "weight", "bias": "bias"},
    "bn": {"gamma": "weight", "beta": "bias", "running_mean": "running_mean",
           "running_var": "running_var"},
    "dwconv": {"weight": "weight", "bias": "bias"},
    "ln": {"gamma": "weight", "beta": "bias"},
    "scale": {"gamma": "gamma"},
}


def parity_mode() -> None:
    """Full float32 on GPU: TF32 matmuls and convolutions off (they cost ~1e-3 relative)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class Backend(BaseBackend):
    name = "torch"
    convention = Convention(running_var="unbiased", updated_in="forward")

    def __init__(self) -> None:
        super().__init__()
        self._scalers: "weakref.WeakKeyDictionary[nn.Module, torch.amp.GradScaler]" = (
            weakref.WeakKeyDictionary())

    def _build(self, unit: Unit, dtype: str, precision: str = "float32") -> nn.Module:
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
        return model.to(getattr(torch, dtype))

    def _read(self, layer: nn.Module, kind: str, grad: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for canon, attr in _PARAM_NAMES[kind].items():
            t = getattr(layer, attr, None)
            if t is not None and grad:
                t = t.grad
            if t is not None:
                out[canon] = t.detach().cpu().numpy()
        return out

    def _write(self, layer: nn.Module, kind: str, params: Mapping[str, np.ndarray]) -> None:
        with torch.no_grad():
            for canon, value in params.items():
                t = getattr(layer, _PARAM_NAMES[kind][canon])
                t.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(t.device, t.dtype))

    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]

    @contextlib.contextmanager
    def _session(self, model: nn.Module, training: bool, device: str) -> Iterator[None]:
        was_training = model.training
        if device == "gpu":
            parity_mode()
        model.to(_device(device))
        model.train(training)
        precision = self.precision_of(model)
        # mixed precision the PyTorch way: float32 weights, autocast picks each op's dtype
        autocast = (torch.autocast(_device(device).type, dtype=getattr(torch, precision))
                    if precision != "float32" else contextlib.nullcontext())
        try:
            with torch.set_grad_enabled(training), autocast:
                yield
        finally:
            model.train(was_training)

    def _forward(self, model: nn.Module, x: np.ndarray, training: bool, device: str) -> np.ndarray:
        return _numpy(model(torch.from_numpy(x).to(_device(device))))

    def _loss(self, model: nn.Module, x: np.ndarray, y: np.ndarray, device: str) -> torch.Tensor:
        dev = _device(device)
        out = model(torch.from_numpy(x).to(dev))
        logits = out.mean(dim=(2, 3)) if out.dim() == 4 else out  # a lone block: pool H, W
        return F.cross_entropy(logits, torch.from_numpy(y).to(dev))  # autocast: in float32

    def _loss_and_grads(self, model: nn.Module, x: np.ndarray, y: np.ndarray,
                        device: str) -> float:
        model.zero_grad(set_to_none=True)
        loss = self._loss(model, x, y, device)
        loss.backward()
        return loss.item()

    def _sgd_step(self, model: nn.Module, x: np.ndarray, y: np.ndarray, hyper: SGDConfig,
                  device: str) -> float:
        opt = self._optimizer(model, hyper, lambda: torch.optim.SGD(
            model.parameters(), lr=hyper.lr, momentum=hyper.momentum,
            weight_decay=hyper.weight_decay))
        opt.zero_grad(set_to_none=True)
        loss = self._loss(model, x, y, device)
        if self.precision_of(model) == "float16":
            # float16 gradients underflow: PyTorch's recipe scales the loss (GradScaler), and
            # skips the step where the scaled gradients overflow
            scaler = self._scalers.setdefault(model, torch.amp.GradScaler(_device(device).type))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.item()

    def _trace_ops(self, model: nn.Module, training: bool, device: str) -> "_Ops":
        return _Ops(model, _device(device))

    def trainer(self, model: nn.Module, data: ImageData, batch_size: int, lr: float,
                seed: int) -> Trainer:
        return Trainer(model, data, batch_size, lr, seed)


class _Ops(ModelOps):
    """How :func:`common.core.trace.trace` calls and reads PyTorch layers."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__(model)
        self.device = device

    def from_numpy(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return _numpy(x)

    def dtype(self, x: torch.Tensor) -> str:
        return str(x.dtype).removeprefix("torch.")

    def channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)

    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def _numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor as numpy: float64 stays, anything narrower (bfloat16 from autocast) is float32."""
    x = x.detach()
    return (x if x.dtype == torch.float64 else x.float()).cpu().numpy()


def _device(device: str) -> torch.device:
    """The suite's device name ("cpu", "gpu") as PyTorch's device."""
    return torch.device("cuda" if device == "gpu" else "cpu")


def backend() -> Backend:
    return Backend()
