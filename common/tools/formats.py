"""Checkpoint file formats: detection, safe readers, writers, and torchvision's key names.

Every format reads to, and writes from, the canonical state (:mod:`common.core.state`). Layouts are
never converted here: a framework format is written by building the model with that framework's
backend, loading the canonical state and calling the framework's own save function, and read
the other way round (build, the framework's own load, ``export_state``). PyTorch's layouts are
the canonical ones, so a ``state_dict`` only has its keys renamed (:func:`torch_keys`). What this
module adds is the part frameworks do not do safely or completely:

* reading a file's raw tensors without running code from it (``torch.load(weights_only=True)``,
  safetensors, HDF5, a bounds-checked parser of MXNet's NDArray file format), so that
* every key and shape is checked against the spec *before* a framework loads the file, naming
  every missing, unexpected or mis-shaped key (file key, expected and actual shape) and every
  tensor with NaN or infinity (:func:`common.core.state.check_tensors`), and
* any failure is a ``ValueError`` that names the file.

Formats (``--from`` / ``--to`` name the family; :func:`detect` picks the format by file name):

* ``canonical``: ``.safetensors`` written by :func:`common.save_state`, spec in metadata;
* ``torch``: ``.pt`` / ``.pth``, the ``state_dict`` of resnet_torch's ``ResNet``;
* ``torchvision``: ``.pt`` / ``.pth`` with torchvision's key names (family ``torch`` detects it);
* ``keras-weights`` / ``keras`` (family ``tf``): ``.weights.h5`` from ``save_weights``, and
  ``.keras`` from ``model.save``, which also stores the spec;
* ``gluon-params`` / ``gluon-export`` (family ``mxnet``): ``.params`` from ``save_parameters``,
  and ``PREFIX-symbol.json`` + ``PREFIX-0000.params`` from ``HybridBlock.export``.

Frameworks are imported inside the functions that need them, never at module import.
"""

from __future__ import annotations

import functools
import glob
import importlib
import io
import json
import os
import re
import struct
import tempfile
import warnings
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..core.spec import Layer, Unit, param_shapes, spec_from_dict
from ..core.state import State, check_tensors, publish, read_state_file, save_state, validate_state
from ..core.trace import resolve
from .registry import BackendUnavailable, get_backend, install_hint

PathLike = Union[str, os.PathLike]
RUNNING_STATS = ("running_mean", "running_var")


# -- key names ---------------------------------------------------------------------------------
# PyTorch calls BatchNorm's gamma and beta "weight" and "bias"; running statistics keep their names.
TORCH_PARAM = {"gamma": "weight", "beta": "bias"}
_TV_BLOCK = re.compile(r"stages\.(\d+)\.(\d+)\.(conv[123]|bn[123]|shortcut|shortcut_bn)$")
_TV_LAYER = {"stem.conv": "conv1", "stem.bn": "bn1", "head.fc": "fc"}
_TV_SUB = {"shortcut": "downsample.0", "shortcut_bn": "downsample.1"}


def torchvision_module(layer: str) -> str:
    """torchvision's module path for a canonical layer name.

    ``stem.conv`` -> ``conv1``, ``stem.bn`` -> ``bn1``, ``stages.1.0.conv1`` -> ``layer2.0.conv1``,
    ``stages.1.0.shortcut`` -> ``layer2.0.downsample.0``, ``stages.1.0.shortcut_bn`` ->
    ``layer2.0.downsample.1``, ``head.fc`` -> ``fc``.
    """
    if layer in _TV_LAYER:
        return _TV_LAYER[layer]
    m = _TV_BLOCK.match(layer)
    if m is None:
        raise ValueError(f"{layer!r} has no torchvision counterpart")
    stage, block, sub = m.groups()
    return f"layer{int(stage) + 1}.{block}.{_TV_SUB.get(sub, sub)}"


def attr_path(layer: Layer) -> str:
    """A layer's attribute path (``stages.1.0.conv3``): its module name in resnet_torch's
    ``state_dict`` and in Gluon's ``save_parameters`` files."""
    return ".".join(str(a) for a in layer.attr)


def torch_keys(spec: Unit, torchvision: bool = False) -> dict[str, str]:
    """Canonical parameter name -> state_dict key, in the spec's (and torchvision's) order."""
    out = {}
    for layer in spec.layers():
        module = torchvision_module(layer.name) if torchvision else attr_path(layer)
        for p in layer.shapes:
            param = TORCH_PARAM.get(p, p) if layer.kind == "bn" else p
            out[f"{layer.name}.{p}"] = f"{module}.{param}"
    return out


def torch_bn_counters(spec: Unit, torchvision: bool = False) -> list[str]:
    """The ``num_batches_tracked`` keys PyTorch adds for every BatchNorm (not canonical state)."""
    return [f"{torchvision_module(layer.name) if torchvision else attr_path(layer)}"
            ".num_batches_tracked" for layer in spec.layers() if layer.kind == "bn"]


def looks_torchvision(keys: Iterable[str]) -> bool:
    """Whether state_dict keys use torchvision's names (``conv1.weight``, ``layer1.0...``)."""
    keys = list(keys)
    return any(k.startswith(("conv1.", "bn1.", "layer1.", "fc.")) for k in keys) and not any(
        k.startswith("stem.") for k in keys)


# -- errors and small helpers ------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:1]) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _unreadable(path: Path, what: str, e: BaseException) -> ValueError:
    return ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {_first_line(e)})")


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")
    return path


def _require(module: str, framework: str) -> Any:
    """Import ``module`` (a framework or its file library) or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(install_hint(framework)) from e


def _fits(path: Path, raw: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
          spec: Unit, what: str, allow_nonfinite: bool, optional: Iterable[str] = ()) -> State:
    """:func:`check_tensors` with a message naming the file, its format and the spec."""
    return check_tensors(raw, expected, allow_nonfinite=allow_nonfinite, optional=set(optional),
                         what=f"{path}: {what} does not fit spec {spec.name!r}")


def _canonical(path: Path, state: Mapping[str, np.ndarray], spec: Unit,
               allow_nonfinite: bool) -> State:
    try:
        return validate_state(state, spec, allow_nonfinite=allow_nonfinite)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# -- the formats -------------------------------------------------------------------------------
class Format(ABC):
    """One checkpoint file format; see the module docstring for the list."""

    name: str = ""            # canonical, torch, torchvision, keras-weights, keras, gluon-...
    family: str = ""          # what --from / --to say: canonical, torch, torchvision, tf, mxnet
    framework: Optional[str] = None  # the backend that reads and writes it (None: no framework)
    suffixes: tuple[str, ...] = ()
    description: str = ""
    carries_spec: bool = False

    def __repr__(self) -> str:
        return f"<format {self.name}>"

    def files(self, path: Path, writing: bool = False) -> list[Path]:
        """Every file the checkpoint at ``path`` consists of (one, or a symbol+params pair)."""
        return [path]

    def spec(self, path: Path) -> Optional[Unit]:
        """The spec stored in the file, where the format stores one."""
        return None

    @abstractmethod
    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        """The raw tensors under the file's own names and layouts; never runs code from it."""

    def refine(self, tensors: Mapping[str, np.ndarray]) -> "Format":
        """The precise format once the tensors are known (a torch file with torchvision keys)."""
        return self

    @abstractmethod
    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        """The canonical state, after checking every key and shape against ``spec``."""

    @abstractmethod
    def write(self, path: Path, state: State, spec: Unit) -> None:
        """Write ``state`` at ``path`` (and its siblings, see :meth:`files`); not atomic."""

    def graph_forward(self, path: Path, x: np.ndarray) -> Optional[np.ndarray]:
        """Run the computation the file itself stores (a whole-model format) on NCHW ``x``."""
        return None

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> Optional[bool]:
        """Whether ``tensors`` hold exactly ``spec``'s keys and shapes in this format; None where
        only a framework could tell (the check then happens when the file is read)."""
        return None


class Canonical(Format):
    name, family, suffixes, carries_spec = "canonical", "canonical", (".safetensors",), True
    description = "canonical safetensors (common.save_state; the spec in its metadata)"

    def spec(self, path: Path) -> Unit:
        return read_state_file(path)[1]

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return read_state_file(path)[0]

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        return _canonical(path, raw, spec, allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        save_state(path, state, spec)


class TorchStateDict(Format):
    """A PyTorch ``state_dict`` saved with ``torch.save``, read with ``weights_only=True``."""

    name, family, framework, suffixes = "torch", "torch", "torch", (".pt", ".pth")
    description = "PyTorch state_dict (the suite's resnet_torch key names)"
    torchvision = False

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        _existing_file(path)
        torch = _require("torch", "torch")
        import pickle
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # protocol notes from the weights-only unpickler
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            why = (f"it would import or call {found.group(1)}" if found
                   else _first_line(re.sub(r".*WeightsUnpickler error:\s*", "", str(e),
                                           flags=re.S)))
            raise ValueError(f"{path}: refused: not a plain tensor checkpoint ({why}); PyTorch's "
                             "weights_only loader stopped before running anything") from None
        except Exception as e:  # torch raises RuntimeError, EOFError, zip errors, ...
            raise _unreadable(path, "PyTorch file", e) from None
        sd = _unwrap_state_dict(path, obj)
        out = {}
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"{path}: not a state_dict: {k!r} holds a {type(v).__name__}, "
                                 "not a tensor")
            try:
                v = v.detach()
                out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
            except (RuntimeError, TypeError) as e:  # sparse, quantized, meta tensors
                raise ValueError(f"{path}: tensor {k!r} is not a plain dense tensor "
                                 f"({_first_line(e)})") from None
        return out

    def refine(self, tensors: Mapping[str, np.ndarray]) -> Format:
        return TORCHVISION if looks_torchvision(tensors) else self

    def _expected(self, spec: Unit) -> tuple[dict[str, str], dict[str, tuple], list[str]]:
        """(canonical name -> key, key -> shape, the num_batches_tracked keys) for ``spec``."""
        keys, shapes = torch_keys(spec, self.torchvision), param_shapes(spec)
        counters = torch_bn_counters(spec, self.torchvision)
        return keys, {keys[c]: shapes[c] for c in keys} | {k: () for k in counters}, counters

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> bool:
        try:
            _, expected, counters = self._expected(spec)
        except ValueError:  # a layer torchvision has no name for
            return False
        try:
            check_tensors(tensors, expected, allow_nonfinite=True, optional=set(counters))
        except ValueError:
            return False
        return True

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        keys, expected, counters = self._expected(spec)
        checked = _fits(path, raw, expected, spec, self.description, allow_nonfinite, counters)
        return _canonical(path, {c: checked[k] for c, k in keys.items()}, spec, allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        import torch
        be = get_backend("torch")
        model = be.build(spec)
        be.load_state(model, state, allow_nonfinite=True)
        torch.save(model.state_dict(), path)


class TorchvisionStateDict(TorchStateDict):
    """A state_dict with torchvision's key names (``conv1``, ``layer2.0.downsample.0``, ``fc``)."""

    name, family = "torchvision", "torchvision"
    description = "PyTorch state_dict (torchvision's resnet key names)"
    torchvision = True

    def refine(self, tensors: Mapping[str, np.ndarray]) -> Format:
        return self

    def write(self, path: Path, state: State, spec: Unit) -> None:
        """torchvision's keys in torchvision's order; ``num_batches_tracked`` is not canonical
        state, so it is written as 0, as in a freshly constructed torchvision model."""
        import torch
        checked = validate_state(state, spec, allow_nonfinite=True)
        out: dict[str, Any] = {}
        keys = torch_keys(spec, torchvision=True)
        for layer in spec.layers():
            for p in layer.shapes:
                name = f"{layer.name}.{p}"
                out[keys[name]] = torch.from_numpy(checked[name])
            if layer.kind == "bn":
                out[f"{torchvision_module(layer.name)}.num_batches_tracked"] = torch.tensor(0)
        torch.save(out, path)


def _unwrap_state_dict(path: Path, obj: Any) -> dict[str, Any]:
    """A state_dict, also from a training checkpoint ``{"state_dict": ...}`` or a
    ``DataParallel`` model (keys prefixed ``module.``)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    if not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: not a state_dict (its keys are not all strings)")
    return dict(obj)


class _Keras(Format):
    """What the two Keras formats share: HDF5 weights laid out by Keras's own saving code."""

    family, framework = "tf", "tf"

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        _fits(path, raw, _keras_layout(spec), spec, self.description, allow_nonfinite)
        be = get_backend("tf")
        model = be.build(spec)
        try:
            model.load_weights(str(path))
        except Exception as e:  # Keras and h5py raise many types on bad files
            raise _unreadable(path, self.description, e) from None
        return _canonical(path, be.export_state(model), spec, allow_nonfinite)

    def _model(self, state: State, spec: Unit) -> Any:
        be = get_backend("tf")
        model = be.build(spec)
        be.load_state(model, state, allow_nonfinite=True)
        return model


class KerasWeights(_Keras):
    name, suffixes = "keras-weights", (".weights.h5",)
    description = "Keras weights file (save_weights)"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        _existing_file(path)
        return _h5_tensors(path, path, self.description)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        self._model(state, spec).save_weights(str(path))


class KerasModel(_Keras):
    name, suffixes, carries_spec = "keras", (".keras",), True
    description = "Keras whole-model file (model.save)"
    WEIGHTS = "model.weights.h5"

    def _member(self, path: Path, name: str) -> bytes:
        _existing_file(path)
        try:
            with zipfile.ZipFile(path) as z:
                return z.read(name)
        except KeyError:
            raise ValueError(f"{path}: not a Keras .keras archive (no {name} inside)") from None
        except Exception as e:  # BadZipFile, truncated members, CRC errors
            raise _unreadable(path, "Keras .keras archive", e) from None

    def spec(self, path: Path) -> Unit:
        try:
            config = json.loads(self._member(path, "config.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _unreadable(path, "Keras .keras archive (config.json)", e) from None
        if not (isinstance(config, dict) and config.get("registered_name") == "resnet_tf>ResNet"
                and isinstance(config.get("config"), dict) and "spec" in config["config"]):
            kind = config.get("class_name") if isinstance(config, dict) else None
            raise ValueError(f"{path}: holds a {kind or 'model'} that is not resnet_tf's ResNet "
                             "(no spec in its config)")
        try:
            return spec_from_dict(config["config"]["spec"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: bad spec in config.json: {e}") from None

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return _h5_tensors(io.BytesIO(self._member(path, self.WEIGHTS)), path, self.description)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        self._model(state, spec).save(str(path))

    def graph_forward(self, path: Path, x: np.ndarray) -> np.ndarray:
        """``keras.saving.load_model`` (safe mode: no lambdas) and its forward pass."""
        keras = _require("keras", "tf")
        be = get_backend("tf")
        try:
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except Exception as e:
            raise _unreadable(path, "Keras model (keras.saving.load_model)", e) from None
        return be.forward(model, x)


def _h5_tensors(source: Any, path: Path, what: str) -> dict[str, np.ndarray]:
    h5py = _require("h5py", "tf")
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(source, "r") as f:
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    out[name] = np.asarray(obj[()])
            f.visititems(visit)
    except Exception as e:  # OSError for a bad signature, others for damaged structures
        raise _unreadable(path, what, e) from None
    return out


@functools.lru_cache(maxsize=8)
def _keras_layout(spec: Unit) -> dict[str, tuple[int, ...]]:
    """The HDF5 dataset names and shapes Keras writes for ``spec``: learnt by saving a fresh
    model, since only Keras knows its own layout."""
    be = get_backend("tf")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "layout.weights.h5"
        be.build(spec).save_weights(str(path))
        return {k: v.shape for k, v in _h5_tensors(path, path, "Keras weights file").items()}


class GluonParams(Format):
    """``HybridBlock.save_parameters``: structural names (``stages.1.0.conv3.weight``)."""

    name, family, framework, suffixes = "gluon-params", "mxnet", "mxnet", (".params",)
    description = "Gluon parameters file (save_parameters)"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return read_ndarray_file(path)

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        if raw and all(k.startswith(("arg:", "aux:")) for k in raw):
            raise ValueError(f"{path}: holds HybridBlock.export parameters (arg:/aux: names); "
                             "read it through its PREFIX-symbol.json file")
        expected = {f"{attr_path(layer)}.{p}": s
                    for layer in spec.layers() for p, s in layer.shapes.items()}
        _fits(path, raw, expected, spec, self.description, allow_nonfinite)
        be = get_backend("mxnet")
        model = be.build(spec)
        try:
            model.load_parameters(str(path))
        except Exception as e:
            raise _unreadable(path, self.description, e) from None
        return _canonical(path, be.export_state(model), spec, allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        be = get_backend("mxnet")
        model = be.build(spec)
        be.load_state(model, state, allow_nonfinite=True)
        model.save_parameters(str(path))


class GluonExport(Format):
    """``HybridBlock.export``: ``PREFIX-symbol.json`` (the graph) + ``PREFIX-0000.params``."""

    name, family, framework = "gluon-export", "mxnet", "mxnet"
    suffixes = ("-symbol.json",)
    description = "Gluon export (PREFIX-symbol.json + PREFIX-NNNN.params)"
    _PARAMS = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")

    def files(self, path: Path, writing: bool = False) -> list[Path]:
        m = self._PARAMS.match(path.name)
        if m:
            return [path.with_name(f"{m['prefix']}-symbol.json"), path]
        if not path.name.endswith("-symbol.json"):
            raise ValueError(f"{path}: a Gluon export is named PREFIX-symbol.json "
                             "(with PREFIX-0000.params beside it)")
        prefix = path.name[: -len("-symbol.json")]
        default = path.with_name(f"{prefix}-0000.params")
        if writing or default.exists():
            return [path, default]
        found = sorted(p for p in path.parent.glob(f"{glob.escape(prefix)}-[0-9][0-9][0-9][0-9].params"))
        if len(found) == 1:
            return [path, found[0]]
        if not found:
            raise ValueError(f"{path}: its parameters file {default.name} is missing")
        raise ValueError(f"{path}: several parameter files ({', '.join(p.name for p in found)}); "
                         "name the one to read")

    @staticmethod
    def is_export_params(path: Path) -> bool:
        """Whether ``path`` is ``PREFIX-NNNN.params`` with ``PREFIX-symbol.json`` beside it."""
        m = GluonExport._PARAMS.match(path.name)
        return bool(m) and path.with_name(f"{m['prefix']}-symbol.json").is_file()

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        symbol, params = self.files(path)
        _existing_file(symbol)
        return read_ndarray_file(params)

    def _symbol(self, path: Path) -> Path:
        """The symbol file, checked to be the JSON graph MXNet expects before MXNet parses it."""
        symbol = _existing_file(self.files(path)[0])
        try:
            graph = json.loads(symbol.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _unreadable(symbol, "MXNet symbol file (JSON)", e) from None
        if not (isinstance(graph, dict) and isinstance(graph.get("nodes"), list)
                and isinstance(graph.get("heads"), list)
                and any(isinstance(n, dict) and n.get("name") == "data" for n in graph["nodes"])):
            raise ValueError(f"{symbol}: not an MXNet symbol graph with a 'data' input")
        return symbol

    def _import(self, path: Path) -> Any:
        """``gluon.SymbolBlock.imports`` of the pair: the graph with its parameters."""
        symbol, params = self.files(path)
        self._symbol(path)
        gluon = _mxnet().gluon
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return gluon.SymbolBlock.imports(str(symbol), ["data"], str(params))
        except Exception as e:  # MXNetError, AssertionError for a params/graph mismatch
            raise _unreadable(symbol, "Gluon export (SymbolBlock.imports)", e) from None

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        params = self.files(path)[1]
        names = _gluon_names(spec)                    # canonical -> name inside the model
        anchor = next(iter(names.values()))
        found = [k for k in raw if k.startswith("arg:")
                 and (k == f"arg:{anchor}" or k.endswith(f"_{anchor}"))]
        if len(found) != 1:
            raise ValueError(f"{params}: not exported from resnet_mxnet's ResNet "
                             f"(expected one parameter named PREFIX{anchor})")
        prefix = found[0][4:-len(anchor)]             # the exporting model's prefix (resnet0_)
        files = {c: ("aux:" if c.rsplit(".", 1)[1] in RUNNING_STATS else "arg:") + prefix + n
                 for c, n in names.items()}
        shapes = param_shapes(spec)
        _fits(params, raw, {files[c]: shapes[c] for c in names}, spec, self.description,
              allow_nonfinite)
        block = self._import(path)
        loaded = block.collect_params()
        return _canonical(params, {c: loaded[prefix + n].data().asnumpy()
                                   for c, n in names.items()}, spec, allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        be, mx = get_backend("mxnet"), _mxnet()
        model = be.build(spec)
        be.load_state(model, state, allow_nonfinite=True)
        model.hybridize()
        model(mx.nd.zeros((1, spec.in_channels, 32, 32)))  # export needs one traced call
        symbol, params = self.files(path, writing=True)
        model.export(str(path.with_name(symbol.name[: -len("-symbol.json")])), epoch=0)

    def graph_forward(self, path: Path, x: np.ndarray) -> np.ndarray:
        return self._import(path)(_mxnet().nd.array(x)).asnumpy()


def _mxnet() -> Any:
    """MXNet, imported through resnet_mxnet's numpy shim (``import mxnet`` needs it)."""
    get_backend("mxnet")
    from resnet_mxnet._compat import mx
    return mx


@functools.lru_cache(maxsize=8)
def _gluon_names(spec: Unit) -> dict[str, str]:
    """Canonical name -> Gluon parameter name without the model's own prefix
    (``stem.conv.weight`` -> ``stem0_conv0_weight``), from a freshly built model."""
    be = get_backend("mxnet")
    model = be.build(spec)
    out = {}
    for layer in spec.layers():
        block = resolve(model, layer.attr)
        for p in layer.shapes:
            out[f"{layer.name}.{p}"] = getattr(block, p).name[len(model.prefix):]
    return out


# -- writing, atomically -------------------------------------------------------------------------
class Staging:
    """Hidden temporary files beside DST, renamed into place by :meth:`commit`, removed otherwise.

    Refuses to stage over existing files unless ``force``; handles multi-file formats (the
    Gluon symbol+params pair) by staging and renaming every file.
    """

    def __init__(self, fmt: Format, dst: Path, force: bool) -> None:
        self.targets = fmt.files(dst, writing=True)
        check_targets(self.targets, force)
        fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=f"-{dst.name}", dir=dst.parent)
        os.close(fd)
        self.path = Path(tmp)
        self.temps = fmt.files(self.path, writing=True)
        self.committed = False

    def commit(self) -> list[Path]:
        # the data file first, the entry file (symbol) last: whoever sees it sees both
        for tmp, target in reversed(list(zip(self.temps, self.targets))):
            publish(tmp, target)
        self.committed = True
        return self.targets

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: Any) -> None:
        for tmp in self.temps:
            if tmp.exists():
                tmp.unlink()


def check_targets(targets: Sequence[Path], force: bool) -> None:
    """Refuse a DST whose directory is missing, that is a directory, or that exists (unless
    ``force``), naming every such file."""
    for parent in dict.fromkeys(t.parent for t in targets):
        if not parent.is_dir():
            raise ValueError(f"{targets[0]}: no such directory {parent}")
    dirs = [str(t) for t in targets if t.is_dir()]
    if dirs:
        raise ValueError(f"{', '.join(dirs)}: is a directory, not a file name")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}"
                         "; pass --force to overwrite")


CANONICAL = Canonical()
TORCH = TorchStateDict()
TORCHVISION = TorchvisionStateDict()
KERAS_WEIGHTS = KerasWeights()
KERAS = KerasModel()
GLUON_PARAMS = GluonParams()
GLUON_EXPORT = GluonExport()
FORMATS: dict[str, Format] = {f.name: f for f in (CANONICAL, TORCH, TORCHVISION, KERAS_WEIGHTS,
                                                  KERAS, GLUON_PARAMS, GLUON_EXPORT)}
# --from / --to names -> the formats they cover, the default first
FAMILIES: dict[str, tuple[Format, ...]] = {
    "canonical": (CANONICAL,),
    "torch": (TORCH, TORCHVISION),
    "torchvision": (TORCHVISION,),
    "tf": (KERAS_WEIGHTS, KERAS),
    "mxnet": (GLUON_PARAMS, GLUON_EXPORT),
}
_FAMILY_ALIASES = {"pytorch": "torch", "keras": "tf", "tensorflow": "tf", "gluon": "mxnet",
                   "mx": "mxnet", "safetensors": "canonical"}
FAMILY_NAMES = tuple(FAMILIES)


def family_name(name: str) -> str:
    """``torch``, ``torchvision``, ``tf``, ``mxnet`` or ``canonical`` (aliases accepted)."""
    key = _FAMILY_ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise ValueError(f"unknown format {name!r}; choose from {', '.join(FAMILY_NAMES)}")
    return key


def choices_text() -> str:
    return ("canonical (.safetensors), torch (.pt/.pth), torchvision (.pt/.pth with torchvision's "
            "key names), tf (.weights.h5, .keras), mxnet (.params, PREFIX-symbol.json)")


def _by_name(path: Path, writing: bool) -> Optional[Format]:
    name = path.name.lower()
    if name.endswith(".params"):
        return GLUON_EXPORT if not writing and GluonExport.is_export_params(path) else GLUON_PARAMS
    for fmt in (CANONICAL, TORCH, KERAS_WEIGHTS, KERAS, GLUON_EXPORT):
        if name.endswith(fmt.suffixes):
            return fmt
    return None


def detect(path: PathLike, family: Optional[str] = None, *, writing: bool = False) -> Format:
    """The format of ``path`` from its name, checked against ``family`` (``--from``/``--to``).

    Raises ``ValueError`` naming the file and listing the choices when the name does not say
    and no family is given, or when the name contradicts the family.
    """
    path = Path(path)
    by_name = _by_name(path, writing)
    if family is None:
        if by_name is None:
            hint = " (legacy Keras .h5 is not supported: use .weights.h5)" if (
                path.name.lower().endswith(".h5")) else ""
            raise ValueError(f"{path}: cannot tell the format from the file name{hint}; pass "
                             f"--from/--to with one of: {choices_text()}")
        return by_name
    options = FAMILIES[family_name(family)]
    if by_name in options:
        return by_name
    if by_name is not None and family_name(family) == "torchvision" and by_name is TORCH:
        return TORCHVISION
    if by_name is None and options[0].family != "tf":
        return options[0]  # torch.load, safetensors and MXNet read any file name
    need = " or ".join(dict.fromkeys(s for f in options for s in f.suffixes))
    got = f"is named like {by_name.description}" if by_name else "has another name"
    raise ValueError(f"{path}: {family} needs a file name ending in {need}; this one {got}")


# -- MXNet's NDArray file, parsed without MXNet --------------------------------------------------
_LIST_MAGIC = 0x112
_NDARRAY_MAGIC = {0xF993FAC9: "v2", 0xF993FACA: "v3"}
_MX_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
              6: np.int64, 7: np.bool_}


class _Reader:
    """Bounds-checked little-endian reads: a damaged length can never allocate past the file."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"truncated: needs {n} bytes at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values[0] if len(values) == 1 else values


def read_ndarray_file(path: PathLike) -> dict[str, np.ndarray]:
    """The named arrays of an MXNet ``.params`` file (``mx.nd.save``, ``save_parameters``,
    ``export``), parsed in Python with every length checked against the file's size.

    Dense arrays (format v2 and v3) only, which is what Gluon writes. Raises ``ValueError``
    naming the file for anything else.
    """
    path = _existing_file(Path(path))
    r = _Reader(path.read_bytes())
    try:
        magic, _reserved = r.unpack("QQ")
        if magic != _LIST_MAGIC:
            raise ValueError(f"bad magic number {magic:#x}, expected {_LIST_MAGIC:#x}")
        count = r.unpack("Q")
        if count > len(r.data) // 24:
            raise ValueError(f"claims {count} arrays, more than the file can hold")
        arrays = [_read_ndarray(r, i) for i in range(count)]
        n_names = r.unpack("Q")
        if n_names != count:
            raise ValueError(f"{count} arrays but {n_names} names")
        names = []
        for _ in range(n_names):
            length = r.unpack("Q")
            names.append(r.take(length).decode("utf-8"))
        if r.pos != len(r.data):
            raise ValueError(f"{len(r.data) - r.pos} unexpected bytes after the names")
        if len(set(names)) != len(names):
            raise ValueError("duplicate array names")
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable MXNet parameters file ({_first_line(e)})"
                         ) from None
    return dict(zip(names, arrays))


def _read_ndarray(r: _Reader, i: int) -> np.ndarray:
    magic = r.unpack("I")
    if magic not in _NDARRAY_MAGIC:
        raise ValueError(f"array {i}: unsupported NDArray magic {magic:#x} (legacy format?)")
    stype = r.unpack("i")
    if stype != 0:
        raise ValueError(f"array {i}: sparse storage (type {stype}) is not supported")
    ndim = r.unpack("i")
    if not 0 < ndim <= 32:
        raise ValueError(f"array {i}: bad number of dimensions {ndim}")
    shape = r.unpack(f"{ndim}q") if ndim > 1 else (r.unpack("q"),)
    if any(d < 0 for d in shape):
        raise ValueError(f"array {i}: bad shape {shape}")
    _dev_type, _dev_id, flag = r.unpack("iii")
    dtype = _MX_DTYPES.get(flag)
    if dtype is None:
        raise ValueError(f"array {i}: unsupported dtype flag {flag}")
    size = int(np.prod(shape, dtype=object))
    data = r.take(size * np.dtype(dtype).itemsize)
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()
