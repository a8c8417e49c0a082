"""Measure each difference between the frameworks that the suite fixes or exposes.

``resnet-parity traps`` prints these figures; the README's table "What differs between the
frameworks" is its ``--markdown`` output, so the numbers are regenerated, not copied. Each
figure is ``max|a-b| / max|b|`` unless the line says otherwise, on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from ..core.compare import Row, compare, diff, global_floor, worst
from ..core.spec import (
    ARCHITECTURES,
    ConvNeXtSpec,
    ResidualSpec,
    ResNetSpec,
    architecture,
    param_shapes,
    resnet18_spec,
)
from ..core.state import random_state
from ..core.step_parity import bn_counts, labels
from .command import EXIT_OK, CliError, load_backends, progress_log
from .d2l_reference import keras_adapter, keras_d2l, torch_adapter, torch_net
from .registry import BACKEND_NAMES, get_backend, install_hint

RESIDUAL = ResidualSpec(3, 6, use_1x1conv=True, strides=2)


@dataclass(frozen=True)
class Trap:
    """One row of the trap table, without its measurement: what each framework does, what the
    suite does about it, and the test that pins the frameworks' behaviour
    (``parity_tests/<file>.py::<test>``, marked ``trap``)."""

    trap: str
    pytorch: str
    keras: str
    gluon: str
    fix: str
    test: str


@dataclass(frozen=True)
class Finding:
    """A :class:`Trap` measured on this machine: ``measured`` for the table, and the same
    numbers in ``figures`` (name -> value) for whoever checks them."""

    trap: str
    pytorch: str
    keras: str
    gluon: str
    measured: str
    fix: str
    test: str
    figures: dict[str, float] = field(default_factory=dict, hash=False)


_T = "parity_tests/"
TRAPS: list[Trap] = [
    Trap("the whole network", "d2l code", "d2l code as printed", "d2l code",
         "the fixes below", _T + "test_d2l_traps.py::test_d2l_keras_resnet18_is_not_d2l_pytorch"),
    Trap("activation layout", "NCHW", "NHWC (TensorFlow's own CPU kernels need it)", "NCHW",
         "interface speaks NCHW; resnet_tf transposes at the edge only",
         _T + "test_framework_traps.py::test_tensorflow_cpu_convolution_is_nhwc_only"),
    Trap("kernel layout", "(out, in, kh, kw); dense (out, in)",
         "(kh, kw, in, out); dense (in, out)", "as PyTorch",
         "converted in export/load; round trips bit-exact",
         _T + "test_framework_traps.py::test_kernel_layouts"),
    Trap("stride-2 'same' padding", "padding=k//2 each side",
         "extra row/column at bottom/right when the size is even", "as PyTorch",
         "PaddedConv2D: symmetric zero padding, then 'valid'",
         _T + "test_d2l_traps.py::test_same_padding_is_asymmetric_at_stride_2_on_even_sizes"),
    Trap("max-pool padding", "-inf", "'same' asymmetric; ZeroPadding2D pads zeros", "-inf",
         "PaddedMaxPooling2D pads -inf",
         _T + "test_keras_idioms.py::test_keras_max_pool_padding_is_not_pytorchs"),
    Trap("BatchNorm eps", "1e-5", "1e-3 default", "1e-5", "the spec carries eps",
         _T + "test_framework_traps.py::test_batchnorm_default_eps"),
    Trap("BatchNorm momentum", "0.1 = weight of the new batch",
         "0.99 default = weight of the old value", "0.9 = weight of the old value",
         "the spec holds PyTorch's convention; Keras and Gluon get 1 - m",
         _T + "test_framework_traps.py::test_batchnorm_momentum_meaning"),
    Trap("running variance", "unbiased batch variance", "biased", "biased",
         "exposed as Backend.convention; compared after exact conversion",
         _T + "test_framework_traps.py::test_running_variance_is_unbiased_only_in_pytorch"),
    Trap("update timing", "training forward", "training forward", "backward pass only",
         "forward/activations never change the model; sgd_step updates in all three",
         _T + "test_framework_traps.py::test_running_statistics_move_in_forward_except_in_gluon"),
    Trap("default init", "kaiming-uniform", "glorot-uniform", "uniform(-0.07, 0.07)",
         "parity never depends on init: weights are copied",
         _T + "test_contract.py::test_default_init_is_each_frameworks_own"),
    Trap("weight decay", "coupled L2 (in the gradient)",
         "SGD(weight_decay) decoupled (outside momentum)", "wd coupled",
         "sgd_step adds wd*w to Keras gradients: one trajectory in all three",
         _T + "test_framework_traps.py::test_sgd_weight_decay_is_coupled_except_in_keras"),
    Trap("float32 training", "float32", "float32", "float32",
         "semantics proven in float64 (~1e-12); float32 bounds measured",
         _T + "test_step_parity.py::test_float32_training_is_not_float64"),
    Trap("oneDNN float32 convolutions", "oneDNN; ~7e-7 of float64",
         "oneDNN by default on x86 (TF_ENABLE_ONEDNN_OPTS): about twice Eigen's rounding",
         "MKLDNN: about twice its native kernels' rounding",
         "check --oracle measures each against float64; README: TF_ENABLE_ONEDNN_OPTS=0 for "
         "float32 training that tracks float64 as PyTorch's does",
         _T + "test_oracle.py::test_tensorflow_onednn_convolutions_double_float32_rounding"),
    Trap("oneDNN strided 1x1 filter gradient", "-",
         "TF 2.21's oneDNN Conv2DBackpropFilter for a 1x1 stride-2 conv on an even input with few "
         "channels (d2l's Residual(6, use_1x1conv=True, strides=2) on RGB) corrupts the heap",
         "-",
         "resnet_tf's PaddedConv2D takes a strided 1x1 conv's filter gradient at stride 1 on "
         "the subsampled input (the same sum); d2l's Keras code as printed needs TF_ENABLE_ONEDNN_OPTS=0",
         _T + "test_framework_traps.py::test_tensorflow_strided_1x1_filter_gradient_corrupts_the_heap"),
    Trap("GPU float32", "TF32 may be on", "TF32 may be on", "tensor cores, autotune",
         "device='gpu' turns TF32 off", _T + "test_gpu.py::test_parity_mode_turns_tf32_off"),
    Trap("numpy", "any", "any", "mxnet 1.9.1 calls np.bool",
         "resnet_mxnet/_compat.py adds the alias only if missing; numpy < 2",
         _T + "test_gluon_idioms.py::test_bare_mxnet_import_fails_on_numpy_1_24_and_later"),
]


# The family's traps: what torchvision, Hugging Face, keras.applications and GluonCV each mean
# by "ResNet-50". Measured on ``--arch`` (resnet50 by default) with the suite's PyTorch model.
FAMILY_TRAPS: list[Trap] = [
    Trap("bottleneck stride (v1 vs v1.5)", "torchvision: on the 3x3 (v1.5)",
         "keras.applications: on the first 1x1 (v1)",
         "GluonCV v1: first 1x1; v1b: 3x3", "the spec's stride_at; recognised from the file",
         _T + "test_family_traps.py::test_keras_applications_strides_the_first_1x1"),
    Trap("BatchNorm eps 1.001e-5", "1e-5 (torchvision, Hugging Face)",
         "keras.applications ResNet: 1.001e-5", "1e-5", "the spec carries eps; keras-resnet* "
         "members say 1.001e-5", _T + "test_family_traps.py::test_keras_applications_bn_eps"),
    Trap("conv bias", "torchvision, Hugging Face: none", "keras.applications: every conv",
         "GluonCV v1: the bottleneck's 1x1s only", "conv_bias on or off per kind of conv",
         _T + "test_family_traps.py::test_conv_bias_differs_between_model_zoos"),
    Trap("Hugging Face classifier", "classifier = Sequential(Flatten, Linear): keys "
         "classifier.1.*", "-", "-", "the Hugging Face format maps classifier.1 to head.fc and "
         "refuses missing keys (PyTorch's strict=False would not)",
         _T + "test_family_traps.py::test_hugging_face_classifier_sits_at_index_1"),
    Trap("classifier output", "logits", "keras.applications: softmax probabilities by default",
         "logits", "the suite's head gives logits; compare probabilities after a softmax",
         _T + "test_family_traps.py::test_keras_applications_outputs_probabilities"),
]


# ConvNeXt's traps: the layers where frameworks disagree most quietly. Measured on ``--arch``
# (convnext_tiny by default) with the suite's PyTorch model, and on the layers themselves.
CONVNEXT_TRAPS: list[Trap] = [
    Trap("GELU exact vs tanh", "nn.GELU(): exact; approximate='tanh' on request",
         "keras.activations.gelu: exact; keras.ops.gelu: tanh by default; TF's kernel is 5e-9 "
         "off in float64", "nn.GELU: exact only; its kernel 6e-7 off in float64, erf's "
         "gradient 3e-8", "the spec's gelu; Keras and Gluon GELU written with their own erf",
         _T + "test_convnext_traps.py::test_gelu_defaults_differ"),
    Trap("LayerNorm eps", "nn.LayerNorm: 1e-5", "LayerNormalization: 1e-3",
         "nn.LayerNorm: 1e-5", "ConvNeXt's 1e-6 passed everywhere; Hugging Face's "
         "layer_norm_eps (1e-12 in seed 001) is the head's alone: head_ln_eps",
         _T + "test_convnext_traps.py::test_layer_norm_default_eps"),
    Trap("LayerNorm axis", "nn.LayerNorm(C) wants channels last (raises on NCHW unless W = C)",
         "axis=-1: channels in NHWC", "axis=-1 by default: on NCHW that is the width",
         "channels-last LayerNorm in blocks; LayerNorm2d (PyTorch), axis=1 (Gluon) on NCHW",
         _T + "test_convnext_traps.py::test_layer_norm_axis"),
    Trap("depthwise kernel layout", "Conv2d(groups=C): (C, 1, kh, kw)",
         "DepthwiseConv2D: (kh, kw, C, 1); Conv2D(groups=C), keras.applications': (kh, kw, 1, C)",
         "Conv2D(groups=C): (C, 1, kh, kw)", "kind 'dwconv' with its own permutation in "
         "resnet_tf._layout", _T + "test_convnext_traps.py::test_depthwise_kernel_layouts"),
    Trap("layer scale shape", "torchvision: (C, 1, 1); Hugging Face: (C,)",
         "keras.applications LayerScale: (C,)", "-", "canonical (C,); the torchvision format "
         "reshapes and checks it", _T + "test_convnext_traps.py::test_layer_scale_shapes"),
]


def _input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def d2l_keras_residual_rows(size: int, eps: Optional[float]) -> dict[str, Row]:
    """d2l's Keras ``Residual(6, use_1x1conv=True, strides=2)`` as printed, against the suite's
    PyTorch one with the same weights; ``eps`` overrides Keras's default BatchNorm eps."""
    torch_be, tf_be = get_backend("torch"), get_backend("tf")
    state = random_state(RESIDUAL, seed=size)
    x = _input((2, 3, size, size), seed=size)
    ref = torch_be.build(RESIDUAL)
    torch_be.load_state(ref, state)
    blk = keras_d2l().Residual(6, use_1x1conv=True, strides=2)
    blk(np.zeros((1, size, size, 3), np.float32))
    if eps is not None:
        blk.bn1.epsilon = blk.bn2.epsilon = eps
    tf_be.load_state(tf_be.register(blk, RESIDUAL), state)
    return {r.layer: r for r in compare(tf_be.activations(blk, x), torch_be.activations(ref, x))}


def d2l_resnet18_logits_gap() -> tuple[float, float, float]:
    """Logits, ResNet-18, 96x96: (d2l Keras vs d2l PyTorch, suite Keras vs suite PyTorch,
    suite PyTorch vs d2l PyTorch), all loaded with one random state."""
    import torch

    torch_be, tf_be = get_backend("torch"), get_backend("tf")
    spec, x = resnet18_spec(), _input((2, 1, 96, 96), seed=96)
    state = random_state(spec, 0)
    tnet = torch_net().eval()
    torch_be.load_state(torch_be.register(torch_adapter(tnet), spec), state)
    knet = keras_d2l().net()
    knet(np.zeros((1, 96, 96, 1), np.float32))
    tf_be.load_state(tf_be.register(keras_adapter(knet), spec), state)
    with torch.no_grad():
        d2l_torch = tnet(torch.from_numpy(x)).numpy()
    d2l_keras = np.asarray(knet(x.transpose(0, 2, 3, 1), training=False))
    models = {}
    for be in (torch_be, tf_be):
        models[be.name] = be.build(spec)
        be.load_state(models[be.name], state)
    suite_torch = torch_be.forward(models["torch"], x)
    suite_tf = tf_be.forward(models["tf"], x)
    return (diff(d2l_keras, d2l_torch)[1], diff(suite_tf, suite_torch)[1],
            diff(suite_torch, d2l_torch)[1])


def kernel_layout_gap() -> float:
    """A conv kernel loaded into Keras by reshape (as if the layouts were the same) instead of
    the transpose the backend does: the conv output's relative error."""
    import keras

    from resnet_tf import PaddedConv2D
    w = random_state(RESIDUAL)["conv1.weight"]          # (out, in, kh, kw)
    x = _input((2, 8, 8, 3))
    layer = PaddedConv2D(6, 3, use_bias=False)
    layer.build(x.shape)
    outs = []
    for kernel in (w.transpose(2, 3, 1, 0), w.reshape(3, 3, 3, 6)):
        layer.kernel.assign(kernel)
        outs.append(keras.ops.convert_to_numpy(layer(x)))
    return diff(outs[1], outs[0])[1]


def max_pool_zero_padding_gap() -> float:
    """Zero padding instead of -inf before a 3x3/2 max pool, on a signed input, against torch."""
    import keras
    import torch
    x = _input((2, 4, 9, 9))
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, padding=1).numpy()
    padded = keras.layers.ZeroPadding2D(1)(x.transpose(0, 2, 3, 1))
    zero = keras.layers.MaxPooling2D(3, 2)(padded)
    return diff(keras.ops.convert_to_numpy(zero).transpose(0, 3, 1, 2), ref)[1]


def bn_momentum_gap() -> float:
    """Keras BatchNormalization(momentum=0.1) -- PyTorch's number, Keras's meaning -- against
    PyTorch's BatchNorm2d(momentum=0.1): running mean after one training batch."""
    import keras
    import torch
    x = _input((4, 3, 5, 5)) + 2.0
    bn = torch.nn.BatchNorm2d(3, momentum=0.1)
    bn.train()(torch.from_numpy(x))
    k = keras.layers.BatchNormalization(momentum=0.1)
    k(x.transpose(0, 2, 3, 1), training=True)
    return diff(keras.ops.convert_to_numpy(k.moving_mean), bn.running_mean.numpy())[1]


def _after_step(name: str, unit, state, x, y, steps=1, **kw) -> dict[str, np.ndarray]:
    be = get_backend(name)
    model = be.build(unit, dtype="float64")
    be.load_state(model, state)
    for _ in range(steps):
        be.sgd_step(model, x, y, 0.05, **kw)
    return be.export_state(model)


def running_var_gap() -> tuple[float, int]:
    """Raw running variance after one SGD step, Keras vs PyTorch (float64, ResNet-18 32x32,
    batch 8), and the per-channel count n at the worst layer (the ratio is about 1/(n-1))."""
    spec = resnet18_spec()
    state, x = random_state(spec, 11), _input((8, 1, 32, 32), 12)
    y = labels(spec, 8)
    a, b = _after_step("tf", spec, state, x, y), _after_step("torch", spec, state, x, y)
    names = [k for k in b if k.endswith("running_var")]
    w = worst(compare(a, b, names=names))
    counts = bn_counts(spec, get_backend("torch").activations(
        get_backend("torch").build(spec), x))
    return w.max_rel, counts[w.layer.rsplit(".", 1)[0]]


def gluon_forward_update() -> tuple[float, float]:
    """How far one training-mode forward (no backward) moves running_mean: (PyTorch, Gluon)."""
    import torch

    from resnet_mxnet._compat import autograd, mx
    from resnet_mxnet.blocks import batch_norm
    x = _input((4, 3, 5, 5)) + 2.0
    t = torch.nn.BatchNorm2d(3)
    t.train()(torch.from_numpy(x))
    g = batch_norm(3)
    g.initialize()
    with autograd.train_mode():
        g(mx.nd.array(x))
    return float(np.abs(t.running_mean.numpy()).max()), float(np.abs(g.running_mean.data().asnumpy()).max())


def default_init_std() -> dict[str, float]:
    """Standard deviation of each framework's default init for a 3x3 conv, 64 -> 64."""
    spec = ResidualSpec(64, 64)
    return {name: float(np.std(get_backend(name).export_state(
        get_backend(name).build(spec))["conv1.weight"])) for name in ("torch", "tf", "mxnet")}


def weight_decay_gap(momentum: float) -> float:
    """Keras's own SGD(weight_decay) -- decoupled -- against PyTorch's coupled weight decay,
    5 steps, float64, a stride-2 Residual."""
    import keras
    unit = ResidualSpec(8, 16, use_1x1conv=True, strides=2)
    state, x = random_state(unit, 11), _input((4, 8, 9, 9), 12)
    y = labels(unit, 4)
    ref = _after_step("torch", unit, state, x, y, steps=5, momentum=momentum, weight_decay=0.01)
    tf_be = get_backend("tf")
    model = tf_be.build(unit, dtype="float64")
    tf_be.load_state(model, state)
    opt = keras.optimizers.SGD(learning_rate=0.05, momentum=momentum, weight_decay=0.01)
    for _ in range(5):
        _, variables, grads = tf_be._loss_and_grads_tf(model, x, y)
        opt.apply_gradients(zip(grads, variables))
    params = [k for k in ref if not k.endswith(("running_mean", "running_var"))]
    return worst(compare(tf_be.export_state(model), ref, names=params)).max_rel


def float32_gradient_gap() -> float:
    """PyTorch's float32 gradients against its own float64 ones (ResNet-18, 96x96 images in
    [0, 1), batch 8)."""
    spec, be = resnet18_spec(), get_backend("torch")
    rng = np.random.default_rng(0)
    state, x = random_state(spec, 0), rng.uniform(0, 1, (8, 1, 96, 96)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    grads = []
    for dtype in ("float32", "float64"):
        model = be.build(spec, dtype=dtype)
        be.load_state(model, state)
        grads.append(be.gradients(model, x, y)[1])
    return worst(compare(grads[0], grads[1], floor=global_floor(grads[1]))).max_rel


def float32_hyperparameters_gap() -> float:
    """float64 models, one SGD step at lr 0.05: Keras against PyTorch (Keras keeps lr in float32)."""
    unit = ResidualSpec(8, 8)
    state, x = random_state(unit, 1), _input((4, 8, 8, 8), 2)
    y = labels(unit, 4)
    a, b = _after_step("tf", unit, state, x, y), _after_step("torch", unit, state, x, y)
    params = [k for k in b if not k.endswith(("running_mean", "running_var"))]
    return worst(compare(a, b, names=params, floor=global_floor({k: b[k] for k in params}))).max_rel


_FLOAT32_ERROR = """
import json, numpy as np
from common import get_backend, random_state, resnet18_spec
spec = resnet18_spec(); state = random_state(spec, 0)
x = np.random.default_rng(0).standard_normal((2, 1, 40, 40)).astype(np.float32)
truth_be = get_backend("torch"); t = truth_be.build(spec, "float64")
truth_be.load_state(t, state); truth = truth_be.activations(t, x)
be = get_backend({framework!r}); m = be.build(spec); be.load_state(m, state)
acts = be.activations(m, x)
print(json.dumps(max(float(np.abs(acts[k] - v).max() / np.abs(v).max()) for k, v in truth.items())))
"""


def _child(code: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with ``env`` added (the frameworks read their switches at
    import), TensorFlow's log quiet."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def float32_error_in_child(framework: str, env: Optional[dict[str, str]] = None) -> float:
    """The worst layer of ``framework``'s float32 ResNet-18 (random weights and BatchNorm
    statistics, 2x1x40x40, eval mode) against PyTorch's float64 truth, in a fresh process with
    ``env`` added: TensorFlow reads TF_ENABLE_ONEDNN_OPTS, MXNet MXNET_MKLDNN_ENABLED, at import."""
    import json
    out = _child(_FLOAT32_ERROR.format(framework=framework), env)
    if out.returncode:
        raise RuntimeError(f"{framework} float32 error child failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def onednn_float32_gaps() -> dict[str, float]:
    """float32 error against the float64 truth: TensorFlow with oneDNN (its x86 default) and
    with Eigen, MXNet with and without MKLDNN, and PyTorch."""
    return {"tf_onednn": float32_error_in_child("tf", {"TF_ENABLE_ONEDNN_OPTS": "1"}),
            "tf_eigen": float32_error_in_child("tf", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
            "mxnet_mkldnn": float32_error_in_child("mxnet", {"MXNET_MKLDNN_ENABLED": "1"}),
            "mxnet_native": float32_error_in_child("mxnet", {"MXNET_MKLDNN_ENABLED": "0"}),
            "torch": float32_error_in_child("torch")}


_STRIDED_1X1 = """
import numpy as np, tensorflow as tf
from resnet_tf.blocks import PaddedConv2D
x = tf.constant(np.random.default_rng(2).standard_normal((4, 64, 64, 3)).astype(np.float32))
conv = PaddedConv2D(6, 1, strides=2)
y = conv(x)
for _ in range({iterations}):
    if {suite}:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x))
        tape.gradient(loss, conv.kernel)
    else:
        tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=conv.kernel.shape,
                                        out_backprop=tf.ones_like(y), strides=[1, 2, 2, 1],
                                        padding="VALID")
    heap = [bytearray(n) for n in range(16, 4096, 48)]  # small blocks: malloc meets the damage
"""


def strided_1x1_crashes(onednn: bool, suite: bool, runs: int = 3, iterations: int = 30) -> int:
    """Of ``runs`` fresh processes that each take ``iterations`` filter gradients of a 1x1 stride-2 conv,
    3 -> 6 channels on 4x64x64 (TensorFlow's raw op, or ``suite``: resnet_tf's PaddedConv2D
    under a GradientTape), how many died by a signal. Heap corruption shows only when malloc
    next meets the damaged block, so each step also allocates small blocks (with them, 8 of 8
    processes died on this machine; without, about 2 of 3)."""
    died = 0
    for _ in range(runs):
        out = _child(_STRIDED_1X1.format(suite=suite, iterations=iterations),
                     {"TF_ENABLE_ONEDNN_OPTS": str(int(onednn))})
        if out.returncode > 0:
            raise RuntimeError(f"strided 1x1 child failed: {out.stderr[-2000:]}")
        died += out.returncode < 0
    return died


def family_gaps(arch: str = "resnet50", size: int = 48) -> dict[str, float]:
    """Logits of ``arch`` (random weights and BatchNorm statistics, batch 2 at ``size``) when a
    file is read with the wrong assumption, relative to reading it right (suite's PyTorch):

    * ``stride_at``: the bottleneck stride on the other conv (bottleneck members only);
    * ``eps``: BatchNorm eps 1e-5 and 1.001e-5 swapped, with running variances 0.5..2 and,
      ``eps_small_var``, with them scaled to 5e-5..2e-4 (gammas scaled to match);
    * ``bias``: a file's conv biases dropped (read into a layout without them);
    * ``classifier``: the classifier left at a fresh random init (a ``strict=False`` load that
      missed ``classifier.1.*``).
    """
    be = get_backend("torch")
    spec = architecture(arch, num_classes=10)
    state = random_state(spec, seed=0)
    x = _input((2, spec.in_channels, size, size), seed=size)

    def logits(s: ResNetSpec, st: dict) -> np.ndarray:
        model = be.build(s)
        be.load_state(model, st)
        return be.forward(model, x)

    ref = logits(spec, state)
    out: dict[str, float] = {}
    if spec.block == "bottleneck":
        moved = dataclasses.replace(spec, stride_at="1x1" if spec.stride_at == "3x3" else "3x3")
        out["stride_at"] = diff(logits(moved, state), ref)[1]
    other_eps = dataclasses.replace(spec, bn_eps=1e-5 if spec.bn_eps != 1e-5 else 1.001e-5)
    out["eps"] = diff(logits(other_eps, state), ref)[1]
    # variances 1e-4 times smaller and gammas 1e-2 times smaller: the same activations, but eps
    # now weighs on every BatchNorm (float32 cannot tell 1e-5 from 1.001e-5 next to 1)
    scale = {"running_var": 1e-4, "gamma": 1e-2}
    small = {k: v * scale.get(k.rsplit(".", 1)[1], 1.0) for k, v in state.items()}
    out["eps_small_var"] = diff(logits(other_eps, small), logits(spec, small))[1]
    biased = dataclasses.replace(spec, conv_bias=True)
    with_bias = random_state(biased, seed=0)
    unbiased = dataclasses.replace(spec, conv_bias=False)
    kept = {k: v for k, v in with_bias.items() if k in param_shapes(unbiased)}
    out["bias"] = diff(logits(unbiased, kept), logits(biased, with_bias))[1]
    fresh = random_state(spec, seed=1)
    head = {k: fresh[k] if k.startswith("head.fc.") else v for k, v in state.items()}
    out["classifier"] = diff(logits(spec, head), ref)[1]
    return out


def family_findings(arch: str = "resnet50", log: Callable[[str], None] = lambda m: None
                    ) -> list[Finding]:
    """Measure every trap of :data:`FAMILY_TRAPS` on ``arch`` (PyTorch only; seconds)."""
    log(f"the family's traps on {arch} ...")
    g = family_gaps(arch)
    stride = (f"stride on the other conv: logits off by {g['stride_at']:.1e}"
              if "stride_at" in g else f"n/a ({arch} has basic blocks)")
    measured: dict[str, tuple[str, dict[str, float]]] = {
        "bottleneck stride (v1 vs v1.5)": (stride, {k: g[k] for k in ("stride_at",) if k in g}),
        "BatchNorm eps 1.001e-5": (
            f"eps swapped: logits off by {g['eps']:.1e} with running var 0.5..2 (float32 cannot "
            f"tell), {g['eps_small_var']:.1e} with running var ~1e-4",
            {"eps": g["eps"], "eps_small_var": g["eps_small_var"]}),
        "conv bias": (f"conv biases dropped: logits off by {g['bias']:.1e}", {"bias": g["bias"]}),
        "Hugging Face classifier": (
            f"classifier left at random init (strict=False): logits off by {g['classifier']:.1e}",
            {"classifier": g["classifier"]}),
        "classifier output": ("-", {}),
    }
    return [Finding(**asdict(t), measured=measured[t.trap][0], figures=measured[t.trap][1])
            for t in FAMILY_TRAPS]


def gelu_float64_errors() -> dict[str, float]:
    """Max abs error of each framework's own GELU kernel against the exact GELU in float64 on
    [-6, 6], and of MXNet's erf gradient (relative), the reasons the suite writes its own."""
    import math

    import tensorflow as tf
    import torch

    from resnet_mxnet._compat import autograd, mx
    x = np.linspace(-6, 6, 2001)
    exact = 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    xm = mx.nd.array(x, dtype="float64")
    xm.attach_grad()
    with autograd.record():
        erf = mx.nd.erf(xm)
    erf.backward()
    return {
        "torch": float(np.abs(torch.nn.functional.gelu(torch.from_numpy(x)).numpy() - exact).max()),
        "tf": float(np.abs(tf.nn.gelu(x, approximate=False).numpy() - exact).max()),
        "mxnet": float(np.abs(mx.nd.LeakyReLU(mx.nd.array(x, dtype="float64"), act_type="gelu")
                              .asnumpy() - exact).max()),
        "mxnet_erf_gradient": float(np.abs(xm.grad.asnumpy() / (2.0 / math.sqrt(math.pi)
                                                                  * np.exp(-x ** 2)) - 1).max()),
    }


def convnext_gaps(arch: str = "convnext_tiny", size: int = 64) -> dict[str, float]:
    """Logits of ``arch`` (random weights, batch 2 at ``size``) under each wrong assumption,
    relative to the right one (suite's PyTorch), and two layer-level figures:

    * ``tanh``: the tanh GELU for the exact one;
    * ``eps_keras``, ``eps_torch``: every LayerNorm at Keras's (1e-3) or PyTorch's default (1e-5);
    * ``eps_seed``: seed 001's 1e-12 read as every LayerNorm's eps, not the head's alone;
    * ``axis``: the stem's LayerNorm over (C, H, W) instead of C (its own output, relative);
    * ``dw_layout``, ``dw_keras``: :func:`depthwise_layout_gaps`.
    """
    import torch
    be = get_backend("torch")
    spec = architecture(arch, num_classes=10)
    state = random_state(spec, seed=0)
    x = _input((2, spec.in_channels, size, size), seed=size)

    def logits(s) -> np.ndarray:
        model = be.build(s)
        be.load_state(model, state)
        return be.forward(model, x)

    ref = logits(spec)
    out = {"tanh": diff(logits(dataclasses.replace(spec, gelu="tanh")), ref)[1]}
    for key, eps in (("eps_keras", 1e-3), ("eps_torch", 1e-5)):
        out[key] = diff(logits(dataclasses.replace(spec, ln_eps=eps, head_ln_eps=eps)), ref)[1]
    seed = dataclasses.replace(spec, head_ln_eps=1e-12)
    out["eps_seed"] = diff(logits(dataclasses.replace(seed, ln_eps=1e-12)), logits(seed))[1]
    model = be.build(spec)
    be.load_state(model, state)
    conv = torch.from_numpy(be.activations(model, x)["stem.conv"])
    right = model.stem.norm(conv).detach().numpy()
    whole = torch.nn.functional.layer_norm(conv, conv.shape[1:], eps=spec.ln_eps)
    gamma, beta = (state[f"stem.norm.{p}"][None, :, None, None] for p in ("gamma", "beta"))
    out["axis"] = diff(whole.numpy() * gamma + beta, right)[1]
    out["dw_layout"], out["dw_keras"] = depthwise_layout_gaps()
    return out


def depthwise_layout_gaps() -> tuple[float, float]:
    """Keras DepthwiseConv2D (kernel (kh, kw, C, 1)) loaded with a PyTorch depthwise kernel
    (C, 1, kh, kw) reshaped instead of transposed, and with a Keras Conv2D(groups=C) kernel
    (kh, kw, 1, C) reshaped: the conv output's relative error for each. The second is 0: the
    two Keras layouts hold their values in one order."""
    import keras
    w = random_state(architecture("convnext_tiny"))["stages.0.blocks.0.dwconv.weight"][:8]
    right = w.transpose(2, 3, 0, 1)                        # (kh, kw, C, 1)
    x = _input((2, 9, 9, 8))
    layer = keras.layers.DepthwiseConv2D(7, padding="same", use_bias=False)
    layer.build(x.shape)
    outs = []
    for kernel in (right, w.reshape(7, 7, 8, 1), w.transpose(2, 3, 1, 0).reshape(7, 7, 8, 1)):
        layer.kernel.assign(kernel)
        outs.append(keras.ops.convert_to_numpy(layer(x)))
    return diff(outs[1], outs[0])[1], diff(outs[2], outs[0])[1]


def convnext_findings(arch: str = "convnext_tiny", log: Callable[[str], None] = lambda m: None
                      ) -> list[Finding]:
    """Measure every trap of :data:`CONVNEXT_TRAPS` on ``arch`` (all three frameworks; seconds)."""
    log(f"ConvNeXt's traps on {arch} ...")
    g, k = convnext_gaps(arch), gelu_float64_errors()
    measured: dict[str, tuple[str, dict[str, float]]] = {
        "GELU exact vs tanh": (
            f"tanh for exact: logits off by {g['tanh']:.1e}; float64 kernels off the exact GELU: "
            f"PyTorch {k['torch']:.0e}, TF {k['tf']:.0e}, MXNet {k['mxnet']:.0e}; MXNet's erf "
            f"gradient {k['mxnet_erf_gradient']:.0e}", {"tanh": g["tanh"], **{
                f"float64_{n}": v for n, v in k.items()}}),
        "LayerNorm eps": (
            f"every LayerNorm at 1e-3 (Keras's default): logits off by {g['eps_keras']:.1e}; at "
            f"1e-5: {g['eps_torch']:.1e}; the seed's 1e-12 everywhere, not the head's alone: "
            f"{g['eps_seed']:.1e}", {k2: g[k2] for k2 in ("eps_keras", "eps_torch", "eps_seed")}),
        "LayerNorm axis": (f"stem LayerNorm over (C, H, W) instead of C: off by {g['axis']:.1e}",
                           {"axis": g["axis"]}),
        "depthwise kernel layout": (
            f"PyTorch's kernel reshaped into DepthwiseConv2D's: conv output off by "
            f"{g['dw_layout']:.1e}; Keras's two layouts reshaped into each other: "
            f"{g['dw_keras']:.0e} (one memory order)",
            {"dw_layout": g["dw_layout"], "dw_keras": g["dw_keras"]}),
        "layer scale shape": ("a (C,) scale under torchvision's name is refused by shape", {}),
    }
    return [Finding(**asdict(t), measured=measured[t.trap][0], figures=measured[t.trap][1])
            for t in CONVNEXT_TRAPS]


def findings(log: Callable[[str], None] = lambda m: None) -> list[Finding]:
    """Measure every trap of :data:`TRAPS` (needs all three frameworks; about half a minute on
    2 cores)."""
    log("d2l's code as printed ...")
    d2l_gap, suite_gap, same = d2l_resnet18_logits_gap()
    even, odd = d2l_keras_residual_rows(8, 1e-5), d2l_keras_residual_rows(9, 1e-5)
    eps = d2l_keras_residual_rows(9, None)
    log("layouts and padding ...")
    kernel, pool, momentum = kernel_layout_gap(), max_pool_zero_padding_gap(), bn_momentum_gap()
    log("BatchNorm ...")
    rv, n = running_var_gap()
    fwd_torch, fwd_gluon = gluon_forward_update()
    log("init, weight decay, precision ...")
    init = default_init_std()
    wd0, wd9 = weight_decay_gap(0.0), weight_decay_gap(0.9)
    f32 = float32_gradient_gap()
    hyper = float32_hyperparameters_gap()
    dnn = onednn_float32_gaps()
    crash = {"onednn": strided_1x1_crashes(True, False),
             "eigen": strided_1x1_crashes(False, False), "suite": strided_1x1_crashes(True, True)}
    measured: dict[str, tuple[str, dict[str, float]]] = {
        "the whole network": (
            f"d2l Keras vs d2l PyTorch logits: {d2l_gap:.1e}; suite Keras vs suite PyTorch: "
            f"{suite_gap:.1e}; suite PyTorch vs d2l PyTorch: {same:.1e}",
            {"d2l_keras_vs_d2l_torch": d2l_gap, "suite_keras_vs_suite_torch": suite_gap,
             "suite_torch_vs_d2l_torch": same}),
        "activation layout": ("-", {}),
        "kernel layout": (
            f"kernel reshaped instead of transposed: conv output off by {kernel:.1e}",
            {"reshaped_kernel": kernel}),
        "stride-2 'same' padding": (
            f"d2l Keras Residual conv1: {even['conv1'].max_rel:.1e} at 8x8, "
            f"{odd['conv1'].max_rel:.1e} at 9x9",
            {"conv1_even": even["conv1"].max_rel, "conv1_odd": odd["conv1"].max_rel}),
        "max-pool padding": (
            f"zero padding on a signed input: {pool:.1e} (none in ResNet, where the pool follows "
            "a ReLU)", {"zero_padding": pool}),
        "BatchNorm eps": (
            f"d2l Keras Residual bn1: {eps['bn1'].max_rel:.1e} (running var 0.5..2)",
            {"bn1": eps["bn1"].max_rel}),
        "BatchNorm momentum": (
            f"Keras momentum=0.1 taken literally: running mean off by {momentum:.1e}",
            {"literal_momentum": momentum}),
        "running variance": (
            f"after 1 step: {rv:.1e} (n = {n} values per channel; ratio ~ 1/(n-1))",
            {"running_var": rv, "values_per_channel": float(n)}),
        "update timing": (
            f"running mean after one training forward: PyTorch moved {fwd_torch:.2f}, "
            f"Gluon {fwd_gluon:.2f}", {"torch_moved": fwd_torch, "gluon_moved": fwd_gluon}),
        "default init": (
            "std of a 3x3 64->64 conv: " + ", ".join(f"{k} {v:.3f}" for k, v in init.items()),
            {f"std_{k}": v for k, v in init.items()}),
        "weight decay": (
            f"Keras SGD(weight_decay=0.01) vs PyTorch, 5 steps: {wd0:.1e} without momentum, "
            f"{wd9:.1e} with momentum 0.9", {"no_momentum": wd0, "momentum_0.9": wd9}),
        "float32 training": (
            f"PyTorch float32 vs its own float64 gradients: {f32:.1e} (BatchNorm backward); "
            f"float64 Keras vs PyTorch after one step: {hyper:.1e} (Keras keeps lr in float32)",
            {"torch_float32_vs_float64_gradients": f32, "keras_vs_torch_float64_step": hyper}),
        "oneDNN float32 convolutions": (
            f"ResNet-18 float32 worst layer vs float64: PyTorch {dnn['torch']:.1e}; TF oneDNN "
            f"{dnn['tf_onednn']:.1e}, Eigen {dnn['tf_eigen']:.1e}; Gluon MKLDNN "
            f"{dnn['mxnet_mkldnn']:.1e}, native {dnn['mxnet_native']:.1e}", dnn),
        "oneDNN strided 1x1 filter gradient": (
            f"processes killed by a signal, of 3: raw op with oneDNN {crash['onednn']}, with "
            f"Eigen {crash['eigen']}; the suite's PaddedConv2D with oneDNN {crash['suite']}",
            {k: float(v) for k, v in crash.items()}),
        "GPU float32": ("not measured by traps, which runs on the CPU", {}),
        "numpy": ("import mxnet fails on numpy >= 1.24", {}),
    }
    return [Finding(**asdict(t), measured=measured[t.trap][0], figures=measured[t.trap][1])
            for t in TRAPS]


def markdown(items: list[Finding]) -> str:
    lines = ["| trap | PyTorch | Keras / TF | Gluon | measured | what the suite does | test |",
             "|---|---|---|---|---|---|---|"]
    for f in items:
        lines.append(f"| {f.trap} | {f.pytorch} | {f.keras} | {f.gluon} | {f.measured} | {f.fix} "
                     f"| `{f.test}` |")
    return "\n".join(lines)


def run_traps(args: argparse.Namespace) -> int:
    missing = [n for n in BACKEND_NAMES if not load_backends([n], "cpu")[0]]
    if missing:
        raise CliError("traps compares all three frameworks; not installed: " + ", ".join(
            install_hint(n) for n in missing))
    log = progress_log(args.quiet)
    convnext = isinstance(architecture(args.arch), ConvNeXtSpec)
    items = (findings(log) + family_findings("resnet50" if convnext else args.arch, log)
             + convnext_findings(args.arch if convnext else "convnext_tiny", log))
    if args.markdown:
        print(markdown(items))
    else:
        for f in items:
            print(f"{f.trap}: {f.measured}\n    PyTorch: {f.pytorch} | Keras: {f.keras} | "
                  f"Gluon: {f.gluon}\n    suite: {f.fix} (test: {f.test})")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``traps``."""
    t = sub.add_parser(
        "traps", help="measure every difference between the frameworks (README table)",
        description="Measure, on this machine, each difference between PyTorch, Keras and Gluon "
                    "that the suite fixes or exposes: d2l's Keras padding and eps, BatchNorm "
                    "momentum and running variance, weight decay, initialisers, float32 "
                    "training; the ResNet family's (v1 vs v1.5 stride, eps 1.001e-5, conv "
                    "bias, Hugging Face's classifier), measured on --arch or resnet50; and "
                    "ConvNeXt's (GELU form, LayerNorm eps and axis, depthwise kernel layout, "
                    "layer scale shape), measured on --arch or convnext_tiny. Needs all three "
                    "frameworks.")
    t.add_argument("--arch", choices=list(ARCHITECTURES), metavar="NAME", default="resnet50",
                   help="a ResNet member for the family's traps (resnet50), or a ConvNeXt member "
                        "for ConvNeXt's (convnext_tiny): " + ", ".join(ARCHITECTURES))
    t.add_argument("--markdown", action="store_true", help="print the README's table")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    t.set_defaults(func=run_traps)

