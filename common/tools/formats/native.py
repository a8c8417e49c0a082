"""The suite's own and the frameworks' native formats: canonical safetensors, PyTorch and
torchvision state_dicts, Keras ``.weights.h5`` and ``.keras``, Gluon ``.params`` and exports.
"""


from __future__ import annotations

import dataclasses
import functools
import glob
import io
import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ...core.preprocess import Preprocessing
from ...core.spec import NETWORKS, ConvNeXtSpec, Unit, num_inputs, param_shapes, spec_from_dict, unit_name
from ...core.state import (
    State,
    check_tensors,
    read_preprocessing,
    read_state_file,
    save_state,
    validate_state,
)
from ...core.trace import resolve
from ..registry import get_backend
from .base import (
    RUNNING_STATS,
    Format,
    _canonical,
    _existing_file,
    _first_line,
    _fits,
    _h5_tensors,
    _require,
    _unreadable,
    attr_path,
    keras_archive_member,
    looks_torchvision,
    read_ndarray_file,
    torch_bn_counters,
    torch_keys,
    torchvision_module,
    torchvision_shape,
)


class Canonical(Format):
    name, family, suffixes, carries_spec = "canonical", "canonical", (".safetensors",), True
    description = "canonical safetensors (common.save_state; the spec in its metadata)"
    carries_preprocessing = True

    def spec(self, path: Path) -> Unit:
        return read_state_file(path)[1]

    def preprocessing(self, path: Path) -> Optional[Preprocessing]:
        return read_preprocessing(path)

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return read_state_file(path)[0]

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        return _canonical(path, raw, spec, allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit,
              preprocessing: Optional[Preprocessing] = None) -> None:
        save_state(path, state, spec, preprocessing)


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
        keys = torch_keys(spec, self.torchvision)
        counters = torch_bn_counters(spec, self.torchvision)
        shapes = {keys[f"{layer.name}.{p}"]: torchvision_shape(layer, shape) if self.torchvision
                  else shape for layer in spec.layers() for p, shape in layer.shapes.items()}
        return keys, shapes | {k: () for k in counters}, counters

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
        shapes = param_shapes(spec)  # torchvision's (C, 1, 1) layer scale is (C,) canonically
        return _canonical(path, {c: checked[k].reshape(shapes[c]) for c, k in keys.items()},
                          spec, allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        import torch
        be = get_backend("torch")
        model = be.build(spec)
        be.load_state(model, state, allow_nonfinite=True)
        torch.save(model.state_dict(), path)


class TorchvisionStateDict(TorchStateDict):
    """A state_dict with torchvision's key names (``conv1``, ``layer2.0.downsample.0``, ``fc``)."""

    name, family = "torchvision", "torchvision"
    description = "PyTorch state_dict (torchvision's resnet or convnext key names)"
    torchvision = True

    def refine(self, tensors: Mapping[str, np.ndarray]) -> Format:
        return self

    def target(self, spec: Unit) -> Unit:
        """torchvision's ConvNeXt code fixes what a ConvNeXtSpec may vary: every LayerNorm's eps
        is 1e-6 (the head's too; Hugging Face's head uses its config's, 1e-12 by default), GELU
        is exact, the kernel 7, the patch 4, the MLP ratio 4, and layer scale is there."""
        if not isinstance(spec, ConvNeXtSpec):
            return spec
        fixed = {"kernel_size": 7, "patch_size": 4, "mlp_ratio": 4}
        wrong = [f"{k}={getattr(spec, k)} (torchvision: {v})" for k, v in fixed.items()
                 if getattr(spec, k) != v]
        if not spec.layer_scale:
            wrong.append("layer_scale_init=0 (torchvision always has layer scale)")
        if wrong:
            raise ValueError(f"torchvision's ConvNeXt cannot hold spec {spec.name!r}: "
                             + ", ".join(wrong))
        return dataclasses.replace(spec, ln_eps=1e-6, head_ln_eps=1e-6, gelu="exact")

    def write(self, path: Path, state: State, spec: Unit) -> None:
        """torchvision's keys in torchvision's order; ``num_batches_tracked`` is not canonical
        state, so it is written as 0, as in a freshly constructed torchvision model."""
        import torch
        checked = validate_state(state, spec, allow_nonfinite=True)
        out: dict[str, Any] = {}
        keys = torch_keys(spec, torchvision=True)
        for layer in spec.layers():
            for p, shape in layer.shapes.items():
                name = f"{layer.name}.{p}"
                out[keys[name]] = torch.from_numpy(checked[name].reshape(torchvision_shape(layer,
                                                                                           shape)))
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
            _saveable(model, spec).load_weights(str(path))
        except Exception as e:  # Keras and h5py raise many types on bad files
            raise _unreadable(path, self.description, e) from None
        return _canonical(path, be.export_state(model), spec, allow_nonfinite)

    def _model(self, state: State, spec: Unit) -> Any:
        be = get_backend("tf")
        model = be.build(spec)
        be.load_state(model, state, allow_nonfinite=True)
        return model


def _saveable(model: Any, spec: Unit) -> Any:
    """What ``save_weights`` and ``load_weights`` are called on: the model, or for a lone block
    (a Keras layer, which has neither) a Sequential holding it (``layers/residual/...``)."""
    if isinstance(spec, NETWORKS):
        return model
    keras = _require("keras", "tf")
    holder = keras.Sequential([model])
    holder(np.zeros((1, 8, 8, num_inputs(spec)), model.dtype))  # built eagerly, no symbolic pass
    return holder


class KerasWeights(_Keras):
    name, suffixes = "keras-weights", (".weights.h5",)
    description = "Keras weights file (save_weights)"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        _existing_file(path)
        return _h5_tensors(path, path, self.description)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        _saveable(self._model(state, spec), spec).save_weights(str(path))

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> bool:
        """Whether the file holds ``spec``'s tensors in Keras's layouts (kernels (kh, kw, in,
        out), dense (in, out)): Keras names them by object structure (``layers/stem/conv/
        vars/0``), not by layer, so the shapes are compared as a multiset, without TensorFlow;
        reading checks each one in place."""
        def keras_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
            if kind == "dwconv":  # (C, 1, kh, kw) -> DepthwiseConv2D's (kh, kw, C, 1)
                return tuple(shape[2:] + shape[:2])
            return tuple(shape[2:] + shape[1::-1]) if len(shape) == 4 else tuple(reversed(shape))
        want = sorted(keras_shape(layer.kind, s) for layer in spec.layers()
                      for s in layer.shapes.values())
        return sorted(tuple(a.shape) for a in tensors.values()) == want


class KerasModel(_Keras):
    name, suffixes, carries_spec = "keras", (".keras",), True
    description = "Keras whole-model file (model.save)"
    WEIGHTS = "model.weights.h5"

    def spec(self, path: Path) -> Unit:
        try:
            config = json.loads(keras_archive_member(path, "config.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _unreadable(path, "Keras .keras archive (config.json)", e) from None
        if not (isinstance(config, dict)
                and config.get("registered_name") in ("resnet_tf>ResNet", "resnet_tf>ConvNeXt")
                and isinstance(config.get("config"), dict) and "spec" in config["config"]):
            kind = config.get("class_name") if isinstance(config, dict) else None
            raise ValueError(f"{path}: holds a {kind or 'model'} that is not resnet_tf's ResNet or "
                             "ConvNeXt (no spec in its config)")
        try:
            return spec_from_dict(config["config"]["spec"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: bad spec in config.json: {e}") from None

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return _h5_tensors(io.BytesIO(keras_archive_member(path, self.WEIGHTS)), path, self.description)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        if not isinstance(spec, NETWORKS):
            raise ValueError(f"{path.name}: a .keras file holds resnet_tf's whole network, not a "
                             f"{unit_name(spec)} alone; write a lone block as .weights.h5")
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




@functools.lru_cache(maxsize=8)
def _keras_layout(spec: Unit) -> dict[str, tuple[int, ...]]:
    """The HDF5 dataset names and shapes Keras writes for ``spec``: learnt by saving a fresh
    model, since only Keras knows its own layout."""
    be = get_backend("tf")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "layout.weights.h5"
        _saveable(be.build(spec), spec).save_weights(str(path))
        return {k: v.shape for k, v in _h5_tensors(path, path, "Keras weights file").items()}


class GluonParams(Format):
    """``HybridBlock.save_parameters``: structural names (``stages.1.0.conv3.weight``)."""

    name, family, framework, suffixes = "gluon-params", "mxnet", "mxnet", (".params",)
    description = "Gluon parameters file (save_parameters)"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return read_ndarray_file(path)

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> bool:
        """Whether the file holds exactly ``spec``'s parameters under their attribute paths."""
        expected = {f"{attr_path(layer)}.{p}": s for layer in spec.layers() for p, s in layer.shapes.items()}
        return {k: tuple(v.shape) for k, v in tensors.items()} == expected

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




CANONICAL = Canonical()
TORCH = TorchStateDict()
TORCHVISION = TorchvisionStateDict()
KERAS_WEIGHTS = KerasWeights()
KERAS = KerasModel()
GLUON_PARAMS = GluonParams()
GLUON_EXPORT = GluonExport()
