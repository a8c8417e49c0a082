"""What the model zoos each mean by "ResNet-50", pinned: the family's rows of the trap table
(``resnet-parity traps``). Each test reads keras.applications' or Hugging Face transformers' own
model (built from their code, no download) and checks the behaviour the row states; the last
test checks the measured effects ``traps`` reports.

If a release of either changes one of these, the test names the row that has become wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from common import architecture
from common.tools import traps

from .conftest import backend_or_skip

pytestmark = pytest.mark.trap


@pytest.fixture(scope="module")
def keras_resnet50():
    """keras.applications' ResNet50, random weights, 4 classes, its default softmax head."""
    backend_or_skip("tf")
    import keras
    return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=4)


@pytest.fixture(scope="module")
def hf_resnet():
    """Hugging Face transformers' ResNetForImageClassification from a small config."""
    backend_or_skip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                                       layer_type="bottleneck", num_labels=3)
    return transformers.ResNetForImageClassification(config).eval()


def test_keras_applications_strides_the_first_1x1(keras_resnet50, hf_resnet):
    """v1 (keras.applications): a stage's first block strides its first 1x1 conv; v1.5
    (Hugging Face's default, as torchvision): its 3x3."""
    layer = keras_resnet50.get_layer
    assert layer("conv3_block1_1_conv").strides == (2, 2)
    assert layer("conv3_block1_2_conv").strides == (1, 1)
    assert layer("conv3_block1_0_conv").strides == (2, 2)        # the shortcut
    block = hf_resnet.resnet.encoder.stages[1].layers[0]
    assert [block.layer[k].convolution.stride for k in range(3)] == [(1, 1), (2, 2), (1, 1)]
    assert architecture("keras-resnet50").stride_at == "1x1"
    assert architecture("resnet50").stride_at == "3x3"


def test_keras_applications_bn_eps(keras_resnet50, hf_resnet):
    """keras.applications' ResNet BatchNorms use eps 1.001e-5 (Keras's default is 1e-3);
    Hugging Face's and PyTorch's 1e-5."""
    import keras
    eps = {lay.epsilon for lay in keras_resnet50.layers
           if isinstance(lay, keras.layers.BatchNormalization)}
    assert eps == {1.001e-5} and keras.layers.BatchNormalization().epsilon == 1e-3
    import torch
    assert {m.eps for m in hf_resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    assert architecture("keras-resnet50").bn_eps == 1.001e-5


def test_conv_bias_differs_between_model_zoos(keras_resnet50, hf_resnet):
    """keras.applications puts a bias on every conv, Hugging Face (and torchvision) on none."""
    import keras
    import torch
    convs = [lay for lay in keras_resnet50.layers if isinstance(lay, keras.layers.Conv2D)]
    assert len(convs) == 53 and all(c.use_bias for c in convs)
    assert all(m.bias is None for m in hf_resnet.modules() if isinstance(m, torch.nn.Conv2d))
    assert architecture("keras-resnet50").conv_bias is True
    assert architecture("resnet50").conv_bias is False


def test_hugging_face_classifier_sits_at_index_1(hf_resnet):
    """The classifier is ``Sequential(Flatten, Linear)``, so its keys are ``classifier.1.*``;
    and PyTorch's ``strict=False`` load reports keys it could not fill instead of refusing."""
    import torch
    keys = [k for k in hf_resnet.state_dict() if k.startswith("classifier.")]
    assert keys == ["classifier.1.weight", "classifier.1.bias"]
    head = torch.nn.Sequential(torch.nn.Linear(4, 3))               # a map expecting index 0
    result = head.load_state_dict({"1.weight": torch.zeros(3, 4), "1.bias": torch.zeros(3)},
                                  strict=False)
    assert result.missing_keys == ["0.weight", "0.bias"]            # no error: silently random


def test_keras_applications_outputs_probabilities(keras_resnet50):
    """keras.applications' head applies a softmax by default: probabilities, not logits."""
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    y = np.asarray(keras_resnet50(x, training=False))
    assert y.shape == (2, 4) and (y >= 0).all()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert keras_resnet50.get_layer("predictions").activation.__name__ == "softmax"


def test_traps_measures_the_familys_effects():
    """The figures ``resnet-parity traps`` prints for the family rows, on ResNet-50: each wrong
    assumption moves the logits by the stated order, and float32 cannot tell eps 1e-5 from
    1.001e-5 until running variances are small."""
    backend_or_skip("torch")
    found = {f.trap: f for f in traps.family_findings("resnet50")}
    assert list(found) == [t.trap for t in traps.FAMILY_TRAPS]
    fig = {k: f.figures for k, f in found.items()}
    for f in found.values():
        print(f"{f.trap}: {f.measured}")
    assert fig["bottleneck stride (v1 vs v1.5)"]["stride_at"] > 5e-2
    assert fig["BatchNorm eps 1.001e-5"]["eps"] < 1e-6
    assert 1e-5 < fig["BatchNorm eps 1.001e-5"]["eps_small_var"] < 1e-1
    assert fig["conv bias"]["bias"] > 1e-3
    assert fig["Hugging Face classifier"]["classifier"] > 1e-1
    basic = {f.trap: f for f in traps.family_findings("resnet18")}
    assert basic["bottleneck stride (v1 vs v1.5)"].measured.startswith("n/a")
