"""ConvNeXt's rows of the trap table (``resnet-parity traps``), pinned: each test checks, in the
frameworks' own layers (and Hugging Face's and keras.applications' own ConvNeXt, built from
their code), the behaviour its row states; the last checks the figures ``traps`` reports.

If a release changes one of these, the test names the row that has become wrong.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from common.tools import traps

from .conftest import backend_or_skip

pytestmark = pytest.mark.trap


def test_gelu_defaults_differ():
    """PyTorch's nn.GELU and keras.activations.gelu are exact by default, keras.ops.gelu is the
    tanh form; Gluon's GELU is exact (and has no tanh form)."""
    backend_or_skip("torch")
    backend_or_skip("tf")
    backend_or_skip("mxnet")
    import keras
    import torch

    from resnet_mxnet._compat import mx, nn
    assert torch.nn.GELU().approximate == "none"
    assert inspect.signature(keras.ops.gelu).parameters["approximate"].default is True
    assert inspect.signature(keras.activations.gelu).parameters["approximate"].default is False
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))   # exact GELU(1) = Phi(1)
    tanh1 = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715))
    g = nn.GELU()
    g.initialize()
    assert abs(g(mx.nd.array([1.0])).asscalar() - phi1) < 1e-6 < abs(phi1 - tanh1)
    assert abs(float(keras.ops.gelu(1.0)) - tanh1) < 1e-6


def test_layer_norm_default_eps():
    """Defaults: PyTorch 1e-5, Keras 1e-3, Gluon 1e-5. Hugging Face's ConvNeXt hard-codes 1e-6
    inside the network and gives its config's layer_norm_eps (1e-12 by default) to the head."""
    backend_or_skip("torch")
    backend_or_skip("tf")
    backend_or_skip("mxnet")
    transformers = pytest.importorskip("transformers")
    import keras
    import torch

    from resnet_mxnet._compat import nn
    assert torch.nn.LayerNorm(4).eps == 1e-5
    assert keras.layers.LayerNormalization().epsilon == 1e-3
    assert nn.LayerNorm()._epsilon == 1e-5
    config = transformers.ConvNextConfig(depths=[1, 1], hidden_sizes=[8, 16], num_stages=2,
                                         num_labels=3)
    assert config.layer_norm_eps == 1e-12
    model = transformers.ConvNextForImageClassification(config)
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps.pop("convnext.layernorm") == 1e-12
    assert set(eps.values()) == {1e-6} and len(eps) == 4  # stem, downsampling, two blocks


def test_layer_norm_axis():
    """Gluon's LayerNorm normalises the last axis by default: on NCHW that is the width, not
    the channels. PyTorch's LayerNorm(C) wants channels last and refuses NCHW where W != C."""
    backend_or_skip("torch")
    backend_or_skip("mxnet")
    import torch

    from resnet_mxnet._compat import mx, nn
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 5)).astype(np.float32) * 3 + 1
    ln = nn.LayerNorm(in_channels=5)
    ln.initialize()
    y = ln(mx.nd.array(x)).asnumpy()
    assert np.abs(y.mean(axis=-1)).max() < 1e-5           # the width is normalised ...
    assert np.abs(y.mean(axis=1)).max() > 1e-2            # ... and the channels are not
    with pytest.raises(RuntimeError):
        torch.nn.LayerNorm(4)(torch.from_numpy(x))


def test_depthwise_kernel_layouts():
    """The depthwise 7x7's kernel: PyTorch and Gluon (C, 1, kh, kw); Keras DepthwiseConv2D
    (kh, kw, C, 1), Keras Conv2D(groups=C) (kh, kw, 1, C), which keras.applications' ConvNeXt
    uses."""
    backend_or_skip("torch")
    backend_or_skip("tf")
    backend_or_skip("mxnet")
    import keras
    import torch

    from resnet_mxnet._compat import nn
    assert torch.nn.Conv2d(8, 8, 7, groups=8).weight.shape == (8, 1, 7, 7)
    g = nn.Conv2D(8, 7, groups=8, in_channels=8)
    g.initialize()
    assert g.weight.shape == (8, 1, 7, 7)
    dw = keras.layers.DepthwiseConv2D(7)
    dw.build((None, 9, 9, 8))
    grouped = keras.layers.Conv2D(8, 7, groups=8)
    grouped.build((None, 9, 9, 8))
    assert tuple(dw.kernel.shape) == (7, 7, 8, 1) and tuple(grouped.kernel.shape) == (7, 7, 1, 8)
    app = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=3)
    layer = app.get_layer("convnext_tiny_stage_0_block_0_depthwise_conv")
    assert type(layer) is keras.layers.Conv2D and tuple(layer.kernel.shape) == (7, 7, 1, 96)


def test_layer_scale_shapes():
    """Hugging Face and keras.applications keep layer scale as (C,); torchvision as (C, 1, 1),
    which the suite's torchvision format requires (test_convnext_checkpoints.py)."""
    backend_or_skip("torch")
    backend_or_skip("tf")
    transformers = pytest.importorskip("transformers")
    import keras
    config = transformers.ConvNextConfig(depths=[1, 1], hidden_sizes=[8, 16], num_stages=2,
                                         num_labels=3)
    model = transformers.ConvNextForImageClassification(config)
    scale = model.convnext.encoder.stages[0].layers[0].layer_scale_parameter
    assert tuple(scale.shape) == (8,) and float(scale[0].detach()) == pytest.approx(1e-6)
    app = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=3)
    assert tuple(app.get_layer("convnext_tiny_stage_0_block_0_layer_scale").weights[0].shape) == (96,)
    from common.core.spec import convnext_tiny_spec
    from common.tools.formats import FORMATS
    shapes = FORMATS["torchvision"]._expected(convnext_tiny_spec())[1]
    assert shapes["features.1.0.layer_scale"] == (96, 1, 1)


def test_traps_measures_convnexts_effects():
    """The figures ``resnet-parity traps`` prints for ConvNeXt's rows, ConvNeXt-T at 64x64."""
    for name in ("torch", "tf", "mxnet"):
        backend_or_skip(name)
    found = {f.trap: f for f in traps.convnext_findings("convnext_tiny")}
    assert list(found) == [t.trap for t in traps.CONVNEXT_TRAPS]
    for f in found.values():
        print(f"{f.trap}: {f.measured}")
    fig = {k: f.figures for k, f in found.items()}
    gelu = fig["GELU exact vs tanh"]
    assert 1e-5 < gelu["tanh"] < 1e-2
    assert gelu["float64_torch"] < 1e-15 < gelu["float64_tf"] < gelu["float64_mxnet"] < 1e-5
    assert 1e-8 < gelu["float64_mxnet_erf_gradient"] < 1e-7
    eps = fig["LayerNorm eps"]
    assert eps["eps_keras"] > 1e-4 > eps["eps_torch"] > 1e-7 and eps["eps_seed"] > 1e-8
    assert fig["LayerNorm axis"]["axis"] > 1e-1
    assert fig["depthwise kernel layout"]["dw_layout"] > 0.5
    assert fig["depthwise kernel layout"]["dw_keras"] == 0.0
