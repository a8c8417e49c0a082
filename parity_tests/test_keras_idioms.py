"""The Keras model is a real Keras model, and its two fixes to d2l's Keras code hold.

* It compiles and fits, and round-trips through ``get_config``/``from_config`` and ``.keras``
  files with identical weights and outputs.
* The spec's BatchNorm eps and momentum (PyTorch convention) reach the Keras layers.
* Stride-2 convolutions and the stem max pool pad like PyTorch (symmetric, ``-inf`` for the pool);
  Keras's ``padding='same'`` with the same weights is a different function on even sizes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from common import ResNetSpec, diff, random_state  # noqa: E402
from common.core.trace import resolve  # noqa: E402

from .conftest import backend_or_skip, make_input  # noqa: E402

SMALL = ResNetSpec(name="small", stem_channels=8, stage_channels=(8, 16), stage_blocks=(1, 1))


@pytest.fixture(scope="module")
def tf_be():
    return backend_or_skip("tf")


@pytest.fixture
def small(tf_be):
    """A freshly built small ResNet with random weights and random BatchNorm statistics."""
    model = tf_be.build(SMALL)
    tf_be.load_state(model, random_state(SMALL, seed=3))
    return model


def nhwc(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return make_input(shape, seed).transpose(0, 2, 3, 1).copy()


def weights_by_path(model: Any) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


# -- a Keras model ------------------------------------------------------------------------------

def test_built_at_construction_with_readable_paths(tf_be):
    from resnet_tf import ResNet, ResnetBlock
    model = ResNet(SMALL)
    assert model.built and len(model.weights) > 0
    assert isinstance(model.stages[1], ResnetBlock) and len(model.stages[1]) == 1
    assert model.stages[1][0] is model.stages[1].residual_layers[0]
    paths = [v.path for v in model.weights]
    assert "small/stem/conv/kernel" in paths and "small/stages.1/0/conv3/kernel" in paths
    assert "small/head/fc/bias" in paths
    assert len(paths) == len(set(paths))


def test_compile_and_fit_one_epoch(small):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 1)).astype(np.float32)
    y = rng.integers(0, SMALL.num_classes, 8)
    before = weights_by_path(small)
    small.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = small.fit(x, y, batch_size=4, epochs=1, verbose=0)
    loss = history.history["loss"]
    assert len(loss) == 1 and np.isfinite(loss[0])
    after = weights_by_path(small)
    assert not np.array_equal(before["small/stem/conv/kernel"], after["small/stem/conv/kernel"])
    # fit runs BatchNorm in training mode: its running statistics move
    assert not np.array_equal(before["small/stem/bn/moving_mean"],
                              after["small/stem/bn/moving_mean"])
    assert small.predict(x, verbose=0).shape == (8, SMALL.num_classes)


def test_get_config_from_config(small):
    from resnet_tf import ResNet
    config = small.get_config()
    assert config["spec"] == SMALL.to_dict()
    clone = ResNet.from_config(json.loads(json.dumps(config)))  # a JSON-able config
    assert clone.spec == SMALL and clone.name == small.name
    assert [v.path for v in clone.weights] == [v.path for v in small.weights]
    clone.set_weights(small.get_weights())
    x = nhwc((2, 1, 32, 32))
    assert np.array_equal(clone(x, training=False), small(x, training=False))


def test_keras_file_round_trip(small, tmp_path):
    from resnet_tf import ResNet
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is ResNet and loaded.spec == SMALL
    want, got = weights_by_path(small), weights_by_path(loaded)
    assert list(got) == list(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    x = nhwc((2, 1, 33, 33), seed=1)
    assert np.array_equal(loaded(x, training=False), small(x, training=False))


@pytest.mark.parametrize("make", ["residual", "block", "stem", "head", "conv", "pool"])
def test_every_custom_layer_config_is_complete(make):
    """``from_config(get_config())`` rebuilds the same layer: same config, same weight shapes."""
    from resnet_tf import Head, PaddedConv2D, PaddedMaxPooling2D, Residual, Stem, resnet_block
    layer = {
        "residual": lambda: Residual(6, True, 2, conv_bias=False, shortcut_bn=True,
                                     bn_eps=2e-5, bn_momentum=0.3),
        "block": lambda: resnet_block(6, 2, conv_bias=False, shortcut_bn=True, bn_eps=2e-5),
        "stem": lambda: Stem(6, 5, 2, pool=False, conv_bias=False, bn_eps=2e-5),
        "head": lambda: Head(4),
        "conv": lambda: PaddedConv2D(6, 3, strides=2, use_bias=False),
        "pool": lambda: PaddedMaxPooling2D(3, strides=2),
    }[make]()
    config = layer.get_config()
    clone = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert type(clone) is type(layer) and clone.get_config() == config
    x = nhwc((2, 3, 10, 10))
    y = layer(x)
    assert tuple(layer.compute_output_shape(x.shape)) == tuple(y.shape)
    clone(x)
    assert [w.path for w in clone.weights] == [w.path for w in layer.weights]
    # the same function: one training step (BN momentum) and an inference pass (BN eps) agree
    clone.set_weights(layer.get_weights())
    layer(x, training=True), clone(x, training=True)
    assert all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), clone.get_weights()))
    assert np.array_equal(layer(x, training=False), clone(x, training=False))


# -- BatchNorm options --------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [SMALL, ResNetSpec(name="opts", stem_channels=8,
                                                    stage_channels=(8, 16), stage_blocks=(1, 1),
                                                    bn_eps=2e-4, bn_momentum=0.25,
                                                    shortcut_bn=True)],
                         ids=["d2l-defaults", "custom"])
def test_bn_eps_and_momentum_reach_keras(tf_be, spec):
    model = tf_be.build(spec)
    bns = [resolve(model, layer.attr) for layer in spec.layers() if layer.kind == "bn"]
    assert len(bns) == (6 if spec.shortcut_bn else 5)  # stem, 2 per Residual, shortcut
    for bn in bns:
        assert isinstance(bn, keras.layers.BatchNormalization)
        assert bn.epsilon == spec.bn_eps          # never Keras's default 1e-3
        assert bn.momentum == 1 - spec.bn_momentum


def test_momentum_is_the_weight_of_the_new_batch(tf_be):
    """One training step of a BN layer: running = (1 - m) * running + m * batch, as in PyTorch."""
    spec = ResNetSpec(name="m", stem_channels=4, stage_channels=(4,), stage_blocks=(1,),
                      bn_momentum=0.25)
    bn = tf_be.build(spec).stem.bn
    old = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    x = nhwc((2, 4, 5, 5), seed=4) + 3.0
    bn(x, training=True)
    want = 0.75 * old + 0.25 * x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), want, rtol=1e-5)


# -- padding: PyTorch's, not padding='same' ------------------------------------------------------

def conv_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """NHWC convolution with PyTorch's padding (k//2 zeros each side), in float64 numpy."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            window = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += np.einsum("nhwc,co->nhwo", window, kernel[i, j])
    return out + bias


def _conv_pair(k: int, size: int, seed: int):
    from resnet_tf import PaddedConv2D
    x = nhwc((2, 3, size, size), seed=seed)
    conv = PaddedConv2D(4, k, strides=2)
    conv.build(x.shape)
    rng = np.random.default_rng(seed)
    conv.kernel.assign(rng.standard_normal(conv.kernel.shape).astype(np.float32))
    conv.bias.assign(rng.standard_normal(conv.bias.shape).astype(np.float32))
    same = keras.layers.Conv2D(4, k, strides=2, padding="same")
    same.build(x.shape)
    same.set_weights(conv.get_weights())
    return x, conv, same


@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
@pytest.mark.parametrize("k", [3, 7, 1])
def test_stride2_conv_pads_like_pytorch(k, size):
    x, conv, _ = _conv_pair(k, size, seed=10 * k + size)
    ref = conv_reference(x, *(keras.ops.convert_to_numpy(w) for w in (conv.kernel, conv.bias)), 2)
    y = keras.ops.convert_to_numpy(conv(x))
    assert y.shape == ref.shape == (2, (size - 1) // 2 + 1, (size - 1) // 2 + 1, 4)
    assert tuple(conv.compute_output_shape(x.shape)) == y.shape
    assert diff(y, ref)[1] <= 1e-6


@pytest.mark.trap
@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
@pytest.mark.parametrize("k", [3, 7, 1])
def test_keras_same_padding_is_asymmetric_at_stride_2(k, size):
    """d2l's trap: Keras's padding='same' puts the padding of an even-sized input at the
    bottom/right only; PyTorch's padding=k//2 is symmetric."""
    x, conv, same = _conv_pair(k, size, seed=10 * k + size)
    ref = conv_reference(x, *(keras.ops.convert_to_numpy(w) for w in (conv.kernel, conv.bias)), 2)
    gap = diff(keras.ops.convert_to_numpy(same(x)), ref)[1]
    print(f"\nConv2D(padding='same', strides=2), {k}x{k} kernel, {size}x{size}: {gap:.2e} "
          "from symmetric padding")
    if size % 2 == 0 and k > 1:
        assert gap > 1e-1
    else:  # odd sizes, and 1x1 kernels (no padding at all), agree
        assert gap <= 1e-6


@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
@pytest.mark.parametrize("k", [3, 7])
def test_stride2_conv_equals_torch(k, size):
    torch = pytest.importorskip("torch")
    x, conv, _ = _conv_pair(k, size, seed=k + size)
    w = np.transpose(keras.ops.convert_to_numpy(conv.kernel), (3, 2, 0, 1))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                     torch.from_numpy(w.copy()),
                                     torch.from_numpy(keras.ops.convert_to_numpy(conv.bias)),
                                     stride=2, padding=k // 2).numpy().transpose(0, 2, 3, 1)
    assert diff(keras.ops.convert_to_numpy(conv(x)), ref)[1] <= 1e-6


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
def test_strided_1x1_conv_is_keras_own_and_survives_training(padding, size):
    """PaddedConv2D takes a strided 1x1 convolution's filter gradient at stride 1 on the
    subsampled input, away from TensorFlow's oneDNN filter gradient that corrupts the heap (trap
    "oneDNN strided 1x1 filter gradient"): the output and both gradients are Keras's own strided
    Conv2D's, and a process training it is not killed."""
    import tensorflow as tf

    from resnet_tf import PaddedConv2D
    x = tf.constant(nhwc((2, 3, size, size), seed=size))
    conv = PaddedConv2D(4, 1, strides=2, padding_mode=padding)
    plain = keras.layers.Conv2D(4, 1, strides=2, padding="valid" if padding == "symmetric" else padding)
    conv.build(x.shape), plain.build(x.shape)
    rng = np.random.default_rng(size)
    conv.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in conv.get_weights()])
    plain.set_weights(conv.get_weights())
    grads = []
    for layer in (conv, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        grads.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    for name, a, b in zip(("output", "input grad", "kernel grad", "bias grad"), *grads):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        assert a.shape == b.shape and diff(a, b)[1] <= 1e-6, name
    if size % 2 == 0:
        from common.tools.traps import strided_1x1_crashes
        assert strided_1x1_crashes(onednn=True, suite=True, runs=2) == 0


def pool_reference(x: np.ndarray) -> np.ndarray:
    """NHWC 3x3 stride-2 max pool with PyTorch's padding=1 (padding never wins the max)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    oh, ow = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 3) // 2 + 1
    return np.max([xp[:, i:i + 2 * oh:2, j:j + 2 * ow:2, :] for i in range(3) for j in range(3)],
                  axis=0)


@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
def test_max_pool_pads_with_minus_infinity(size):
    from resnet_tf import PaddedMaxPooling2D
    x = -1.0 - np.abs(nhwc((2, 3, size, size), seed=size))  # all negative
    y = keras.ops.convert_to_numpy(PaddedMaxPooling2D(3, strides=2)(x))
    assert (y < 0).all()
    np.testing.assert_array_equal(y, pool_reference(x))


@pytest.mark.trap
@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
def test_keras_max_pool_padding_is_not_pytorchs(size):
    """On an all-negative input: PyTorch's max_pool2d(3, 2, padding=1) pads -inf (the
    reference); Keras's ZeroPadding2D + MaxPooling2D lets the zero padding win at the border,
    and MaxPooling2D(padding='same') shifts the windows on even sizes."""
    torch = pytest.importorskip("torch")
    x = -1.0 - np.abs(nhwc((2, 3, size, size), seed=size))  # all negative
    ref = pool_reference(x)
    pytorch = torch.nn.functional.max_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), 3,
                                             stride=2, padding=1).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(pytorch, ref)
    zero_padded = keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(3, strides=2)(
        keras.layers.ZeroPadding2D(1)(x)))
    assert zero_padded.shape == ref.shape and (zero_padded == 0).any()  # zeros at the border
    assert diff(zero_padded, ref)[1] > 0.1
    same = keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(3, 2, padding="same")(x))
    assert same.shape == ref.shape
    assert np.array_equal(same, ref) == (size % 2 == 1)  # 'same' shifts the windows on even sizes


def test_padded_layers_refuse_a_padding_argument():
    from resnet_tf import PaddedConv2D, PaddedMaxPooling2D
    with pytest.raises(TypeError, match="padding"):
        PaddedConv2D(4, 3, strides=2, padding="same")
    with pytest.raises(TypeError, match="padding"):
        PaddedMaxPooling2D(3, 2, padding="same")
    with pytest.raises(ValueError, match="odd"):
        PaddedConv2D(4, 2, strides=2)


@pytest.mark.trap
def test_keras_3_batch_norm_has_no_fused_kernel():
    """Keras 3's BatchNormalization on TensorFlow computes inference as elementwise ops
    (tf.nn.batch_normalization): no FusedBatchNormV3 for the graph optimiser to fuse into the
    conv, where tf.keras's fused=True had one. resnet_tf's FusedBatchNormalization restores it."""
    backend_or_skip("tf")
    import tensorflow as tf
    layer = keras.layers.BatchNormalization()
    layer.build((2, 5, 5, 6))
    graph = tf.function(lambda t: layer(t, training=False)).get_concrete_function(
        tf.TensorSpec((2, 5, 5, 6), tf.float32)).graph
    kinds = {op.type for op in graph.get_operations()}
    assert not any(k.startswith("FusedBatchNorm") for k in kinds) and "Rsqrt" in kinds


def test_fused_batch_norm_is_kerass_batch_norm_with_tensorflows_fused_kernel():
    """resnet_tf's BatchNorm computes what Keras's own does, in inference (through TensorFlow's
    FusedBatchNormV3, which the graph optimiser can fuse into the conv) and in training (Keras's
    own code: batch statistics, moving averages updated alike); float64 stays on Keras's path."""
    backend_or_skip("tf")
    import tensorflow as tf

    from resnet_tf.blocks import FusedBatchNormalization
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 5, 6)).astype(np.float32)
    layers = [cls(epsilon=1e-5, momentum=0.9) for cls in
              (FusedBatchNormalization, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.build(x.shape)
    stats = [rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.2, 6), rng.normal(0, 0.2, 6),
             rng.uniform(0.5, 2.0, 6)]
    for layer in layers:
        layer.set_weights([s.astype(np.float32) for s in stats])
    fused, plain = (np.asarray(layer(x, training=False)) for layer in layers)
    assert diff(fused, plain)[1] < 1e-6 and diff(plain, x)[1] > 1e-1
    graph = tf.function(lambda t: layers[0](t, training=False)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
    trained = [np.asarray(layer(x, training=True)) for layer in layers]
    assert diff(trained[0], trained[1])[1] < 1e-6
    assert all(np.allclose(a, b) for a, b in zip(layers[0].get_weights(), layers[1].get_weights()))
    double = FusedBatchNormalization(epsilon=1e-5, dtype="float64")
    assert np.asarray(double(x.astype(np.float64), training=False)).dtype == np.float64
