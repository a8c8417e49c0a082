"""What each framework does by itself, pinned: the trap-table rows (``resnet-parity traps``,
README "What differs between the frameworks") about the frameworks' own layers and optimizers,
not d2l's code and not the suite's. Each test builds the framework's plain layer (never the
suite's) and checks it against the behaviour the row states, in numbers.

If a framework release changes one of these, the test names the row that has become wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common import diff

from . import numpy_reference as ref_np
from .conftest import backend_or_skip, make_input

pytestmark = pytest.mark.trap


@pytest.fixture(params=["torch", "tf", "mxnet"])
def fw(request) -> str:
    """Each framework by name (skipped with the install hint where missing)."""
    backend_or_skip(request.param)
    return request.param


def _mx():
    from resnet_mxnet._compat import autograd, gluon, mx  # mxnet needs the suite's numpy shim
    return mx, gluon, autograd


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


# -- layouts -------------------------------------------------------------------------------------
def test_tensorflow_cpu_convolution_is_nhwc_only():
    """Keras lays images out NHWC by default, and TensorFlow's own CPU convolution kernel
    refuses NCHW (oneDNN builds, the default on x86 Linux, accept it: run without them)."""
    backend_or_skip("tf")
    import keras
    assert keras.config.image_data_format() == "channels_last"
    code = """if True:
        import json, numpy as np, tensorflow as tf
        x, k = np.ones((1, 3, 8, 8), np.float32), np.ones((3, 3, 3, 4), np.float32)
        try:
            tf.nn.conv2d(x, k, 1, "VALID", data_format="NCHW")
            nchw = "accepted"
        except tf.errors.UnimplementedError as e:
            nchw = e.message
        nhwc = tf.nn.conv2d(x.transpose(0, 2, 3, 1), k, 1, "VALID").shape.as_list()
        print(json.dumps({"nchw": nchw, "nhwc": nhwc}))
    """
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nTensorFlow CPU, NCHW conv2d: {result['nchw']}")
    assert "only supports the NHWC tensor format on the CPU" in result["nchw"]
    assert result["nhwc"] == [1, 6, 6, 4]


def test_kernel_layouts(fw):
    """Conv kernels: PyTorch and Gluon (out, in, kh, kw), Keras (kh, kw, in, out); dense:
    PyTorch and Gluon (out, in), Keras (in, out). Each layer's output is the numpy
    cross-correlation (dense product) with its kernel read in that layout."""
    x = make_input((2, 3, 9, 8), seed=1).astype(np.float64)
    v = make_input((2, 4), seed=2).astype(np.float64)
    if fw == "torch":
        import torch
        conv, dense = torch.nn.Conv2d(3, 6, (3, 5)).double(), torch.nn.Linear(4, 7).double()
        with torch.no_grad():
            y, z = conv(torch.from_numpy(x)).numpy(), dense(torch.from_numpy(v)).numpy()
        kernel, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        weight, dense_bias = dense.weight.detach().numpy(), dense.bias.detach().numpy()
        canonical, dense_canonical = kernel, weight
    elif fw == "tf":
        import keras
        conv = keras.layers.Conv2D(6, (3, 5), bias_initializer="random_normal", dtype="float64")
        dense = keras.layers.Dense(7, bias_initializer="random_normal", dtype="float64")
        y, z = nchw(conv(nhwc(x))), np.asarray(dense(v))
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in (conv.kernel, conv.bias))
        weight, dense_bias = (keras.ops.convert_to_numpy(w) for w in (dense.kernel, dense.bias))
        canonical, dense_canonical = kernel.transpose(3, 2, 0, 1), weight.T
    else:
        mx, gluon, _ = _mx()
        conv = gluon.nn.Conv2D(6, (3, 5), in_channels=3, bias_initializer="normal")
        dense = gluon.nn.Dense(7, in_units=4, bias_initializer="normal")
        for block in (conv, dense):
            block.initialize()
            block.cast("float64")
        y = conv(mx.nd.array(x, dtype="float64")).asnumpy()
        z = dense(mx.nd.array(v, dtype="float64")).asnumpy()
        kernel, bias = conv.weight.data().asnumpy(), conv.bias.data().asnumpy()
        weight, dense_bias = dense.weight.data().asnumpy(), dense.bias.data().asnumpy()
        canonical, dense_canonical = kernel, weight
    want = {"torch": ((6, 3, 3, 5), (7, 4)), "tf": ((3, 5, 3, 6), (4, 7)),
            "mxnet": ((6, 3, 3, 5), (7, 4))}[fw]
    print(f"\n{fw}: conv kernel {kernel.shape}, dense weight {weight.shape}")
    assert (kernel.shape, weight.shape) == want
    conv_gap = diff(y, ref_np.conv2d(x, canonical, bias, padding=0))[1]
    dense_gap = diff(z, v @ dense_canonical.T + dense_bias)[1]
    print(f"conv vs numpy: {conv_gap:.2e}, dense vs numpy: {dense_gap:.2e}")
    assert conv_gap <= 1e-12 and dense_gap <= 1e-12
    assert bias.any() and dense_bias.any()  # the biases took part


# -- BatchNorm -------------------------------------------------------------------------------------
C = 3
STATS = {"gamma": np.array([0.5, 1.0, 1.5]), "beta": np.array([0.1, -0.2, 0.3]),
         "running_mean": np.array([0.2, -0.1, 0.0]), "running_var": np.array([0.02, 0.05, 0.01])}


def default_bn(fw: str):
    """A BatchNorm over 3 channels with every default, its stats set to STATS (float32):
    ``(layer, eps, momentum, eval-mode function of NCHW numpy)``."""
    s = {k: v.astype(np.float32) for k, v in STATS.items()}
    if fw == "torch":
        import torch
        bn = torch.nn.BatchNorm2d(C).eval()
        with torch.no_grad():
            for name, attr in (("gamma", "weight"), ("beta", "bias"), ("running_mean",) * 2,
                               ("running_var",) * 2):
                getattr(bn, attr).copy_(torch.from_numpy(s[name]))

        def run(x):
            with torch.no_grad():
                return bn(torch.from_numpy(x)).numpy()
        return bn, bn.eps, bn.momentum, run
    if fw == "tf":
        import keras
        bn = keras.layers.BatchNormalization()
        bn.build((None, 4, 4, C))
        for name, attr in (("gamma",) * 2, ("beta",) * 2, ("running_mean", "moving_mean"),
                           ("running_var", "moving_variance")):
            getattr(bn, attr).assign(s[name])
        return bn, bn.epsilon, bn.momentum, lambda x: nchw(bn(nhwc(x), training=False))
    mx, gluon, _ = _mx()
    bn = gluon.nn.BatchNorm(in_channels=C)
    bn.initialize()
    for name in STATS:
        getattr(bn, name).set_data(mx.nd.array(s[name]))
    return bn, bn._kwargs["eps"], bn._kwargs["momentum"], lambda x: bn(mx.nd.array(x)).asnumpy()


def test_batchnorm_default_eps(fw):
    """Default eps: PyTorch 1e-5, Keras 1e-3, Gluon 1e-5. With small running variances
    (0.01..0.05) the eval output is the BatchNorm formula with that eps, and 2% or more away
    from the formula with the other frameworks' eps."""
    _, eps, _, run = default_bn(fw)
    want, other = {"torch": (1e-5, 1e-3), "tf": (1e-3, 1e-5), "mxnet": (1e-5, 1e-3)}[fw]
    x = make_input((2, C, 4, 4), seed=3)
    y = run(x)
    stats = [STATS[k] for k in ("gamma", "beta", "running_mean", "running_var")]
    same, off = (diff(y, ref_np.batch_norm(x, *stats, eps=e))[1] for e in (want, other))
    print(f"\n{fw}: eps {eps:g}; vs the formula with eps {want:g}: {same:.2e}, with {other:g}: "
          f"{off:.2e}")
    assert eps == pytest.approx(want, rel=1e-6)
    assert same <= 1e-6 and off > 2e-2


def train_bn(fw: str, x: np.ndarray, momentum: float):
    """One training batch through a fresh BatchNorm(3) given the framework's own ``momentum``
    argument: (running mean, running var) after the forward pass and after the backward pass."""
    if fw == "torch":
        import torch
        bn = torch.nn.BatchNorm2d(C, momentum=momentum).double().train()
        xt = torch.from_numpy(x).requires_grad_()
        y = bn(xt)
        stats = lambda: (bn.running_mean.numpy().copy(), bn.running_var.numpy().copy())  # noqa
        forward = stats()
        y.sum().backward()
        return forward, stats()
    if fw == "tf":
        import keras
        import tensorflow as tf
        bn = keras.layers.BatchNormalization(momentum=momentum, dtype="float64")
        xt = tf.Variable(nhwc(x))
        stats = lambda: tuple(keras.ops.convert_to_numpy(v).copy()  # noqa: E731
                              for v in (bn.moving_mean, bn.moving_variance))
        with tf.GradientTape() as tape:
            y = bn(xt, training=True)
            forward = stats()
            loss = tf.reduce_sum(y)
        tape.gradient(loss, xt)
        return forward, stats()
    mx, gluon, autograd = _mx()
    bn = gluon.nn.BatchNorm(momentum=momentum, in_channels=C)
    bn.initialize()
    bn.cast("float64")
    xa = mx.nd.array(x, dtype="float64")
    xa.attach_grad()
    stats = lambda: (bn.running_mean.data().asnumpy(), bn.running_var.data().asnumpy())  # noqa
    with autograd.record(train_mode=True):
        y = bn(xa)
    y.wait_to_read()
    forward = stats()
    y.backward()
    return forward, stats()


BATCH = (make_input((4, C, 5, 5), seed=4).astype(np.float64) * 2 + 1)  # n = 100 per channel
MEAN, BIASED, UNBIASED = (BATCH.mean(axis=(0, 2, 3)), BATCH.var(axis=(0, 2, 3)),
                          BATCH.var(axis=(0, 2, 3), ddof=1))


def test_batchnorm_momentum_meaning(fw):
    """``momentum`` defaults to 0.1 in PyTorch, 0.99 in Keras, 0.9 in Gluon; PyTorch's is the
    weight of the new batch, Keras's and Gluon's the weight of the old value: with 0.25 and a
    running mean starting at 0, one batch gives 0.25 * mean in PyTorch, 0.75 * mean in the
    other two."""
    default = default_bn(fw)[2]
    _, (running_mean, _) = train_bn(fw, BATCH, 0.25)
    new_weight = {"torch": 0.25, "tf": 0.75, "mxnet": 0.75}[fw]
    gap = diff(running_mean, new_weight * MEAN)[1]
    print(f"\n{fw}: default momentum {default:g}; momentum=0.25 gives running mean "
          f"{running_mean.round(4)} = {new_weight} * batch mean (max rel {gap:.1e})")
    assert default == pytest.approx({"torch": 0.1, "tf": 0.99, "mxnet": 0.9}[fw])
    assert gap <= 1e-6
    assert diff(running_mean, (1 - new_weight) * MEAN)[1] > 0.5  # and not the other meaning


def test_running_variance_is_unbiased_only_in_pytorch(fw):
    """The running variance moves toward the batch variance, unbiased (/(n-1)) in PyTorch,
    biased (/n) in Keras and Gluon: n = 100 values per channel, so they differ by 1%."""
    _, (_, running_var) = train_bn(fw, BATCH, 0.25)
    new = {"torch": 0.25, "tf": 0.75, "mxnet": 0.75}[fw]   # weight of the batch (see above)
    unbiased, biased = ((1 - new) + new * v for v in (UNBIASED, BIASED))
    want, other = (unbiased, biased) if fw == "torch" else (biased, unbiased)
    same, off = diff(running_var, want)[1], diff(running_var, other)[1]
    print(f"\n{fw}: running var vs {'unbiased' if fw == 'torch' else 'biased'} update {same:.1e},"
          f" vs the other {off:.1e}")
    assert same <= 1e-6 and off > 1e-3


def test_running_statistics_move_in_forward_except_in_gluon(fw):
    """PyTorch and Keras update the running statistics in the training-mode forward pass;
    Gluon leaves them there and updates them in the backward pass."""
    (mean_fwd, var_fwd), (mean_bwd, var_bwd) = train_bn(fw, BATCH, 0.25)
    moved_in_forward = bool(np.abs(mean_fwd).max() > 0.1 and np.abs(var_fwd - 1).max() > 0.1)
    print(f"\n{fw}: running mean after forward {mean_fwd.round(4)}, after backward "
          f"{mean_bwd.round(4)}")
    assert moved_in_forward == (fw != "mxnet")
    if fw == "mxnet":
        assert not mean_fwd.any() and (var_fwd == 1).all()  # still the initial 0 and 1
    else:
        assert np.array_equal(mean_fwd, mean_bwd) and np.array_equal(var_fwd, var_bwd)
    assert np.abs(mean_bwd).max() > 0.1                       # all three have moved by now


# -- optimizers ------------------------------------------------------------------------------------
W0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.3, -0.1, 0.2]), np.array([-0.2, 0.4, 0.1]), np.array([0.1, 0.1, -0.3])]
LR, WD = 0.1, 0.1


def sgd_reference(momentum: float, coupled: bool) -> np.ndarray:
    """Three SGD steps on W0 with the fixed GRADS: weight decay added to the gradient (coupled,
    PyTorch's L2) or applied to the weight outside the momentum (decoupled)."""
    w, buf = W0.copy(), np.zeros(3)
    for i, g in enumerate(GRADS):
        if coupled:
            d = g + WD * w
            buf = d if i == 0 else momentum * buf + d
            w = w - LR * buf
        else:
            w = w - LR * WD * w
            buf = momentum * buf - LR * g
            w = w + buf
    return w


def framework_sgd(fw: str, momentum: float) -> np.ndarray:
    """The framework's own SGD with weight decay WD, three steps with gradients GRADS."""
    if fw == "torch":
        import torch
        p = torch.nn.Parameter(torch.from_numpy(W0.copy()))
        opt = torch.optim.SGD([p], lr=LR, momentum=momentum, weight_decay=WD)
        for g in GRADS:
            p.grad = torch.from_numpy(g.copy())
            opt.step()
        return p.detach().numpy()
    if fw == "tf":
        import keras
        v = keras.Variable(W0, dtype="float64")
        opt = keras.optimizers.SGD(learning_rate=LR, momentum=momentum, weight_decay=WD)
        for g in GRADS:
            opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)])
        return keras.ops.convert_to_numpy(v)
    mx, gluon, autograd = _mx()
    p = gluon.Parameter("w", shape=(3,), dtype="float64")
    p.initialize()
    p.set_data(mx.nd.array(W0, dtype="float64"))
    trainer = gluon.Trainer([p], "sgd", {"learning_rate": LR, "momentum": momentum, "wd": WD})
    for g in GRADS:
        with autograd.record():
            loss = (p.data() * mx.nd.array(g, dtype="float64")).sum()  # d loss / d w = g
        loss.backward()
        trainer.step(1)
    return p.data().asnumpy()


def test_sgd_weight_decay_is_coupled_except_in_keras(fw):
    """PyTorch's SGD(weight_decay) and Gluon's sgd wd add wd * w to the gradient (inside the
    momentum); Keras's SGD(weight_decay) shrinks the weight outside it. Without momentum the
    two are one update; with momentum 0.9 they part."""
    coupled = fw != "tf"
    for momentum in (0.0, 0.9):
        w = framework_sgd(fw, momentum)
        want, other = sgd_reference(momentum, coupled), sgd_reference(momentum, not coupled)
        same, off = diff(w, want)[1], diff(w, other)[1]
        print(f"\n{fw}, momentum {momentum}: vs {'coupled' if coupled else 'decoupled'} "
              f"{same:.1e}, vs the other {off:.1e}")
        assert same <= 1e-7   # Keras holds lr and momentum in float32
        assert (off > 1e-3) if momentum else (off <= 1e-7)


def test_keras_sgd_keeps_the_learning_rate_in_float32():
    """A float64 variable updated by Keras's SGD(0.05) moves by float32(0.05) * g, not 0.05 * g:
    the learning rate is a float32 variable (why float64 Keras and PyTorch agree to ~1e-10,
    not ~1e-15)."""
    backend_or_skip("tf")
    import keras
    v = keras.Variable(np.ones(3), dtype="float64")
    opt = keras.optimizers.SGD(learning_rate=0.05)
    g = np.array([1.0, 2.0, 3.0])
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)])
    got = keras.ops.convert_to_numpy(v)
    assert str(opt.learning_rate.dtype) == "float32"
    assert np.array_equal(got, 1 - np.float64(np.float32(0.05)) * g)
    assert not np.array_equal(got, 1 - 0.05 * g)


def test_tensorflow_strided_1x1_filter_gradient_corrupts_the_heap():
    """TensorFlow 2.21's oneDNN Conv2DBackpropFilter for a 1x1 stride-2 convolution on an even
    input with few channels (3 -> 6 on 64x64: d2l's Residual(6, use_1x1conv=True, strides=2)
    trained on RGB) writes outside its buffers: the process dies of "malloc(): corrupted top
    size" or a segmentation fault, in a later, unrelated allocation. Its own Eigen kernels
    (TF_ENABLE_ONEDNN_OPTS=0) do not. Fresh processes, since the damage is the process's."""
    backend_or_skip("tf")
    from common.tools.traps import strided_1x1_crashes
    onednn, eigen = strided_1x1_crashes(onednn=True, suite=False), strided_1x1_crashes(False, False)
    print(f"\nprocesses killed, of 3: oneDNN {onednn}, Eigen {eigen}")
    assert onednn >= 2 and eigen == 0
