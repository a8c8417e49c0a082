"""The d2l Keras function, built exactly in every framework: ``padding="same"`` (TensorFlow's
stride-2 padding) with Keras's BatchNorm eps and momentum, the spec's ``d2l-keras-resnet18``.

The reference is the chapter's Keras code as printed (:mod:`parity_tests.d2l_chapter`), loaded
with one random state; the suite's model of that function runs in PyTorch, Keras and Gluon
(imperative and hybridized) on even, odd and mixed sizes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common import get_backend, random_state
from common.core.compare import compare, diff, global_floor
from common.core.spec import ResidualSpec, d2l_keras_resnet18_spec, resnet18_spec
from common.core.trace import resolve
from common.tools.d2l_reference import keras_adapter

from .conftest import backend_or_skip
from .d2l_chapter import keras_chapter

RTOL = 1e-5
SHAPES = [(96, 96), (97, 97), (96, 97)]
KERAS_RESIDUAL = ResidualSpec(input_channels=3, num_channels=6, use_1x1conv=True, strides=2,
                              padding="same", bn_eps=1e-3, bn_momentum=0.01)


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _randomise_statistics(state: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = rng.normal(0, 0.2, v.shape).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def chapter_net():
    """The chapter's Keras ``net()`` with a random state, and that state."""
    tf_be = backend_or_skip("tf")
    spec = d2l_keras_resnet18_spec()
    state = _randomise_statistics(random_state(spec, seed=11), seed=12)
    net = keras_chapter().net()
    net(np.zeros((1, 32, 32, 1), np.float32))
    tf_be.load_state(tf_be.register(keras_adapter(net), spec), state)
    return net, state


def _chapter_logits(net, x: np.ndarray) -> np.ndarray:
    return np.asarray(net(x.transpose(0, 2, 3, 1), training=False))


@pytest.mark.parametrize("hybridize", [False, True], ids=["eager", "hybridized"])
def test_the_suite_computes_the_chapter_keras_function(be, chapter_net, hybridize):
    if hybridize and be.name != "mxnet":
        pytest.skip("hybridize is Gluon's")
    net, state = chapter_net
    model = be.build(d2l_keras_resnet18_spec())
    be.load_state(model, state)
    if hybridize:
        model.hybridize()
    for h, w in SHAPES:
        x = _x((2, 1, h, w), seed=h * w)
        ref = _chapter_logits(net, x)
        got = be.forward(model, x)
        assert diff(got, ref)[1] <= RTOL, ((h, w), diff(got, ref))


def test_every_layer_agrees_across_frameworks(installed):
    spec = d2l_keras_resnet18_spec()
    state = _randomise_statistics(random_state(spec, seed=3), seed=4)
    x = _x((2, 1, 64, 65), seed=5)
    acts = {}
    for name in installed:
        be = get_backend(name)
        model = be.build(spec)
        be.load_state(model, state)
        acts[name] = be.activations(model, x)
    ref = acts[installed[0]]
    for name in installed[1:]:
        for layer, a in acts[name].items():
            assert diff(a, ref[layer])[1] <= RTOL, (name, layer)


@pytest.mark.parametrize("size", [8, 9])
def test_the_chapter_keras_residual_alone(be, size):
    backend_or_skip("tf")
    tf_be = get_backend("tf")
    state = _randomise_statistics(random_state(KERAS_RESIDUAL, seed=size), seed=size + 1)
    blk = keras_chapter().Residual(6, use_1x1conv=True, strides=2)
    blk(np.zeros((1, size, size, 3), np.float32))
    tf_be.load_state(tf_be.register(blk, KERAS_RESIDUAL), state)
    x = _x((2, 3, size, size), seed=size)
    ref = np.asarray(blk(x.transpose(0, 2, 3, 1), training=False)).transpose(0, 3, 1, 2)
    model = be.build(KERAS_RESIDUAL)
    be.load_state(model, state)
    assert diff(be.forward(model, x), ref)[1] <= RTOL


def test_the_padding_changes_the_function_at_even_sizes_only(be):
    """Same weights, 'same' against symmetric padding: the logits move at an even input; a
    stride-2 block alone at an odd size does not move at all (the two paddings agree there)."""
    state = random_state(resnet18_spec(), seed=8)
    models = {}
    for padding in ("same", "symmetric"):
        models[padding] = be.build(resnet18_spec(padding=padding))
        be.load_state(models[padding], state)
    x = _x((2, 1, 96, 96), seed=96)
    assert diff(be.forward(models["same"], x), be.forward(models["symmetric"], x))[1] > 1e-3
    spec = ResidualSpec(input_channels=3, num_channels=6, use_1x1conv=True, strides=2)
    block_state = random_state(spec, seed=9)
    outs = {}
    for padding in ("same", "symmetric"):
        blk = be.build(dataclasses.replace(spec, padding=padding))
        be.load_state(blk, block_state)
        outs[padding] = {s: be.forward(blk, _x((2, 3, s, s), seed=s)) for s in (9, 8)}
    assert diff(outs["same"][9], outs["symmetric"][9])[1] <= 1e-6
    assert diff(outs["same"][8], outs["symmetric"][8])[1] > 1e-3


def test_same_max_pool_never_lets_padding_win(be):
    """An all-negative input: zero padding would win the max at the border; -inf never does."""
    import tensorflow as tf
    backend_or_skip("tf")
    spec = resnet18_spec(padding="same")
    model = be.build(spec)
    pool = resolve(model, ("stem", "pool"))
    x = -1.0 - np.abs(_x((2, 4, 10, 11), seed=1))
    ref = tf.nn.max_pool2d(x.transpose(0, 2, 3, 1), 3, 2, "SAME").numpy().transpose(0, 3, 1, 2)
    got = _run_layer(be, pool, x)
    np.testing.assert_array_equal(got, ref)
    assert (got < 0).all()


def _run_layer(be, layer, x: np.ndarray) -> np.ndarray:
    """One layer of a built model on NCHW ``x``, in its framework."""
    if be.name == "torch":
        import torch
        return layer(torch.from_numpy(x)).numpy()
    if be.name == "tf":
        import keras
        return keras.ops.convert_to_numpy(layer(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    from resnet_mxnet._compat import mx
    return layer(mx.nd.array(x)).asnumpy()


def test_same_padding_trains_alike(pair):
    """A 'same' block's training gradients agree between frameworks, in float64 (where float32
    BatchNorm backward cancellation no longer hides a padding that differs)."""
    a, b = pair
    state = random_state(KERAS_RESIDUAL, seed=21)
    x, y = _x((4, 3, 10, 10), seed=22), np.arange(4) % 6
    grads = []
    for be in (a, b):
        model = be.build(KERAS_RESIDUAL, dtype="float64")
        be.load_state(model, state)
        grads.append(be.gradients(model, x, y)[1])
    # a conv bias before a training-mode BatchNorm has zero gradient: judged on the global scale
    rows = compare(grads[1], grads[0], rtol=1e-9, floor=global_floor(grads[0]))
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]
