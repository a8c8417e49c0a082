"""Every recorded activation is its layer's definition: each name ``activations`` records, in
every backend, equals float64 numpy (``numpy_reference``, written independently of the suite)
applied to the input, the canonical state and the activation(s) recorded before it. Parity
between frameworks cannot show this: a walk that recorded the wrong tensor would record it in
all three."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common import BottleneckSpec, ResNetSpec, compare, format_rows, random_state

from . import numpy_reference as ref_np
from .conftest import make_input


def reference_activations(spec: ResNetSpec, state: dict, acts: dict, x: np.ndarray) -> dict:
    """Each activation of ``spec`` computed in float64 numpy from the input, the canonical state
    and the *previously recorded* activations (so rounding never accumulates)."""
    S = lambda name: state[name].astype(np.float64)  # noqa: E731
    A = lambda name: acts[name].astype(np.float64)   # noqa: E731
    ref: dict[str, np.ndarray] = {}

    pad = "same" if spec.padding == "same" else None  # else k // 2 on each side

    def conv(layer, inp, stride, groups=1):
        bias = S(f"{layer}.bias") if f"{layer}.bias" in state else None
        return ref_np.conv2d(inp, S(f"{layer}.weight"), bias, stride, pad, groups=groups)

    def bn(layer, inp):
        return ref_np.batch_norm(inp, *(S(f"{layer}.{p}") for p in
                                        ("gamma", "beta", "running_mean", "running_var")),
                                 eps=spec.bn_eps)

    ref["stem.conv"] = conv("stem.conv", x, spec.stem_stride)
    ref["stem.bn"] = bn("stem.bn", A("stem.conv"))
    ref["stem.relu"] = ref_np.relu(A("stem.bn"))
    prev = "stem.relu"
    if spec.stem_pool:
        ref["stem.pool"] = ref_np.max_pool(A("stem.relu"), padding=1 if pad is None else pad)
        prev = "stem.pool"
    for i, stage in enumerate(spec.stages()):
        for j, r in enumerate(stage.residuals()):
            p = f"stages.{i}.{j}"
            if r.preact:                        # v2: BatchNorm, ReLU, conv; no ReLU after the sum
                if isinstance(r, BottleneckSpec):
                    s1, s3 = (r.strides, 1) if r.stride_at == "1x1" else (1, r.strides)
                    kinds = [(s1, 1), (s3, r.groups), (1, 1)]     # (stride, groups) per conv
                else:
                    kinds = [(r.strides, 1), (1, 1)]
                inp = prev
                for k, (stride, groups) in enumerate(kinds, 1):
                    ref[f"{p}.bn{k}"] = bn(f"{p}.bn{k}", A(inp))
                    ref[f"{p}.relu{k}"] = ref_np.relu(A(f"{p}.bn{k}"))
                    if k == 1 and r.use_1x1conv:
                        ref[f"{p}.shortcut"] = conv(f"{p}.shortcut", A(f"{p}.relu1"), r.strides)
                    ref[f"{p}.conv{k}"] = conv(f"{p}.conv{k}", A(f"{p}.relu{k}"), stride, groups)
                    inp = f"{p}.conv{k}"
                shortcut = A(f"{p}.shortcut") if r.use_1x1conv else A(prev)
                ref[p] = A(inp) + shortcut
                prev = p
                continue
            if isinstance(r, BottleneckSpec):  # 1x1, grouped 3x3, 1x1; the stride on stride_at
                s1, s3 = (r.strides, 1) if r.stride_at == "1x1" else (1, r.strides)
                ref[f"{p}.conv1"] = conv(f"{p}.conv1", A(prev), s1)
                ref[f"{p}.bn1"] = bn(f"{p}.bn1", A(f"{p}.conv1"))
                ref[f"{p}.relu1"] = ref_np.relu(A(f"{p}.bn1"))
                ref[f"{p}.conv2"] = conv(f"{p}.conv2", A(f"{p}.relu1"), s3, r.groups)
                ref[f"{p}.bn2"] = bn(f"{p}.bn2", A(f"{p}.conv2"))
                ref[f"{p}.relu2"] = ref_np.relu(A(f"{p}.bn2"))
                ref[f"{p}.conv3"] = conv(f"{p}.conv3", A(f"{p}.relu2"), 1)
                ref[f"{p}.bn3"] = bn(f"{p}.bn3", A(f"{p}.conv3"))
                last = f"{p}.bn3"
            else:                               # d2l's Residual: two 3x3 convs
                ref[f"{p}.conv1"] = conv(f"{p}.conv1", A(prev), r.strides)
                ref[f"{p}.bn1"] = bn(f"{p}.bn1", A(f"{p}.conv1"))
                ref[f"{p}.relu1"] = ref_np.relu(A(f"{p}.bn1"))
                ref[f"{p}.conv2"] = conv(f"{p}.conv2", A(f"{p}.relu1"), 1)
                ref[f"{p}.bn2"] = bn(f"{p}.bn2", A(f"{p}.conv2"))
                last = f"{p}.bn2"
            shortcut = A(prev)
            if r.use_1x1conv:
                ref[f"{p}.shortcut"] = conv(f"{p}.shortcut", A(prev), r.strides)
                shortcut = A(f"{p}.shortcut")
                if r.shortcut_bn:
                    ref[f"{p}.shortcut_bn"] = bn(f"{p}.shortcut_bn", shortcut)
                    shortcut = A(f"{p}.shortcut_bn")
            ref[p] = ref_np.relu(A(last) + shortcut)
            prev = p
    if spec.preact:
        ref["head.bn"] = bn("head.bn", A(prev))
        ref["head.relu"] = ref_np.relu(A("head.bn"))
        prev = "head.relu"
    ref["head.pool"] = A(prev).mean(axis=(2, 3), keepdims=True)
    ref["head.flatten"] = A("head.pool").reshape(len(x), -1)
    ref["head.fc"] = A("head.flatten") @ S("head.fc.weight").T + S("head.fc.bias")
    return ref


@pytest.mark.parametrize("options", [
    {}, {"conv_bias": False, "shortcut_bn": True, "bn_eps": 1e-2},
    {"block": "bottleneck", "groups": 2, "stride_at": "1x1", "conv_bias": False,
     "shortcut_bn": True, "bn_eps": 1e-2},
    {"preact": True, "bn_eps": 1e-2},
    {"preact": True, "block": "bottleneck", "groups": 2, "conv_bias": False},
    {"block": "bottleneck", "stride_at": "1x1", "conv_bias": ("1x1",), "shortcut_bn": True},
    {"padding": "same", "bn_eps": 1e-3},
    {"padding": "same", "block": "bottleneck", "groups": 2, "preact": True}],
    ids=["d2l", "torchvision-like", "resnext-v1", "preact", "preact-resnext", "bias-on-1x1-only",
         "d2l-keras", "same-preact-resnext"])
def test_every_activation_is_its_layers_definition(be, tiny, options):
    """conv (padding k//2, stride), eval BatchNorm with the spec's eps, ReLU, -inf-padded
    3x3/2 max pool, residual sum, global average pool, flatten, dense: each recorded activation
    against float64 numpy applied to the activation(s) recorded before it."""
    spec = dataclasses.replace(tiny, **options)
    state = random_state(spec, seed=6)
    model = be.build(spec)
    be.load_state(model, state)
    x = make_input((2, 3, 20, 19), seed=6)  # even and odd: 'same' padding differs at even sizes
    acts = be.activations(model, x)
    ref = reference_activations(spec, state, acts, x.astype(np.float64))
    assert list(acts) == list(ref)
    rows = compare(acts, ref, rtol=1e-5)
    print(format_rows(rows, f"{be.name}: recorded activation vs its definition (float64 numpy)"))
    assert all(r.ok for r in rows)
    # ReLU outputs (stem.relu, relu1, each post-activation block's output) hold no negative
    # value; a pre-activation block's sum is not rectified
    assert all((acts[k] >= 0).all() for k in acts if k.endswith(("relu", "relu1", "relu2"))
               or (k.count(".") == 2 and not spec.preact))
    if spec.preact:
        assert any((acts[k] < 0).any() for k in acts if k.count(".") == 2)
