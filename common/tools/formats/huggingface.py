"""Hugging Face transformers' ResNet: a ``save_pretrained`` directory (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``), and Hub ids (``microsoft/resnet-50``).

transformers' ``ResNetForImageClassification`` is torchvision's v1.5 ResNet under other names:
no conv bias, a BatchNorm after every shortcut conv (eps 1e-5, momentum 0.1), a 7x7/2 stem and
a 3x3/2 max pool. Its options map onto :class:`ResNetSpec` fields: ``embedding_size`` is
``stem_channels``, ``hidden_sizes`` ``stage_channels``, ``depths`` ``stage_blocks``,
``layer_type`` ``block``, ``downsample_in_bottleneck`` puts the stride on the first 1x1 conv
(``stride_at="1x1"``), ``downsample_in_first_stage`` is the spec field of that name, and
``id2label`` gives ``labels``. Keys: ``resnet.embedder.embedder.convolution.weight``,
``resnet.encoder.stages.{i}.layers.{j}.layer.{k}.convolution``/``normalization``,
``...layers.{j}.shortcut.convolution``/``normalization``, and ``classifier.1.*`` (the classifier is
``Sequential(Flatten, Linear)``). The layouts are PyTorch's, so the canonical layouts: reading
and writing rename keys and need no framework (``pytorch_model.bin`` needs PyTorch to unpickle).

``ConvNextForImageClassification`` (``model_type`` convnext) maps onto :class:`ConvNeXtSpec`:
``num_channels``, ``patch_size``, ``hidden_sizes`` (``widths``), ``depths``, ``hidden_act``
(``gelu`` exact; ``gelu_new`` and ``gelu_pytorch_tanh`` the tanh form), ``layer_scale_init_value``,
``drop_path_rate`` and ``layer_norm_eps``, which transformers applies to the head's LayerNorm
alone (``convnext.layernorm``): the stem's, the downsampling layers' and the blocks' LayerNorms
hard-code eps 1e-6, and the depthwise kernel (7) and MLP ratio (4) are fixed. Keys:
``convnext.embeddings.patch_embeddings``/``layernorm``, ``convnext.encoder.stages.{i}.
downsampling_layer.{0,1}``, ``...layers.{j}.dwconv``/``layernorm``/``pwconv1``/``pwconv2``/
``layer_scale_parameter`` (shape ``(C,)``), ``convnext.layernorm`` and ``classifier``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ...core.preprocess import Preprocessing, preprocessing_file
from ...core.spec import ARCHITECTURES, NETWORKS, ConvNeXtSpec, Network, ResNetSpec, Unit, param_shapes
from ...core.state import State, check_tensors, validate_state
from ..registry import BackendUnavailable
from .base import Format, PathLike, _canonical, _existing_file, _first_line, _fits, _require, torch_param

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
PREPROCESSOR = "preprocessor_config.json"
HUB_INSTALL = "huggingface_hub is not installed: pip install 'resnet-parity[hf]'"

# transformers' ResNetConfig defaults: what from_pretrained assumes for a field config.json omits
_DEFAULTS: dict[str, Any] = {
    "num_channels": 3, "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3], "layer_type": "bottleneck", "hidden_act": "relu",
    "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
}
# what every transformers ResNet is, beside the fields its config sets
_FIXED: dict[str, Any] = {"conv_bias": False, "shortcut_bn": True, "bn_eps": 1e-5,
                          "bn_momentum": 0.1, "stem_kernel": 7, "stem_stride": 2, "stem_pool": True}
_PLACEHOLDER = re.compile(r"LABEL_(\d+)")
_BLOCK_LAYER = re.compile(r"stages\.(\d+)\.(\d+)\.(?:(conv|bn)([123])|(shortcut|shortcut_bn))$")
_TOP_LAYER = {"stem.conv": "resnet.embedder.embedder.convolution",
              "stem.bn": "resnet.embedder.embedder.normalization", "head.fc": "classifier.1"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".keras", ".params", ".json")


# transformers' ConvNextConfig defaults, and what every transformers ConvNeXt is beside them
_CONVNEXT_DEFAULTS: dict[str, Any] = {
    "num_channels": 3, "patch_size": 4, "hidden_sizes": [96, 192, 384, 768], "depths": [3, 3, 9, 3],
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "layer_scale_init_value": 1e-6,
    "drop_path_rate": 0.0,
}
_CONVNEXT_FIXED: dict[str, Any] = {"kernel_size": 7, "mlp_ratio": 4, "ln_eps": 1e-6}
_CONVNEXT_GELU = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
MODEL_TYPES = ("resnet", "convnext")


# -- config.json <-> spec --------------------------------------------------------------------------
def config_to_spec(config: Mapping[str, Any]) -> Network:
    """The spec of a transformers ResNet or ConvNeXt ``config.json`` (a dict); the name of the
    matching member of :data:`ARCHITECTURES` where there is one (``resnet50``), else
    ``hf-resnet`` or ``hf-convnext``.

    Raises ``ValueError`` naming the field for a config the suite cannot represent.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config is a {type(config).__name__}, not a JSON object")
    if config.get("model_type") == "convnext":
        return _convnext_config_to_spec(config)
    if config.get("model_type") != "resnet":
        raise ValueError(f"model_type is {config.get('model_type')!r}, not 'resnet' or "
                         "'convnext' (not a transformers ResNet or ConvNeXt config)")
    c = {**_DEFAULTS, **{k: v for k, v in config.items() if k in _DEFAULTS}}
    if c["hidden_act"] != "relu":
        raise ValueError(f"hidden_act is {c['hidden_act']!r}; the suite's ResNets use 'relu'")
    if c["layer_type"] not in ("basic", "bottleneck"):
        raise ValueError(f"layer_type is {c['layer_type']!r}, not 'basic' or 'bottleneck'")
    for name in ("downsample_in_first_stage", "downsample_in_bottleneck"):
        if not isinstance(c[name], bool):
            raise ValueError(f"{name} is {c[name]!r}, not true or false")
    _check_sizes(c, ("num_channels", "embedding_size"))
    if len(c["depths"]) != len(c["hidden_sizes"]):
        raise ValueError(f"depths {c['depths']} and hidden_sizes {c['hidden_sizes']} differ in "
                         "length")
    labels = _labels(config)
    bottleneck = c["layer_type"] == "bottleneck"
    try:
        spec = ResNetSpec(
            name="hf-resnet", in_channels=c["num_channels"], num_classes=len(labels),
            stem_channels=c["embedding_size"], stage_channels=tuple(c["hidden_sizes"]),
            stage_blocks=tuple(c["depths"]), block=c["layer_type"],
            stride_at="1x1" if bottleneck and c["downsample_in_bottleneck"] else "3x3",
            downsample_in_first_stage=c["downsample_in_first_stage"],
            labels=() if _placeholders(labels) else tuple(labels), **_FIXED)
    except ValueError as e:
        raise ValueError(f"not a ResNet the suite can build: {e}") from None
    return _named(spec)


def _convnext_config_to_spec(config: Mapping[str, Any]) -> ConvNeXtSpec:
    c = {**_CONVNEXT_DEFAULTS, **{k: v for k, v in config.items() if k in _CONVNEXT_DEFAULTS}}
    if c["hidden_act"] not in _CONVNEXT_GELU:
        raise ValueError(f"hidden_act is {c['hidden_act']!r}; the suite's ConvNeXt takes "
                         f"{', '.join(map(repr, _CONVNEXT_GELU))}")
    _check_sizes(c, ("num_channels", "patch_size"))
    if "num_stages" in config and config["num_stages"] != len(c["depths"]):
        raise ValueError(f"num_stages is {config['num_stages']!r} but depths has "
                         f"{len(c['depths'])} stages")
    for name in ("layer_norm_eps", "layer_scale_init_value", "drop_path_rate"):
        if isinstance(c[name], bool) or not isinstance(c[name], (int, float)):
            raise ValueError(f"{name} is {c[name]!r}, not a number")
    labels = _labels(config)
    try:
        spec = ConvNeXtSpec(
            name="hf-convnext", in_channels=c["num_channels"], num_classes=len(labels),
            depths=tuple(c["depths"]), widths=tuple(c["hidden_sizes"]),
            patch_size=c["patch_size"], head_ln_eps=float(c["layer_norm_eps"]),
            layer_scale_init=float(c["layer_scale_init_value"]),
            drop_path_rate=float(c["drop_path_rate"]), gelu=_CONVNEXT_GELU[c["hidden_act"]],
            labels=() if _placeholders(labels) else tuple(labels), **_CONVNEXT_FIXED)
    except ValueError as e:
        raise ValueError(f"not a ConvNeXt the suite can build: {e}") from None
    return _named(spec)


def spec_to_config(spec: Network) -> dict[str, Any]:
    """A complete ``config.json`` for ``spec`` that ``ResNetForImageClassification`` (or
    ``ConvNextForImageClassification``) ``.from_pretrained`` loads; unnamed classes get
    transformers' placeholder names ``LABEL_i``.

    Raises ``ValueError`` naming every field (and its value) transformers cannot represent.
    """
    labels = list(spec.labels) or [f"LABEL_{i}" for i in range(spec.num_classes)]
    names = {"num_labels": spec.num_classes, "id2label": {str(i): n for i, n in enumerate(labels)},
             "label2id": {n: i for i, n in enumerate(labels)}, "dtype": "float32"}
    if isinstance(spec, ConvNeXtSpec):
        config = {
            "architectures": ["ConvNextForImageClassification"], "model_type": "convnext",
            "num_channels": spec.in_channels, "patch_size": spec.patch_size,
            "num_stages": len(spec.depths), "hidden_sizes": list(spec.widths),
            "depths": list(spec.depths),
            "hidden_act": "gelu" if spec.gelu == "exact" else "gelu_pytorch_tanh",
            "layer_norm_eps": spec.head_ln_eps, "layer_scale_init_value": spec.layer_scale_init,
            "drop_path_rate": spec.drop_path_rate, "image_size": 224, **names}
        return _representable(spec, config, "ConvNeXt")
    config = {
        "architectures": ["ResNetForImageClassification"], "model_type": "resnet",
        "num_channels": spec.in_channels, "embedding_size": spec.stem_channels,
        "hidden_sizes": list(spec.stage_channels), "depths": list(spec.stage_blocks),
        "layer_type": spec.block, "hidden_act": "relu",
        "downsample_in_first_stage": spec.downsample_in_first_stage,
        "downsample_in_bottleneck": spec.block == "bottleneck" and spec.stride_at == "1x1",
        **names,
    }
    return _representable(spec, config, "ResNet")


def _representable(spec: Network, config: dict[str, Any], what: str) -> dict[str, Any]:
    """``config``, once what transformers would build from it equals ``spec`` field by field."""
    have, want = spec.to_dict(), config_to_spec(config).to_dict()
    wrong = [f"{k}={have[k]!r} (transformers has {want.get(k)!r})" for k in have
             if k != "name" and have[k] != want.get(k)]
    if wrong:
        raise ValueError(f"spec {spec.name!r} cannot be written as a Hugging Face {what}: "
                         + ", ".join(wrong))
    return config


def _check_sizes(c: Mapping[str, Any], ints: tuple[str, ...]) -> None:
    """The positive integers ``ints`` and the non-empty lists of them, depths and hidden_sizes."""
    for name in ints:
        _check_int(name, c[name])
    for name in ("depths", "hidden_sizes"):
        if not isinstance(c[name], list) or not c[name]:
            raise ValueError(f"{name} is {c[name]!r}, not a non-empty list")
        for i, v in enumerate(c[name]):
            _check_int(f"{name}[{i}]", v)


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} is {value!r}, not a positive integer")


def _labels(config: Mapping[str, Any]) -> list[str]:
    """The class names by id: ``id2label`` (keys 0..n-1), else ``num_labels`` placeholders
    (transformers' default is 2)."""
    id2label = config.get("id2label")
    if id2label is None:
        n = config.get("num_labels", 2)
        _check_int("num_labels", n)
        return [f"LABEL_{i}" for i in range(n)]
    if not isinstance(id2label, Mapping) or not id2label:
        raise ValueError(f"id2label is {id2label!r}, not a non-empty object")
    try:
        by_id = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ValueError(f"id2label has keys that are not class ids: {sorted(id2label)}") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"id2label's ids are {sorted(by_id)}, not 0..{len(by_id) - 1}")
    if "num_labels" in config and config["num_labels"] != len(by_id):
        raise ValueError(f"num_labels is {config['num_labels']!r} but id2label names "
                         f"{len(by_id)} classes")
    labels = [by_id[i] for i in range(len(by_id))]
    bad = [f"{i}: {n!r}" for i, n in enumerate(labels) if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"id2label has names that are not non-empty strings ({', '.join(bad)})")
    twice = sorted({n for n in labels if labels.count(n) > 1})
    if twice:
        raise ValueError(f"id2label names several classes alike: {', '.join(twice)}")
    return labels


def _placeholders(labels: list[str]) -> bool:
    """Whether ``labels`` are transformers' defaults ``LABEL_0``, ``LABEL_1``, ... (unnamed)."""
    return all(_PLACEHOLDER.fullmatch(str(n)) and int(n[6:]) == i for i, n in enumerate(labels))


def _named(spec: Network) -> Network:
    """``spec`` under the name of the member of :data:`ARCHITECTURES` it is, if any."""
    io = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "labels": spec.labels}
    for name, make in ARCHITECTURES.items():
        if dataclasses.replace(make(**io), name=spec.name) == spec:
            return dataclasses.replace(spec, name=name)
    return spec


# -- key names -------------------------------------------------------------------------------------
def hf_module(layer: str) -> str:
    """transformers' module path for a canonical layer name.

    ``stem.conv`` -> ``resnet.embedder.embedder.convolution``, ``stages.1.0.conv2`` ->
    ``resnet.encoder.stages.1.layers.0.layer.1.convolution``, ``stages.1.0.shortcut_bn`` ->
    ``resnet.encoder.stages.1.layers.0.shortcut.normalization``, ``head.fc`` -> ``classifier.1``.
    """
    if layer in _TOP_LAYER:
        return _TOP_LAYER[layer]
    m = _BLOCK_LAYER.match(layer)
    if m is None:
        raise ValueError(f"{layer!r} has no Hugging Face counterpart")
    stage, block, kind, k, shortcut = m.groups()
    prefix = f"resnet.encoder.stages.{stage}.layers.{block}"
    if shortcut:
        return f"{prefix}.shortcut.{'normalization' if shortcut == 'shortcut_bn' else 'convolution'}"
    return f"{prefix}.layer.{int(k) - 1}.{'normalization' if kind == 'bn' else 'convolution'}"


_CONVNEXT_TOP = {"stem.conv": "convnext.embeddings.patch_embeddings",
                 "stem.norm": "convnext.embeddings.layernorm", "head.norm": "convnext.layernorm",
                 "head.fc": "classifier"}
_CONVNEXT_LAYER = re.compile(r"stages\.(\d+)\.(?:downsample\.(norm|conv)|blocks\.(\d+)\.(\w+))$")
_CONVNEXT_SUB = {"dwconv": "dwconv", "norm": "layernorm", "pwconv1": "pwconv1",
                 "pwconv2": "pwconv2", "layer_scale": "layer_scale_parameter"}


def hf_convnext_module(layer: str) -> str:
    """transformers' module path for a canonical ConvNeXt layer name: ``stem.norm`` ->
    ``convnext.embeddings.layernorm``, ``stages.1.downsample.conv`` ->
    ``convnext.encoder.stages.1.downsampling_layer.1``, ``stages.1.blocks.0.norm`` ->
    ``convnext.encoder.stages.1.layers.0.layernorm``, ``stages.1.blocks.0.layer_scale`` ->
    ``...layers.0.layer_scale_parameter`` (a parameter itself), ``head.fc`` -> ``classifier``."""
    if layer in _CONVNEXT_TOP:
        return _CONVNEXT_TOP[layer]
    m = _CONVNEXT_LAYER.match(layer)
    if m is None or (m.group(4) and m.group(4) not in _CONVNEXT_SUB):
        raise ValueError(f"{layer!r} has no Hugging Face ConvNeXt counterpart")
    stage, down, block, sub = m.groups()
    prefix = f"convnext.encoder.stages.{stage}"
    if down:
        return f"{prefix}.downsampling_layer.{0 if down == 'norm' else 1}"
    return f"{prefix}.layers.{block}.{_CONVNEXT_SUB[sub]}"


def hf_keys(spec: Unit) -> dict[str, str]:
    """Canonical parameter name -> transformers' state_dict key, in the spec's order."""
    if isinstance(spec, ConvNeXtSpec):
        return {f"{layer.name}.{p}": hf_convnext_module(layer.name) if layer.kind == "scale"
                else f"{hf_convnext_module(layer.name)}.{torch_param(layer, p)}"
                for layer in spec.layers() for p in layer.shapes}
    return {f"{layer.name}.{p}": f"{hf_module(layer.name)}.{torch_param(layer, p)}"
            for layer in spec.layers() for p in layer.shapes}


def hf_bn_counters(spec: Unit) -> list[str]:
    """The ``num_batches_tracked`` keys of every BatchNorm (optional when reading)."""
    return [f"{hf_module(layer.name)}.num_batches_tracked" for layer in spec.layers()
            if layer.kind == "bn"]


# -- the Hub ---------------------------------------------------------------------------------------
def is_hub_id(source: PathLike) -> bool:
    """Whether ``source`` reads as a Hub id (``owner/name``) rather than a local path: it does
    not exist, its owner is no local directory, and it is not named like a checkpoint file."""
    text = os.fspath(source)
    return (bool(_HUB_ID.fullmatch(text)) and not os.path.exists(text)
            and not os.path.isdir(text.split("/")[0])
            and not text.lower().endswith(_CHECKPOINT_SUFFIXES))


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of Hub repo ``repo_id`` (downloaded by huggingface_hub, or from its
    cache when ``HF_HUB_OFFLINE=1``): ``config.json``, ``preprocessor_config.json`` and one
    weights file, ``model.safetensors`` or else ``pytorch_model.bin``."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise BackendUnavailable(HUB_INSTALL) from e
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[CONFIG, PREPROCESSOR, SAFETENSORS]))
        if not (folder / SAFETENSORS).is_file():
            folder = Path(snapshot_download(repo_id,
                                            allow_patterns=[CONFIG, PREPROCESSOR, PYTORCH_BIN]))
    except Exception as e:  # huggingface_hub raises many types: not found, gated, offline, HTTP
        raise ValueError(f"{repo_id}: no such file, and not downloadable from the Hugging Face "
                         f"Hub ({type(e).__name__}: {_first_line(e)})") from None
    return folder


# -- the format ------------------------------------------------------------------------------------
class HuggingFace(Format):
    """A ``save_pretrained`` directory of ``ResNetForImageClassification``; also read from its
    weights file given directly (``DIR/model.safetensors`` with ``config.json`` beside it).

    ``state_dict_reader`` reads ``pytorch_model.bin`` (the torch format, passed in by the list
    of formats so that formats never import each other).
    """

    name, family, carries_spec, directory = "hf", "hf", True, True
    description = "Hugging Face ResNet or ConvNeXt directory (config.json + model.safetensors)"
    carries_preprocessing = True

    def __init__(self, state_dict_reader: Format) -> None:
        self.state_dict_reader = state_dict_reader

    @staticmethod
    def folder(path: Path) -> Path:
        """The checkpoint's directory: ``path``, or the directory of a weights file."""
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        return path.parent if path.is_file() else path

    def weights(self, path: Path) -> Path:
        """The weights file to read: ``path`` itself, or the directory's safetensors / bin."""
        if self.folder(path) != path:
            return path
        found = [path / n for n in (SAFETENSORS, PYTORCH_BIN) if (path / n).is_file()]
        if found:
            return found[0]
        others = sorted(p.name for p in path.glob("*") if p.name.endswith(
            (".index.json", ".h5", ".msgpack", ".safetensors", ".bin")))
        why = (f"; it holds {', '.join(others)} (sharded, TensorFlow or Flax weights are not "
               "read)") if others else ""
        raise ValueError(f"{path}: no weights file ({SAFETENSORS} or {PYTORCH_BIN}){why}")

    def files(self, path: Path, writing: bool = False) -> list[Path]:
        if writing:
            return [path]
        return [self.folder(path) / CONFIG, self.weights(path)]

    def replaceable(self, path: Path) -> bool:
        """An existing directory ``--force`` may replace: empty, or a checkpoint (config.json and
        files only), never a directory holding anything else."""
        entries = list(path.iterdir())
        return not entries or ((path / CONFIG).is_file() and all(p.is_file() for p in entries))

    def config(self, path: Path) -> dict[str, Any]:
        file = _existing_file(self.folder(path) / CONFIG)
        try:
            config = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: not readable JSON ({_first_line(e)})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{file}: holds a {type(config).__name__}, not a JSON object")
        return config

    def spec(self, path: Path) -> Network:
        config = self.config(path)
        try:
            return config_to_spec(config)
        except ValueError as e:
            raise ValueError(f"{self.folder(path) / CONFIG}: {e}") from None

    def preprocessing(self, path: Path) -> Optional[Preprocessing]:
        """``preprocessor_config.json`` beside ``config.json``, as transformers' Pillow image
        processor computes it (None where the directory has none)."""
        file = self.folder(path) / PREPROCESSOR
        if not file.is_file():
            return None
        return preprocessing_file(file, int(self.config(path).get("num_channels", 3)))

    def takes_preprocessing(self, preprocessing: Preprocessing) -> bool:
        """Everything but a channel reorder (BGR), which transformers' processors cannot say."""
        return preprocessing.channels != "BGR"

    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        weights = _existing_file(self.weights(path))
        if weights.suffix != ".safetensors":
            return self.state_dict_reader.tensors(weights)
        return read_safetensors(weights)

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> bool:
        try:
            check_tensors(tensors, self._expected(spec), allow_nonfinite=True,
                          optional=set(hf_bn_counters(spec)))
        except ValueError:
            return False
        return True

    def _expected(self, spec: Unit) -> dict[str, tuple[int, ...]]:
        shapes = param_shapes(spec)
        return ({k: shapes[c] for c, k in hf_keys(spec).items()}
                | {k: () for k in hf_bn_counters(spec)})

    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        weights = self.weights(path)
        if raw and not any(k.startswith("classifier.") for k in raw) and all(
                k.startswith(("embedder.", "embeddings.", "encoder.", "layernorm.")) for k in raw):
            raise ValueError(f"{weights}: a backbone-only checkpoint (ResNetModel, ConvNextModel or "
                             "a backbone: embedder.* or embeddings.*, encoder.*, no classifier); "
                             "the suite converts ResNetForImageClassification and "
                             "ConvNextForImageClassification checkpoints")
        checked = _fits(weights, raw, self._expected(spec), spec, self.description,
                        allow_nonfinite, hf_bn_counters(spec))
        return _canonical(weights, {c: checked[k] for c, k in hf_keys(spec).items()}, spec,
                          allow_nonfinite)

    def write(self, path: Path, state: State, spec: Unit,
              preprocessing: Optional[Preprocessing] = None) -> None:
        """``config.json`` and ``model.safetensors`` (metadata ``format: pt``, as
        ``save_pretrained`` writes it; ``num_batches_tracked`` 0) into the directory ``path``,
        and ``preprocessor_config.json`` where ``preprocessing`` is given."""
        from safetensors.numpy import save_file

        if not isinstance(spec, NETWORKS):
            raise ValueError(f"{path}: a Hugging Face checkpoint is a whole network, not a "
                             f"{type(spec).__name__}")
        config = spec_to_config(spec)
        checked = validate_state(state, spec, allow_nonfinite=True)
        out = {k: np.ascontiguousarray(checked[c]) for c, k in hf_keys(spec).items()}
        out |= {k: np.zeros((), np.int64) for k in hf_bn_counters(spec)}
        path.mkdir(exist_ok=True)
        save_file(out, str(path / SAFETENSORS), metadata={"format": "pt"})
        (path / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if preprocessing is not None:
            (path / PREPROCESSOR).write_text(
                json.dumps(preprocessing.to_hf(), indent=2, sort_keys=True) + "\n")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy (bfloat16, which numpy lacks, through PyTorch)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        if "BF16" in dtypes:
            torch = _require("torch", "torch")
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()}
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def looks_hf_weights(path: Path) -> bool:
    """Whether ``path`` is a weights file of a transformers ResNet or ConvNeXt directory:
    ``config.json`` with model_type resnet or convnext beside it, and (safetensors) no
    resnet-parity spec inside."""
    config = path.parent / CONFIG
    try:
        if json.loads(config.read_text()).get("model_type") not in MODEL_TYPES:
            return False
    except (OSError, ValueError, AttributeError):
        return False
    if path.name.lower().endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="np") as f:
                return "spec" not in (f.metadata() or {})
        except (SafetensorError, OSError):
            return True  # unreadable: the format's reader names the problem
    return path.name.lower().endswith(".bin")


def looks_hf_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding a ``config.json`` (a ``save_pretrained`` directory)."""
    return path.is_dir() and (path / CONFIG).is_file()
