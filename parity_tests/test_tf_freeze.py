"""``resnet_tf.freeze``: the frozen inference graph folds every BatchNorm that follows a conv
into the conv, leaves the others, and computes what the Keras model computes."""

from __future__ import annotations

import numpy as np
import pytest

from common import architecture

from .conftest import backend_or_skip


def _batch_norms(model) -> int:
    import keras
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model._flatten_layers())


@pytest.mark.parametrize("arch, folds_all", [
    ("resnet50", True),        # bottlenecks: conv -> BN everywhere, strided 1x1 shortcuts too
    ("resnet18", True),        # d2l's: the convs carry a bias, folded with the BN
    ("resnet18_v2", False),    # pre-activation: BN -> ReLU -> conv, nothing to fold into
])
def test_frozen_graph_folds_conv_batchnorms_and_computes_the_same(arch, folds_all):
    be = backend_or_skip("tf")
    import tensorflow as tf

    from resnet_tf.freeze import frozen_forward
    spec = architecture(arch, in_channels=3, num_classes=7)
    model = be.build(spec)
    rng = np.random.default_rng(0)
    for var in model.non_trainable_variables:  # BatchNorm statistics far from 0 and 1
        var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    x = rng.uniform(0, 1, (3, 37, 45, 3)).astype("float32")  # odd, non-square, batch > 1
    forward, folded = frozen_forward(model, x.shape)
    want = np.asarray(model(x, training=False))
    got = np.asarray(forward(tf.constant(x)))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    total = _batch_norms(model)
    assert (folded == total) if folds_all else (0 < folded < total), (folded, total)


def test_frozen_bench_mode_computes_the_model_at_every_input_shape():
    """``bench``'s Keras ``frozen`` mode: one graph per input shape, each the model's function;
    its training step is ``tf.function``'s and trains the model's own weights."""
    be = backend_or_skip("tf")
    from resnet_tf import bench as tf_bench
    model = be.build(architecture("resnet18", in_channels=1, num_classes=10))
    forward, train_step = tf_bench.runners(model, "frozen")
    rng = np.random.default_rng(1)
    for shape in ((2, 1, 32, 32), (1, 1, 33, 29), (2, 1, 32, 32)):
        x = rng.uniform(0, 1, shape).astype("float32")
        want = np.asarray(model(np.transpose(x, (0, 2, 3, 1)), training=False))
        assert np.abs(forward(x) - want).max() <= 1e-5 * np.abs(want).max(), shape
    before = model.trainable_variables[0].numpy().copy()
    assert np.isfinite(train_step(x, np.array([3, 7])))
    assert not np.array_equal(model.trainable_variables[0].numpy(), before)
