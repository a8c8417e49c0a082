"""The Backend contract and ``get_backend(name)``, which imports a framework only when asked.

Everything that is the same in every framework lives in :class:`BaseBackend`: walking the layer
table for export and strict load, input checks, and the layer-by-layer trace. A framework package
supplies only what differs: how to build, read and write one layer, and run tensors.
"""

from __future__ import annotations

import contextlib
import importlib
import weakref
from abc import ABC, abstractmethod
from typing import Any, ContextManager, Mapping, Optional

import numpy as np

from .spec import ResidualSpec, ResnetBlockSpec, ResNetSpec, Unit, resnet18_spec
from .state import State, validate_state
from .trace import TraceOps, resolve, trace

# name -> (module, the framework's import name, pip extra, human name)
_BACKENDS = {
    "torch": ("resnet_torch.backend", ("torch",), "torch", "PyTorch"),
    "tf": ("resnet_tf.backend", ("tensorflow", "keras"), "tf", "TensorFlow/Keras"),
    "mxnet": ("resnet_mxnet.backend", ("mxnet",), "mxnet", "MXNet"),
}
_ALIASES = {"pytorch": "torch", "keras": "tf", "tensorflow": "tf", "gluon": "mxnet", "mx": "mxnet"}
BACKEND_NAMES = tuple(_BACKENDS)
DEVICES = ("cpu", "gpu")


class BackendUnavailable(ImportError):
    """The framework behind a backend is not installed; the message names the pip extra."""


def canonical_name(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _BACKENDS:
        raise ValueError(f"unknown framework {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    return key


def install_hint(name: str) -> str:
    _, _, extra, human = _BACKENDS[canonical_name(name)]
    return f"{human} is not installed: pip install 'resnet-parity[{extra}]'"


def get_backend(name: str) -> "BaseBackend":
    """The backend for "torch", "tf" or "mxnet"; imports that framework now and no other."""
    key = canonical_name(name)
    module, roots, _, _ = _BACKENDS[key]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in roots:
            raise BackendUnavailable(install_hint(key)) from e
        raise
    return mod.backend()


class BaseBackend(ABC):
    """The contract every framework meets; see DESIGN.md "The shared interface"."""

    name: str = ""

    def __init__(self) -> None:
        self._units: "weakref.WeakKeyDictionary[Any, Unit]" = weakref.WeakKeyDictionary()

    # -- what a framework supplies ------------------------------------------------------------
    @abstractmethod
    def _build(self, unit: Unit) -> Any:
        """A fresh framework model for ``unit``, parameters allocated."""

    @abstractmethod
    def _read(self, layer: Any, kind: str) -> dict[str, np.ndarray]:
        """The canonical parameters of one conv/bn/dense layer."""

    @abstractmethod
    def _write(self, layer: Any, kind: str, params: Mapping[str, np.ndarray]) -> None:
        """Set one layer's parameters from canonical arrays."""

    @abstractmethod
    def _trace_ops(self, model: Any, training: bool, device: str) -> TraceOps:
        """Ops for :func:`common.trace.trace`; ``from_numpy`` turns NCHW input into a tensor."""

    def _session(self, model: Any, training: bool, device: str) -> ContextManager[None]:
        """Context for one forward or trace: mode, device, gradient recording (default: none)."""
        return contextlib.nullcontext()

    @abstractmethod
    def _forward(self, model: Any, x: np.ndarray, training: bool, device: str) -> np.ndarray:
        """The model's own forward pass on NCHW input, NCHW (or N, classes) output."""

    @abstractmethod
    def devices(self) -> list[str]:
        """The devices this framework can run on here, "cpu" first."""

    # -- the shared contract ------------------------------------------------------------------
    def build(self, unit: Optional[Unit] = None) -> Any:
        """Build ``unit`` (default: d2l's ResNet-18) with the framework's own initialiser."""
        unit = resnet18_spec() if unit is None else unit
        if not isinstance(unit, (ResNetSpec, ResnetBlockSpec, ResidualSpec)):
            raise TypeError(f"build() takes a spec, got {type(unit).__name__}")
        return self.register(self._build(unit), unit)

    def register(self, model: Any, unit: Unit) -> Any:
        """Adopt a model built elsewhere (d2l's code as printed, say) whose attribute names
        follow ``unit``'s layer table, so export, load and trace work on it."""
        self._units[model] = unit
        return model

    def unit_of(self, model: Any) -> Unit:
        unit = self._units.get(model) or getattr(model, "spec", None)
        if unit is None:
            raise TypeError(f"{type(model).__name__} was not built from a spec; "
                            f"build it with get_backend({self.name!r}).build(spec)")
        return unit

    def export_state(self, model: Any) -> State:
        """``{canonical name: float32 array}`` in canonical layouts."""
        out: State = {}
        for layer in self.unit_of(model).layers():
            params = self._read(resolve(model, layer.attr), layer.kind)
            for p in layer.shapes:
                out[f"{layer.name}.{p}"] = np.array(params[p], dtype=np.float32, copy=True)
        return out

    def load_state(self, model: Any, state: Mapping[str, np.ndarray], *,
                   allow_nonfinite: bool = False) -> None:
        """Strict load: a missing, unexpected or mis-shaped key, or a NaN/inf, raises ValueError.

        The whole state is checked before anything is written, so a failed load leaves the
        model as it was.
        """
        checked = validate_state(state, self.unit_of(model), allow_nonfinite=allow_nonfinite)
        for layer in self.unit_of(model).layers():
            self._write(resolve(model, layer.attr), layer.kind,
                        {p: checked[f"{layer.name}.{p}"] for p in layer.shapes})

    def forward(self, model: Any, x: np.ndarray, training: bool = False,
                device: str = "cpu") -> np.ndarray:
        """Run NCHW numpy input through the model; numpy output (NCHW, or (N, classes))."""
        x, device = self.check_input(model, x), self.check_device(device)
        with self._session(model, training, device):
            return self._forward(model, x, training, device)

    def activations(self, model: Any, x: np.ndarray, training: bool = False,
                    device: str = "cpu") -> dict[str, np.ndarray]:
        """Ordered ``{layer name: NCHW array}``, the same names in every backend."""
        x, device = self.check_input(model, x), self.check_device(device)
        with self._session(model, training, device):
            ops = self._trace_ops(model, training, device)
            return trace(self.unit_of(model), ops, ops.from_numpy(x))

    # -- helpers ------------------------------------------------------------------------------
    def check_input(self, model: Any, x: Any) -> np.ndarray:
        unit = self.unit_of(model)
        x = np.asarray(x)
        want = unit.in_channels if isinstance(unit, ResNetSpec) else unit.input_channels
        if x.ndim != 4:
            raise ValueError(f"input must be NCHW (4 dimensions), got shape {x.shape}")
        if x.shape[1] != want:
            raise ValueError(f"input has {x.shape[1]} channels, the model takes {want} "
                             f"(NCHW input, got shape {x.shape})")
        if min(x.shape) == 0:
            raise ValueError(f"input has an empty dimension: {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"input must be numeric, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def check_device(self, device: str) -> str:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if device not in self.devices():
            raise RuntimeError(f"{self.name}: no GPU is visible to this framework here")
        return device
