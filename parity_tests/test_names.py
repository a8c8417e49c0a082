"""The canonical names table of ``docs/architecture.md``, checked against real models.

Every row names one canonical key and how PyTorch's ``state_dict``, Keras's weight paths,
Gluon's ``save_parameters``, d2l's own PyTorch ``net`` and torchvision spell it. Each cell is
read off a freshly built model here (by the identity of the parameter the layer table reaches),
so the table cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from common import param_shapes, resnet18_spec, torchvision_resnet18_spec
from common.core.trace import resolve

from .conftest import backend_or_skip

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
HEADER = "| canonical | PyTorch `state_dict` | Keras weight path | Gluon `save_parameters` |"
TORCH = {"gamma": "weight", "beta": "bias"}                    # BatchNorm parameter names
KERAS = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
         "running_mean": "moving_mean", "running_var": "moving_variance"}


def table(header: str = HEADER, doc: Path = DOC, after: str = "") -> list[list[str]]:
    """The rows of the first table under ``header`` in ``doc`` (below the line ``after``, if
    given), cells unquoted."""
    lines = doc.read_text().splitlines()
    first = lines.index(after) if after else 0
    start = next(i for i in range(first, len(lines)) if lines[i].startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([re.sub(r"^`(.*)`$", r"\1", c.strip()) for c in line.strip("|").split("|")])
    return rows


ROWS = table()


def test_the_table_covers_every_kind_of_name():
    keys = [r[0] for r in ROWS]
    assert len(keys) == len(set(keys)) >= 12
    for part in ("stem.conv.weight", "stem.bn.running_var", ".conv1.", ".bn2.", ".shortcut.",
                 ".shortcut_bn.", "head.fc.weight"):
        assert any(part in k for k in keys), part


def _layer(spec, key):
    name, param = key.rsplit(".", 1)
    layer = next(layer for layer in spec.layers() if layer.name == name)
    return layer, param


def _ids(pairs) -> dict[int, str]:
    return {id(p): n for n, p in pairs}


@pytest.fixture(scope="module")
def models():
    """d2l's ResNet-18 and, for the shortcut BatchNorm rows, the same with ``shortcut_bn``."""
    specs = {False: resnet18_spec(), True: resnet18_spec(shortcut_bn=True)}
    return {framework: {sb: backend_or_skip(framework).build(s) for sb, s in specs.items()}
            for framework in ("torch", "tf", "mxnet")}, specs


def _row_spec(specs, key):
    return specs[".shortcut_bn." in key]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_pytorch_keras_and_gluon_spell_it_as_the_table_says(row, models):
    key, torch_key, keras_path, gluon_key = row[:4]
    by_framework, specs = models
    spec = _row_spec(specs, key)
    layer, param = _layer(spec, key)
    sb = spec.shortcut_bn
    tm, km, gm = (by_framework[f][sb] for f in ("torch", "tf", "mxnet"))

    torch_param = getattr(resolve(tm, layer.attr), TORCH.get(param, param)
                          if layer.kind == "bn" else param)
    names = _ids(list(tm.named_parameters()) + list(tm.named_buffers()))
    assert names[id(torch_param)] == torch_key

    keras_var = getattr(resolve(km, layer.attr), KERAS[param])
    assert keras_var.path == keras_path

    gluon_param = getattr(resolve(gm, layer.attr), param)
    assert _ids(gm._collect_params_with_prefix().items())[id(gluon_param)] == gluon_key


@pytest.fixture(scope="module")
def d2l_net():
    """d2l's PyTorch ``net`` as the chapter prints it."""
    backend_or_skip("torch")
    from common.tools.d2l_reference import torch_net
    return torch_net()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_d2l_and_torchvision_spell_it_as_the_table_says(row, d2l_net):
    from common.tools.d2l_reference import torch_adapter
    from common.tools.formats import torch_keys
    key, d2l_key, tv_key = row[0], row[4], row[5]
    d2l = d2l_net
    layer, param = _layer(resnet18_spec(shortcut_bn=".shortcut_bn." in key), key)
    if ".shortcut_bn." in key:
        assert d2l_key == "(none in d2l)"
    else:
        target = getattr(resolve(torch_adapter(d2l), layer.attr),
                         TORCH.get(param, param) if layer.kind == "bn" else param)
        assert _ids(list(d2l.named_parameters()) + list(d2l.named_buffers()))[id(target)] == d2l_key
    tv = torch_keys(torchvision_resnet18_spec(), torchvision=True)
    assert tv.get(key, "(no bias)") == tv_key
    if tv_key != "(no bias)":  # and torchvision's own name for the module, from its structure
        assert tv_key.split(".")[0] in ("conv1", "bn1", "fc") or re.match(r"layer[1-4]\.", tv_key)


def test_keras_weight_files_do_not_store_layer_names(tmp_path, models):
    """The table's Keras column is built from layer names; a ``.weights.h5`` file is laid out
    by Keras's object structure instead (``layers/stem/conv/vars/0``), so renaming a layer (the
    stages were once ``stages_1``) keeps old files loadable."""
    import h5py
    model = models[0]["tf"][False]
    path = tmp_path / "w.weights.h5"
    model.save_weights(str(path))
    with h5py.File(path) as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    assert not any("stages" in n for n in names) and "layers/stem/conv/vars/0" in names
    assert len(names) == len(model.weights)
    assert all(np.isfinite(v).all() for v in model.get_weights())


BOTTLENECK_HEADER = ("| canonical | PyTorch `state_dict` | Keras weight path | Gluon `save_parameters` "
                     "| torchvision |")


@pytest.fixture(scope="module")
def resnet50_models():
    from common import architecture
    spec = architecture("resnet50")
    return spec, {f: backend_or_skip(f).build(spec) for f in ("torch", "tf", "mxnet")}


def _check_framework_cells(spec, models, key: str, torch_key: str, keras_path: str,
                           gluon_key: str) -> tuple:
    """The PyTorch, Keras and Gluon names of ``key``, read off the built models."""
    layer, param = _layer(spec, key)
    tm, km, gm = models["torch"], models["tf"], models["mxnet"]
    torch_param = getattr(resolve(tm, layer.attr), TORCH.get(param, param)
                          if layer.kind == "bn" else param)
    assert _ids(list(tm.named_parameters()) + list(tm.named_buffers()))[id(torch_param)] == torch_key
    assert getattr(resolve(km, layer.attr), KERAS[param]).path == keras_path
    gluon_param = getattr(resolve(gm, layer.attr), param)
    assert _ids(gm._collect_params_with_prefix().items())[id(gluon_param)] == gluon_key
    return layer, param


@pytest.mark.parametrize("row", table(BOTTLENECK_HEADER), ids=[r[0] for r in table(BOTTLENECK_HEADER)])
def test_bottleneck_names_are_as_the_table_says(row, resnet50_models):
    from common.tools.formats import torch_keys
    key, torch_key, keras_path, gluon_key, tv_key = row
    spec, models = resnet50_models
    _check_framework_cells(spec, models, key, torch_key, keras_path, gluon_key)
    assert torch_keys(spec, torchvision=True)[key] == tv_key


@pytest.fixture(scope="module")
def preact_models():
    from common import architecture
    spec = architecture("resnet18_v2")
    return spec, {f: backend_or_skip(f).build(spec) for f in ("torch", "tf", "mxnet")}


PREACT_ROWS = table(after="### Pre-activation names (v2)")


@pytest.mark.parametrize("row", PREACT_ROWS, ids=[r[0] for r in PREACT_ROWS])
def test_preactivation_names_are_as_the_table_says(row, preact_models):
    key, torch_key, keras_path, gluon_key = row
    spec, models = preact_models
    layer, param = _check_framework_cells(spec, models, key, torch_key, keras_path, gluon_key)
    if key.startswith("stages.1.0.bn1."):  # a pre-activation bn1 normalises the block's input
        assert layer.shapes[param] == (spec.stage_channels[0],)


ZOO_HEADER = "| canonical | torchvision | Hugging Face | keras.applications (layer, variable) |"
README = DOC.parents[1] / "README.md"


ZOO_ROWS = table(ZOO_HEADER, README)


@pytest.fixture(scope="module")
def zoos():
    """ResNet-50 as transformers and keras.applications build it (their own code, no
    download), and the suite's spec."""
    backend_or_skip("torch")
    backend_or_skip("tf")
    transformers = pytest.importorskip("transformers")
    import keras

    from common import architecture
    config = transformers.ResNetConfig(num_labels=1000)     # its defaults are ResNet-50's
    hf = transformers.ResNetForImageClassification(config).state_dict()
    ka = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    return architecture("resnet50"), hf, ka


@pytest.mark.parametrize("row", ZOO_ROWS, ids=[r[0] for r in ZOO_ROWS])
def test_the_readmes_model_zoo_names_are_the_zoos_own(row, zoos):
    """Each cell names a tensor that the zoo's own model has, with the canonical shape (in
    Keras's layout for keras.applications); torchvision's column is torch_keys's map."""
    from common.tools.formats import torch_keys
    spec, hf, ka = zoos
    key, tv, hf_key, ka_cell = row
    shape = param_shapes(spec)[key]
    assert torch_keys(spec, torchvision=True)[key] == tv
    assert tuple(hf[hf_key].shape) == shape
    layer_name, variable = (c.strip("`") for c in ka_cell.split("` `"))
    var = next(v for v in ka.get_layer(layer_name).weights if v.path.endswith("/" + variable))
    keras_shape = shape[2:] + shape[1::-1] if len(shape) == 4 else shape[::-1]
    assert tuple(var.shape) == keras_shape



CONVNEXT_HEADER = ("| canonical | PyTorch `state_dict` | Keras weight path | Gluon `save_parameters` "
                   "| torchvision | Hugging Face |")
CONVNEXT_ROWS = table(CONVNEXT_HEADER)


@pytest.fixture(scope="module")
def convnext_models():
    from common import architecture
    spec = architecture("convnext_tiny")
    return spec, {f: backend_or_skip(f).build(spec) for f in ("torch", "tf", "mxnet")}


@pytest.mark.parametrize("row", CONVNEXT_ROWS, ids=[r[0] for r in CONVNEXT_ROWS])
def test_convnext_names_are_as_the_table_says(row, convnext_models):
    """Each framework's name read off a built convnext_tiny; torchvision's and Hugging Face's
    from the key maps, and Hugging Face's also from transformers' own model, with its shape."""
    from common.tools.formats import torch_keys
    from common.tools.formats.huggingface import hf_keys
    key, torch_key, keras_path, gluon_key, tv_key, hf_key = row
    spec, models = convnext_models
    layer, param = _layer(spec, key)
    tm, km, gm = models["torch"], models["tf"], models["mxnet"]
    torch_param = getattr(resolve(tm, layer.attr), TORCH.get(param, param)
                          if layer.kind == "ln" else param)
    assert _ids(list(tm.named_parameters()))[id(torch_param)] == torch_key
    assert getattr(resolve(km, layer.attr), KERAS[param]).path == keras_path
    gluon_param = getattr(resolve(gm, layer.attr), param)
    assert _ids(gm._collect_params_with_prefix().items())[id(gluon_param)] == gluon_key
    assert torch_keys(spec, torchvision=True)[key] == tv_key
    assert hf_keys(spec)[key] == hf_key
    transformers = pytest.importorskip("transformers")
    hf = _hf_convnext_tiny(transformers)
    assert tuple(hf[hf_key].shape) == param_shapes(spec)[key]


_HF: dict = {}


def _hf_convnext_tiny(transformers) -> dict:
    if not _HF:
        config = transformers.ConvNextConfig(num_labels=1000)  # its defaults are ConvNeXt-T's
        _HF.update(transformers.ConvNextForImageClassification(config).state_dict())
    return _HF
