"""keras.applications' ResNet50, ResNet101 and ResNet152 (v1) as checkpoints: ``.weights.h5``
from ``save_weights`` and ``.keras`` from ``model.save``, read and written.

Keras 3 stores a Functional model's weights by object structure, not by layer name: every
weighted layer is an HDF5 group ``layers/{conv2d,batch_normalization,dense}[_N]/vars/I``,
numbered per class in ``model.layers`` order (which is the graph's order, not the order the
layers were made in). Which group is ``conv2_block1_0_conv`` is therefore learnt from
keras.applications' own model, built once per architecture with ``weights=None``; the names
then map to canonical ones (``conv{s+2}_block{b+1}_{1,2,3}_{conv,bn}`` is
``stages.{s}.{b}.conv{1,2,3}`` / ``bn{1,2,3}``, ``_0_`` the shortcut, ``predictions`` is
``head.fc``). A file is recognised with no flag: the flat layout hands it here from the Keras
formats (:meth:`refine`), the blocks per stage name the architecture (read off the layer names
of a ``.keras`` file's config, off the 3x3 kernels of a ``.weights.h5``), and ``in_channels``
and ``num_classes`` come from the stem and classifier shapes.

keras.applications' ResNet is the spec's ``keras-resnet50/101/152``: stride on each stage's first
1x1 conv (v1), a bias on every conv, BatchNorm eps 1.001e-5 and momentum 0.99, zero padding
(``ZeroPadding2D``) before the stem conv and the max pool, and a softmax on the classifier by
default. Nothing else is written: a spec that is not one of these members is refused.
"""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ...core.spec import ARCHITECTURES, ResNetSpec, Unit
from ...core.state import State
from .base import (
    Format,
    _canonical,
    _existing_file,
    _fits,
    _h5_tensors,
    _require,
    _unreadable,
    keras_archive_member,
)

# the spec's name for each keras.applications constructor
MEMBERS = {"keras-resnet50": "ResNet50", "keras-resnet101": "ResNet101",
           "keras-resnet152": "ResNet152"}
# the classes that hold weights in keras.applications' ResNet, as Keras's saving names them
_SNAKE = {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization", "Dense": "dense"}
_FLAT = re.compile(r"^layers/(conv2d|batch_normalization|dense)(_\d+)?/vars/\d+$")
_IGNORED = ("optimizer/",)  # a compiled model's optimizer state: not weights
# Keras variable name -> canonical parameter name
_PARAM = {"kernel": "weight", "bias": "bias", "gamma": "gamma", "beta": "beta",
          "moving_mean": "running_mean", "moving_variance": "running_var"}
_BLOCK_NAME = re.compile(r"^conv(\d)_block(\d+)_([0-3])_(conv|bn)$")
_CANONICAL_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(conv[123]|bn[123]|shortcut|shortcut_bn)$")
_SUB = {"shortcut": ("0", "conv"), "shortcut_bn": ("0", "bn")}
_TOP = {"stem.conv": "conv1_conv", "stem.bn": "conv1_bn", "head.fc": "predictions"}
# fields a file cannot store, and the ones its shapes give
_FREE = ("name", "in_channels", "num_classes", "labels")


def keras_layer(canonical: str) -> str:
    """keras.applications' layer name for a canonical layer (``stages.1.0.shortcut`` ->
    ``conv3_block1_0_conv``)."""
    if canonical in _TOP:
        return _TOP[canonical]
    m = _CANONICAL_BLOCK.match(canonical)
    if m is None:
        raise ValueError(f"{canonical!r} has no keras.applications counterpart")
    stage, block, sub = m.groups()
    index, kind = _SUB.get(sub, (sub[-1], sub[:-1]))
    return f"conv{int(stage) + 2}_block{int(block) + 1}_{index}_{kind}"


def looks_keras_applications(tensors: Iterable[str]) -> bool:
    """Whether HDF5 dataset names are a flat Functional's (``layers/conv2d_7/vars/0``), as
    keras.applications saves, rather than resnet_tf's nested ``layers/stem/conv/vars/0``."""
    keys = [k for k in tensors if not k.startswith(_IGNORED)]
    return (any(k.startswith("layers/conv2d") for k in keys)
            and any(k.startswith("layers/batch_normalization") for k in keys)
            and all(_FLAT.match(k) for k in keys))


def member(spec: Unit) -> str:
    """The ``MEMBERS`` name of the keras.applications ResNet ``spec`` is, or ``ValueError``
    naming the first field where it is none of them."""
    if not isinstance(spec, ResNetSpec):
        raise ValueError(f"keras.applications holds whole ResNets, not a {type(spec).__name__}")
    by_blocks = {ARCHITECTURES[n]().stage_blocks: n for n in MEMBERS}
    name = by_blocks.get(spec.stage_blocks)
    if name is None:
        raise ValueError(f"spec {spec.name!r} is none of keras.applications' ResNets: "
                         f"stage_blocks is {_dashed(spec.stage_blocks)}, keras.applications has "
                         + ", ".join(f"{_dashed(b)} ({n})" for b, n in by_blocks.items()))
    theirs = ARCHITECTURES[name]().to_dict()
    for key, value in spec.to_dict().items():
        if key not in _FREE and theirs.get(key) != value:
            raise ValueError(f"spec {spec.name!r} is not keras.applications' "
                             f"{MEMBERS[name]}: {key} is {value!r}, keras.applications' is "
                             f"{theirs.get(key)!r}")
    return name


def _dashed(blocks: tuple[int, ...]) -> str:
    return "-".join(map(str, blocks))


def _spec(path: Path, blocks: tuple[int, ...], in_channels: int, num_classes: int) -> ResNetSpec:
    """The named member with ``blocks`` per stage, or ``ValueError`` naming the file."""
    by_blocks = {ARCHITECTURES[n]().stage_blocks: n for n in MEMBERS}
    if blocks not in by_blocks:
        raise ValueError(f"{path}: a keras.applications-style model with {_dashed(blocks)} "
                         "blocks per stage, which is none of ResNet50 (3-4-6-3), ResNet101 "
                         "(3-4-23-3) or ResNet152 (3-8-36-3)")
    return ARCHITECTURES[by_blocks[blocks]](in_channels=in_channels, num_classes=num_classes)


def _headless(path: Path) -> ValueError:
    return ValueError(f"{path}: keras.applications model saved with include_top=False (no "
                      "'predictions' layer): it has no classifier, so it is no whole ResNet "
                      "to convert; save it with include_top=True")


@functools.lru_cache(maxsize=4)
def _order(name: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """``(HDF5 group, keras layer name, variable names)`` of each weighted layer of
    keras.applications' ``name``, learnt from its own model (``weights=None``) with the naming
    rule of Keras's saving code: the class's snake-case name, ``_N`` from the second one on."""
    model = _build(ARCHITECTURES[name](in_channels=3, num_classes=2), (32, 32))
    used: dict[str, int] = {}
    out = []
    for layer in model.layers:
        snake = _SNAKE.get(type(layer).__name__)
        if snake is None:
            if layer.weights:
                raise ValueError(f"keras.applications' {MEMBERS[name]} has an unexpected "
                                 f"weighted layer {layer.name} ({type(layer).__name__})")
            continue
        n = used[snake] = used.get(snake, -1) + 1
        group = f"layers/{snake}" + (f"_{n}" if n else "")
        out.append((group, layer.name, tuple(v.path.rsplit("/", 1)[-1] for v in layer.weights)))
    return tuple(out)


def _build(spec: ResNetSpec, size: tuple[int, int] = (224, 224),
           classifier_activation: Optional[str] = None) -> Any:
    """keras.applications' own model for ``spec`` (``weights=None``: nothing downloaded)."""
    keras = _require("keras", "tf")
    make = getattr(keras.applications, MEMBERS[member(spec)])
    return make(weights=None, classes=spec.num_classes, input_shape=(*size, spec.in_channels),
                classifier_activation=classifier_activation)


def _layout(spec: ResNetSpec) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """HDF5 dataset name -> (canonical layer, canonical parameter, shape in the file), in
    ``model.layers`` order; a name is shown with its layer's (``layers/conv2d_6/vars/0
    (conv2_block1_0_conv/kernel)``)."""
    layers = {keras_layer(layer.name): layer for layer in spec.layers()}
    out = {}
    for group, name, variables in _order(member(spec)):
        layer = layers[name]
        for i, var in enumerate(variables):
            param = _PARAM[var]
            shape = layer.shapes[param]
            if var == "kernel":  # Keras's (kh, kw, in, out) and (in, out)
                shape = (*shape[2:], shape[1], shape[0]) if layer.kind == "conv" else shape[::-1]
            out[f"{group}/vars/{i} ({name}/{var})"] = (layer.name, param, shape)
    return out


class KerasApplications(Format):
    """What both files share: the flat HDF5 layout, checked and mapped to canonical names."""

    family, framework, carries_spec = "keras-applications", "tf", True
    spec_origin = "recognised from its blocks per stage"

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        try:
            layout = _layout(spec)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        shown = {k.split(" ", 1)[0]: k for k in layout}
        raw = {shown.get(k, k): v for k, v in raw.items() if not k.startswith(_IGNORED)}
        checked = _fits(path, raw, {k: s for k, (_, _, s) in layout.items()}, spec,
                        self.description, allow_nonfinite)
        from resnet_tf._layout import kernel_to_canonical
        kinds = {layer.name: layer.kind for layer in spec.layers()}
        state = {f"{layer}.{param}": (kernel_to_canonical(checked[k], kinds[layer])
                                      if param == "weight" else checked[k])
                 for k, (layer, param, _) in layout.items()}
        return _canonical(path, state, spec, allow_nonfinite)

    def _model(self, state: State, spec: Unit) -> Any:
        """keras.applications' model holding ``state`` (logits: no softmax)."""
        from resnet_tf._layout import kernel_to_keras
        model = _build(spec)
        for layer in spec.layers():
            params = [state[f"{layer.name}.{p}"] for p in layer.shapes]
            if layer.kind != "bn":
                params[0] = kernel_to_keras(params[0], layer.kind)
            model.get_layer(keras_layer(layer.name)).set_weights(params)
        return model

    def _forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        from resnet_tf._layout import nhwc
        return np.asarray(model(nhwc(x), training=False))


class KerasApplicationsWeights(KerasApplications):
    name, suffixes = "keras-applications-weights", (".weights.h5",)
    description = "keras.applications ResNet weights file (save_weights)"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        _existing_file(path)
        return _h5_tensors(path, path, self.description)

    def spec(self, path: Path) -> ResNetSpec:
        """Recognised from the shapes: 3x3 kernels ``(3, 3, w, w)`` count each stage's blocks
        (w = 64, 128, 256, 512), the 7x7 kernel gives in_channels, the Dense kernel classes."""
        shapes = _h5_shapes(_existing_file(path), self.description)
        if not looks_keras_applications(shapes):
            raise ValueError(f"{path}: not a keras.applications model's weights (expected flat "
                             "layers/conv2d*, layers/batch_normalization*, layers/dense groups)")
        kernels = [s for k, s in shapes.items() if k.endswith("/vars/0") and len(s) == 4]
        blocks = tuple(sum(1 for s in kernels if s == (3, 3, w, w)) for w in (64, 128, 256, 512))
        stems = [s[2] for s in kernels if s[:2] == (7, 7) and s[3] == 64]
        dense = [s for k, s in shapes.items() if k.startswith("layers/dense") and len(s) == 2]
        if not dense:
            raise _headless(path)
        if len(stems) != 1 or len(dense) != 1:
            raise ValueError(f"{path}: not keras.applications' ResNet: {len(stems)} 7x7 stem "
                             f"kernels and {len(dense)} Dense kernels, expected one of each")
        return _spec(path, blocks, stems[0], dense[0][1])

    def write(self, path: Path, state: State, spec: Unit) -> None:
        self._model(state, spec).save_weights(str(path))

    def graph_forward(self, path: Path, x: np.ndarray) -> np.ndarray:
        """keras.applications' own model for the file, loaded with Keras's ``load_weights``."""
        model = _build(self.spec(path), x.shape[2:])
        try:
            model.load_weights(str(path))
        except Exception as e:  # Keras and h5py raise many types on bad files
            raise _unreadable(path, self.description, e) from None
        return self._forward(model, x)


class KerasApplicationsModel(KerasApplications):
    name, suffixes = "keras-applications", (".keras",)
    description = "keras.applications ResNet whole-model file (model.save)"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        return _h5_tensors(io.BytesIO(keras_archive_member(path, "model.weights.h5")), path,
                           self.description)

    def _layers(self, path: Path) -> list[dict]:
        try:
            config = json.loads(keras_archive_member(path, "config.json"))
            layers = config["config"]["layers"]
            if not all(isinstance(layer, dict) and "config" in layer for layer in layers):
                raise TypeError("a layer without its config")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise _unreadable(path, "Keras .keras archive (config.json)", e) from None
        return layers

    def spec(self, path: Path) -> ResNetSpec:
        """Recognised from the layer names in ``config.json``: ``conv{s}_block{k}_2_conv``
        counts each stage's blocks, the input layer gives in_channels, ``predictions`` classes."""
        layers = {layer["config"].get("name"): layer for layer in self._layers(path)}
        if "conv1_conv" not in layers:
            raise ValueError(f"{path}: not keras.applications' ResNet (no conv1_conv layer)")
        if "predictions" not in layers:
            raise _headless(path)
        found = [_BLOCK_NAME.match(n) for n in layers if isinstance(n, str)]
        blocks = tuple(sum(1 for m in found if m and m.group(1, 3, 4) == (str(s), "2", "conv"))
                       for s in range(2, 6))
        inputs = [layer for layer in layers.values() if layer.get("class_name") == "InputLayer"]
        try:
            in_channels = int(inputs[0]["config"]["batch_shape"][-1])
            num_classes = int(layers["predictions"]["config"]["units"])
        except (IndexError, KeyError, TypeError, ValueError) as e:
            raise _unreadable(path, "keras.applications model config", e) from None
        return _spec(path, blocks, in_channels, num_classes)

    def write(self, path: Path, state: State, spec: Unit) -> None:
        self._model(state, spec).save(str(path))

    def graph_forward(self, path: Path, x: np.ndarray) -> np.ndarray:
        """The file's own graph (``keras.saving.load_model``, safe mode) on ``x``'s size, its
        classifier's softmax, if any, left off so that logits are compared."""
        keras = _require("keras", "tf")
        try:
            saved = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except Exception as e:
            raise _unreadable(path, "Keras model (keras.saving.load_model)", e) from None
        config = saved.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "InputLayer":
                layer["config"]["batch_shape"] = [None, *x.shape[2:], x.shape[1]]
            if layer["config"].get("name") == "predictions":
                layer["config"]["activation"] = "linear"
        model = type(saved).from_config(config)
        model.set_weights(saved.get_weights())
        return self._forward(model, x)


def _h5_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Dataset name -> shape of an HDF5 file, without reading the data."""
    h5py = _require("h5py", "tf")
    out: dict[str, tuple[int, ...]] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n, tuple(o.shape))
                         if isinstance(o, h5py.Dataset) else None)
    except Exception as e:
        raise _unreadable(path, what, e) from None
    return out


KERAS_APPLICATIONS_WEIGHTS = KerasApplicationsWeights()
KERAS_APPLICATIONS = KerasApplicationsModel()


def keras_applications_for(suffixes: tuple[str, ...],
                           tensors: Mapping[str, np.ndarray]) -> Optional[Format]:
    """The keras.applications format for a Keras file with these suffixes, if its tensors are
    laid out as keras.applications saves them; None otherwise."""
    if not looks_keras_applications(tensors):
        return None
    return next((f for f in (KERAS_APPLICATIONS_WEIGHTS, KERAS_APPLICATIONS)
                 if f.suffixes == suffixes), None)
