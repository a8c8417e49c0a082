"""The ResNet family and ConvNeXt: every standard member computes the same function in every framework,
layer by layer, and trains the same in float64 (bottleneck, ResNeXt, v1 and v1.5).

Every member of ``common.ARCHITECTURES`` at full width, random weights and random BatchNorm
statistics, an odd non-square input, batch 2, bound EVAL_RTOL_CPU at every named layer.
"""

from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest

from common import (
    ARCHITECTURES,
    EVAL_RTOL_CPU,
    ResNetSpec,
    activation_names,
    architecture,
    compare,
    format_rows,
    random_state,
    worst,
)
from common.core.compare import global_floor
from common.core.step_parity import bn_counts, compare_states, labels, tolerance, trajectory

from .conftest import backend_or_skip, make_input

# keras-resnet101/152 repeat keras-resnet50's blocks (v1, conv bias) at resnet101/152's depths,
# both run here: they would add a minute and test nothing new.
WHOLE = [name for name in ARCHITECTURES if name not in ("keras-resnet101", "keras-resnet152")]


@pytest.mark.parametrize("name", WHOLE)
def test_every_member_agrees_layer_by_layer(name, installed):
    if len(installed) < 2:
        pytest.skip("needs two installed frameworks")
    spec = architecture(name)
    state = random_state(spec, seed=1)
    x = make_input((2, spec.in_channels, 40, 33), seed=2)
    acts = {}
    for framework in installed:
        be = backend_or_skip(framework)
        model = be.build(spec)
        be.load_state(model, state)
        acts[framework] = be.activations(model, x)
        del model
        gc.collect()
    assert all(list(a) == activation_names(spec) for a in acts.values())
    for ref, other in itertools.combinations(installed, 2):
        rows = compare(acts[other], acts[ref], EVAL_RTOL_CPU)
        w = worst(rows)
        print(f"\n{name}: {other} vs {ref}, {len(rows)} layers, worst max rel {w.max_rel:.2e} at "
              f"{w.layer}")
        assert all(r.ok for r in rows), format_rows([r for r in rows if not r.ok])
        assert w.max_rel > 0  # the frameworks really ran separately


# Small members of the family for training-step parity: a bottleneck network (v1.5), a ResNeXt
# (grouped 3x3), and v1 (the stride on the first 1x1); every BatchNorm sees >= 100 values.
SMALL = {
    "bottleneck": ResNetSpec(name="b", in_channels=3, num_classes=5, block="bottleneck",
                             stem_channels=8, stage_channels=(16, 32), stage_blocks=(2, 1),
                             conv_bias=False, shortcut_bn=True, stem_pool=False),
    "resnext": ResNetSpec(name="x", in_channels=3, num_classes=5, block="bottleneck",
                          stem_channels=8, stage_channels=(32, 64), stage_blocks=(1, 1), groups=4,
                          width_per_group=16, conv_bias=False, shortcut_bn=True, stem_pool=False),
    "v1": ResNetSpec(name="v1", in_channels=3, num_classes=5, block="bottleneck", stem_channels=8,
                     stage_channels=(16, 32), stage_blocks=(1, 1), stride_at="1x1",
                     bn_eps=1.001e-5, stem_pool=False),
    "v2": ResNetSpec(name="v2", in_channels=3, num_classes=5, block="bottleneck", stem_channels=8,
                     stage_channels=(16, 32), stage_blocks=(2, 1), groups=2, conv_bias=False,
                     preact=True, stem_pool=False),
}
_runs: dict[tuple, object] = {}


def _run(be, key, kind):
    k = (be.name, key, kind)
    if k not in _runs:
        spec = SMALL[key]
        state, x = random_state(spec, seed=3), make_input((8, 3, 24, 24), seed=4)
        y = labels(spec, 8)
        if kind == "grads":
            model = be.build(spec, dtype="float64")
            be.load_state(model, state)
            _runs[k] = be.gradients(model, x, y)
        else:
            _runs[k] = trajectory(be, spec, state, x, y, steps=2, lr=0.05, momentum=0.9,
                                  dtype="float64")[1]
    return _runs[k]


@pytest.mark.parametrize("key", SMALL)
def test_bottleneck_networks_train_the_same_in_float64(pair, key):
    """Loss and every gradient, then the parameters and running statistics after two SGD steps
    with momentum: the float64 bounds of common.core.step_parity."""
    ref, other = pair
    spec = SMALL[key]
    (loss_a, grads_a), (loss_b, grads_b) = _run(other, key, "grads"), _run(ref, key, "grads")
    assert abs(loss_a - loss_b) <= tolerance("loss", "float64") * abs(loss_b)
    rows = compare(grads_a, grads_b, floor=global_floor(grads_b))
    print(format_rows([worst(rows)], f"\n{key}: gradients {other.name} vs {ref.name}"))
    assert all(r.max_rel <= tolerance("gradients", "float64") for r in rows)
    assert max(np.abs(g).max() for g in grads_b.values()) > 0
    x = make_input((8, 3, 24, 24), seed=4)
    counts = bn_counts(spec, ref.activations(ref.build(spec), x, training=True))
    bound = tolerance("steps", "float64", 2, bn_values=min(counts.values()))
    rows = compare_states(_run(other, key, "steps")[-1], _run(ref, key, "steps")[-1],
                          random_state(spec, seed=3), rtol=bound, unit=spec, steps=2,
                          counts=counts, other_var=other.convention.running_var,
                          ref_var=ref.convention.running_var)
    print(format_rows([worst(rows)], f"{key}: state after 2 steps {other.name} vs {ref.name}"))
    assert all(r.ok for r in rows)
