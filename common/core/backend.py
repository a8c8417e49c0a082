"""The Backend contract: what every framework package implements, and what it inherits.

Everything that is the same in every framework lives in :class:`BaseBackend`: walking the layer
table for export and strict load, input checks, and the layer-by-layer trace. A framework package
(``resnet_torch``, ``resnet_tf``, ``resnet_mxnet``) supplies only what differs: how to build,
read and write one layer, and run tensors. Which package serves which name is the registry's
business (:mod:`common.tools.registry`), one layer up: this module imports no framework.
"""

from __future__ import annotations

import contextlib
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional

import numpy as np

from .spec import (
    BottleneckSpec,
    ConvNeXtSpec,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    Unit,
    num_inputs,
    num_outputs,
    resnet18_spec,
)
from .state import State, validate_state
from .trace import TraceOps, resolve, trace

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")
# What a float32 model may compute in: float32, or each framework's own mixed precision
# (PyTorch autocast, Keras dtype policies, MXNet AMP), which keeps float32 weights.
PRECISIONS = ("float32", "bfloat16", "float16")
# Trainable parameters per layer kind (BatchNorm running statistics are state, not parameters).
TRAINABLE = {"conv": ("weight", "bias"), "dwconv": ("weight", "bias"), "dense": ("weight", "bias"),
             "bn": ("gamma", "beta"), "ln": ("gamma", "beta"), "scale": ("gamma",)}


@dataclass(frozen=True)
class SGDConfig:
    """Plain SGD hyperparameters, PyTorch's meaning (weight decay is coupled L2)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class Convention:
    """How a backend moves BatchNorm running statistics."""

    running_var: str      # "unbiased" (PyTorch) or "biased" (Keras 3, Gluon)
    updated_in: str       # "forward" (PyTorch, Keras) or "backward" (Gluon)


class BaseBackend(ABC):
    """The contract every framework meets (``docs/architecture.md``, "The contract")."""

    name: str = ""
    convention: Convention  # how BatchNorm running statistics move

    def __init__(self) -> None:
        self._units: "weakref.WeakKeyDictionary[Any, tuple[Unit, str]]" = (
            weakref.WeakKeyDictionary())
        self._optimizers: "weakref.WeakKeyDictionary[Any, tuple[SGDConfig, Any]]" = (
            weakref.WeakKeyDictionary())

    # -- what a framework supplies ------------------------------------------------------------
    @abstractmethod
    def _build(self, unit: Unit, dtype: str, precision: str = "float32") -> Any:
        """A fresh framework model for ``unit``, parameters allocated in ``dtype``, computing in
        ``precision`` by the framework's own mixed-precision idiom (float32 weights kept)."""

    @abstractmethod
    def _read(self, layer: Any, kind: str, grad: bool = False) -> dict[str, np.ndarray]:
        """The canonical parameters of one conv/bn/dense layer, or with ``grad`` the gradients
        left by the last :meth:`_loss_and_grads` (trainable parameters only)."""

    @abstractmethod
    def _write(self, layer: Any, kind: str, params: Mapping[str, np.ndarray]) -> None:
        """Set one layer's parameters from canonical arrays."""

    @abstractmethod
    def _trace_ops(self, model: Any, training: bool, device: str) -> TraceOps:
        """Ops for :func:`common.core.trace.trace`; ``from_numpy`` turns NCHW input into a tensor."""

    def _session(self, model: Any, training: bool, device: str) -> ContextManager[None]:
        """Context for one forward or trace: mode, device, gradient recording (default: none)."""
        return contextlib.nullcontext()

    @abstractmethod
    def _forward(self, model: Any, x: np.ndarray, training: bool, device: str) -> np.ndarray:
        """The model's own forward pass on NCHW input, NCHW (or N, classes) output."""

    @abstractmethod
    def devices(self) -> list[str]:
        """The devices this framework can run on here, "cpu" first."""

    @abstractmethod
    def _loss_and_grads(self, model: Any, x: np.ndarray, y: np.ndarray, device: str) -> float:
        """Training-mode forward, mean softmax cross-entropy, backward; grads kept for _read."""

    @abstractmethod
    def _sgd_step(self, model: Any, x: np.ndarray, y: np.ndarray, hyper: SGDConfig,
                  device: str) -> float:
        """One step of the framework's own SGD optimizer (cached per model, see _optimizer)."""

    @abstractmethod
    def trainer(self, model: Any, data: Any, batch_size: int, lr: float, seed: int) -> Any:
        """The framework's own d2l training loop (its package's ``train.Trainer``), one epoch a
        call of ``run_epoch(epoch, on_batch)``; ``data`` is a :class:`common.core.data.ImageData`."""

    # -- the shared contract ------------------------------------------------------------------
    def build(self, unit: Optional[Unit] = None, dtype: str = "float32",
              precision: str = "float32") -> Any:
        """Build ``unit`` (default: d2l's ResNet-18) with the framework's own initialiser.

        ``dtype="float64"`` builds a double-precision twin: float32 rounding, amplified by
        BatchNorm in training mode, then no longer hides what the frameworks compute.
        ``precision="bfloat16"`` or ``"float16"`` keeps float32 weights and computes the way
        the framework's own mixed precision does (PyTorch autocast, a Keras dtype policy, MXNet
        AMP); the state still goes in and out as float32.
        """
        unit = resnet18_spec() if unit is None else unit
        if not isinstance(unit, (ResNetSpec, ResnetBlockSpec, ResidualSpec, BottleneckSpec,
                                 ConvNeXtSpec)):
            raise TypeError(f"build() takes a spec, got {type(unit).__name__}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "float32" and dtype != "float32":
            raise ValueError(f"precision {precision!r} mixes with float32 weights, not {dtype}")
        return self.register(self._build(unit, dtype, precision), unit, dtype, precision)

    def register(self, model: Any, unit: Unit, dtype: str = "float32",
                 precision: str = "float32") -> Any:
        """Adopt a model built elsewhere (d2l's code as printed, say) whose attribute names
        follow ``unit``'s layer table, so export, load and trace work on it."""
        self._units[model] = (unit, dtype, precision)
        return model

    def unit_of(self, model: Any) -> Unit:
        record = self._units.get(model)
        unit = record[0] if record else getattr(model, "spec", None)
        if unit is None:
            raise TypeError(f"{type(model).__name__} was not built from a spec; "
                            f"build it with get_backend({self.name!r}).build(spec)")
        return unit

    def dtype_of(self, model: Any) -> str:
        record = self._units.get(model)
        return record[1] if record else "float32"

    def precision_of(self, model: Any) -> str:
        """What the model computes in: its dtype, or a mixed precision (:data:`PRECISIONS`)."""
        record = self._units.get(model)
        return record[2] if record else "float32"

    def export_state(self, model: Any) -> State:
        """``{canonical name: array}`` in canonical layouts and the model's dtype (float32)."""
        out: State = {}
        dtype = self.dtype_of(model)
        for layer in self.unit_of(model).layers():
            params = self._read(resolve(model, layer.attr), layer.kind)
            for p in layer.shapes:
                out[f"{layer.name}.{p}"] = np.array(params[p], dtype=dtype, copy=True)
        return out

    def load_state(self, model: Any, state: Mapping[str, np.ndarray], *,
                   allow_nonfinite: bool = False) -> None:
        """Strict load: a missing, unexpected or mis-shaped key, or a NaN/inf, raises ValueError.

        The whole state is checked before anything is written, so a failed load leaves the
        model as it was.
        """
        checked = validate_state(state, self.unit_of(model), allow_nonfinite=allow_nonfinite,
                                 dtype=self.dtype_of(model))
        for layer in self.unit_of(model).layers():
            self._write(resolve(model, layer.attr), layer.kind,
                        {p: checked[f"{layer.name}.{p}"] for p in layer.shapes})

    def forward(self, model: Any, x: np.ndarray, training: bool = False,
                device: str = "cpu") -> np.ndarray:
        """Run NCHW numpy input through the model; numpy output (NCHW, or (N, classes)).

        ``training=True`` normalises with batch statistics; the model is left unchanged (its
        running statistics are restored), so only :meth:`sgd_step` trains."""
        x, device = self.check_input(model, x), self.check_device(device)
        with self._unchanged(model, training), self._session(model, training, device):
            return self._forward(model, x, training, device)

    def activations(self, model: Any, x: np.ndarray, training: bool = False,
                    device: str = "cpu", dtypes: Optional[dict[str, str]] = None
                    ) -> dict[str, np.ndarray]:
        """Ordered ``{layer name: NCHW array}``, the same names in every backend; like
        :meth:`forward`, it leaves the model unchanged in either mode.

        Arrays are float32 or float64; with ``dtypes`` given, it is filled with the dtype each
        layer's output had in the framework (``bfloat16`` where mixed precision computed it so).
        """
        x, device = self.check_input(model, x), self.check_device(device)
        with self._unchanged(model, training), self._session(model, training, device):
            ops = self._trace_ops(model, training, device)
            return trace(self.unit_of(model), ops, ops.from_numpy(x), dtypes)

    # -- training -----------------------------------------------------------------------------
    def gradients(self, model: Any, x: np.ndarray, y: np.ndarray,
                  device: str = "cpu") -> tuple[float, State]:
        """``(loss, {canonical name: gradient})`` for one batch in training mode.

        The loss is softmax cross-entropy, mean over the batch, of the logits (for a lone block,
        of its output averaged over height and width). Gradients come for every trainable
        parameter (conv and dense weights and biases, BatchNorm gamma and beta) in canonical
        layouts. The model is left as it was: running statistics are restored.
        """
        x, device = self.check_input(model, x), self.check_device(device)
        y = self.check_labels(model, x, y)
        with self._preserved(model), self._session(model, True, device):
            loss = self._loss_and_grads(model, x, y, device)
            grads: State = {}
            dtype = self.dtype_of(model)
            for layer in self.unit_of(model).layers():
                g = self._read(resolve(model, layer.attr), layer.kind, grad=True)
                for p in TRAINABLE[layer.kind]:
                    if p in layer.shapes:
                        grads[f"{layer.name}.{p}"] = np.array(g[p], dtype=dtype, copy=True)
        return loss, grads

    def sgd_step(self, model: Any, x: np.ndarray, y: np.ndarray, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, device: str = "cpu") -> float:
        """Train one step with the framework's own autograd and SGD; return the batch's loss.

        Updates the parameters and the BatchNorm running statistics, each framework its own way
        (see README: running variance). ``weight_decay`` is PyTorch's coupled L2 (the gradient
        gains ``weight_decay * w``) in every backend. Momentum buffers live with the model as
        long as ``lr``, ``momentum`` and ``weight_decay`` stay the same.
        """
        hyper = SGDConfig(lr, momentum, weight_decay)
        x, device = self.check_input(model, x), self.check_device(device)
        y = self.check_labels(model, x, y)
        with self._session(model, True, device):
            return float(self._sgd_step(model, x, y, hyper, device))

    def _optimizer(self, model: Any, hyper: SGDConfig, make: Callable[[], Any]) -> Any:
        """The optimizer for ``model`` and ``hyper``: cached, or made anew when ``hyper`` changes."""
        cached = self._optimizers.get(model)
        if cached is None or cached[0] != hyper:
            cached = (hyper, make())
            self._optimizers[model] = cached
        return cached[1]

    def _unchanged(self, model: Any, training: bool) -> ContextManager[None]:
        # forward and activations never change the model, in any mode or framework
        return self._preserved(model) if training else contextlib.nullcontext()

    @contextlib.contextmanager
    def _preserved(self, model: Any) -> Iterator[None]:
        """Restore the whole state (running statistics included) on the way out."""
        saved = self.export_state(model)
        try:
            yield
        finally:
            self.load_state(model, saved, allow_nonfinite=True)

    # -- helpers ------------------------------------------------------------------------------
    def check_input(self, model: Any, x: Any) -> np.ndarray:
        x = np.asarray(x)
        want = num_inputs(self.unit_of(model))
        if x.ndim != 4:
            raise ValueError(f"input must be NCHW (4 dimensions), got shape {x.shape}")
        if x.shape[1] != want:
            raise ValueError(f"input has {x.shape[1]} channels, the model takes {want} "
                             f"(NCHW input, got shape {x.shape})")
        if min(x.shape) == 0:
            raise ValueError(f"input has an empty dimension: {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"input must be numeric, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.dtype_of(model))

    def check_labels(self, model: Any, x: np.ndarray, y: Any) -> np.ndarray:
        classes = num_outputs(self.unit_of(model))
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},) for a batch of "
                             f"{x.shape[0]}, got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers (class indices), got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise ValueError(f"labels must lie in [0, {classes}), got {y.min()}..{y.max()}")
        return y.astype(np.int64)

    def check_device(self, device: str) -> str:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if device not in self.devices():
            raise RuntimeError(f"{self.name}: no GPU is visible to this framework here")
        return device
