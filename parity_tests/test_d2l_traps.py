"""d2l's code as printed: its Keras ResNet is not its PyTorch ResNet; the suite's Keras one is.

Two causes, isolated at block level: ``padding='same'`` pads a stride-2 convolution
asymmetrically when the input size is even (one extra row and column at the bottom/right
instead of one on each side), and Keras BatchNorm's default eps is 1e-3, PyTorch's 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from common import ResidualSpec, compare, diff, format_rows, random_state

from .conftest import backend_or_skip, make_input
from .d2l_reference import keras_adapter, keras_d2l, torch_adapter, torch_net

RESIDUAL = ResidualSpec(3, 6, use_1x1conv=True, strides=2)


@pytest.fixture(scope="module")
def backends():
    return backend_or_skip("torch"), backend_or_skip("tf")


def test_d2l_keras_resnet18_differs_the_suites_does_not(backends, r18, r18_state, loaded):
    import torch
    torch_be, tf_be = backends
    x = make_input((2, 1, 96, 96), seed=96)

    tnet = torch_net().eval()
    torch_be.load_state(torch_be.register(torch_adapter(tnet), r18), r18_state)
    knet = keras_d2l().net()
    knet(np.zeros((1, 96, 96, 1), np.float32))  # create the weights
    tf_be.load_state(tf_be.register(keras_adapter(knet), r18), r18_state)

    with torch.no_grad():
        d2l_torch = tnet(torch.from_numpy(x)).numpy()
    d2l_keras = np.asarray(knet(x.transpose(0, 2, 3, 1), training=False))
    suite_torch = torch_be.forward(loaded(torch_be, r18), x)
    suite_tf = tf_be.forward(loaded(tf_be, r18), x)

    same, d2l_gap, suite_gap = (diff(suite_torch, d2l_torch), diff(d2l_keras, d2l_torch),
                                diff(suite_tf, suite_torch))
    print(f"\nlogits, ResNet-18, 96x96, max rel: d2l-Keras vs d2l-PyTorch {d2l_gap[1]:.2e}; "
          f"suite Keras vs suite PyTorch {suite_gap[1]:.2e}; suite PyTorch vs d2l-PyTorch "
          f"{same[1]:.2e}")
    assert same[1] == 0.0         # the suite's PyTorch model is d2l's function, op for op
    assert d2l_gap[1] > 1e-2      # the trap: a large, not a rounding, difference
    assert suite_gap[1] <= 1e-5   # the fix


def _residual_rows(backends, size, eps):
    torch_be, tf_be = backends
    state = random_state(RESIDUAL, seed=size)
    x = make_input((2, 3, size, size), seed=size)
    ref = torch_be.build(RESIDUAL)
    torch_be.load_state(ref, state)
    blk = keras_d2l().Residual(6, use_1x1conv=True, strides=2)
    blk(np.zeros((1, size, size, 3), np.float32))
    if eps is not None:
        blk.bn1.epsilon = blk.bn2.epsilon = eps
    tf_be.load_state(tf_be.register(blk, RESIDUAL), state)
    rows = {r.layer: r for r in compare(tf_be.activations(blk, x), torch_be.activations(ref, x))}
    print(format_rows(list(rows.values()), f"\nd2l Keras Residual vs PyTorch, {size}x{size}, "
                      f"eps {eps or 'Keras default 1e-3'}"))
    return rows


def test_same_padding_is_asymmetric_at_stride_2_on_even_sizes(backends):
    rows = _residual_rows(backends, size=8, eps=1e-5)
    assert rows["conv1"].max_rel > 1e-1       # stride-2 3x3 conv: shifted by one pixel
    assert rows["shortcut"].max_rel <= 1e-5   # 1x1 needs no padding: the same
    odd = _residual_rows(backends, size=9, eps=1e-5)
    assert all(r.max_rel <= 1e-5 for r in odd.values())  # odd sizes pad 1 and 1: the same


def test_keras_default_eps_is_a_second_trap(backends):
    rows = _residual_rows(backends, size=9, eps=None)   # symmetric padding, eps 1e-3
    assert rows["conv1"].max_rel <= 1e-5
    assert rows["bn1"].max_rel > 1e-4
