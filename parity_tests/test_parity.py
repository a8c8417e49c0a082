"""Every pair of frameworks computes the same function, layer by layer (eval mode, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from common import (
    BACKEND_NAMES,
    EVAL_RTOL_CPU,
    BottleneckSpec,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    compare,
    format_rows,
    random_state,
    worst,
)
from common.core.step_parity import bn_counts, compare_states, labels, tolerance

from .conftest import backend_or_skip, make_input
from .test_spec import D2L_SHAPES_224

_acts: dict[tuple, dict] = {}


@pytest.fixture(scope="session")
def r18_acts(r18, loaded):
    """``r18_acts(backend, shape)``: ResNet-18 activations with random weights and BN stats."""
    def get(be, shape):
        key = (be.name, shape)
        if key not in _acts:
            _acts[key] = be.activations(loaded(be, r18), make_input(shape, seed=sum(shape)))
        return _acts[key]
    return get


def assert_parity(acts, ref, rtol=EVAL_RTOL_CPU, title=""):
    rows = compare(acts, ref, rtol)
    report = format_rows(rows, title)
    print(report)
    assert all(r.ok for r in rows), f"layers out of bound {rtol:g}:\n{report}"
    return rows


def test_d2l_shape_walk(be, r18_acts, r18):
    """For a (1, 1, 224, 224) input each top-level layer has the shape the chapter prints."""
    acts = r18_acts(be, (1, 1, 224, 224))
    assert [acts[n].shape for n in r18.top_level_names()] == D2L_SHAPES_224


@pytest.mark.parametrize("shape", [(2, 1, 96, 96), (1, 1, 224, 224), (3, 1, 33, 33),
                                   (1, 1, 97, 97), (2, 1, 64, 50)],
                         ids=lambda s: "x".join(map(str, s)))
def test_resnet18_eval_parity(pair, shape, r18_acts):
    """Random weights and random BatchNorm running statistics; every named activation agrees."""
    ref, other = pair
    rows = assert_parity(r18_acts(other, shape), r18_acts(ref, shape),
                         title=f"{other.name} vs {ref.name}, input {shape}")
    assert len(rows) == 58
    assert worst(rows).max_rel > 0  # the frameworks really ran separately


BLOCKS = [ResidualSpec(8, 8), ResidualSpec(8, 16, use_1x1conv=True, strides=2),
          ResidualSpec(8, 8, use_1x1conv=True, strides=1),
          ResidualSpec(8, 16, use_1x1conv=True, strides=2, conv_bias=False, shortcut_bn=True),
          ResnetBlockSpec(input_channels=8, num_channels=8, num_residuals=2, first_block=True),
          ResnetBlockSpec(input_channels=8, num_channels=16, num_residuals=3),
          BottleneckSpec(8, 8, 4), BottleneckSpec(8, 16, 4, use_1x1conv=True, strides=2),
          BottleneckSpec(8, 16, 8, use_1x1conv=True, strides=2, groups=4, stride_at="1x1",
                         conv_bias=False, shortcut_bn=True),
          ResnetBlockSpec(input_channels=8, num_channels=32, num_residuals=2, first_block=True,
                          block="bottleneck", bottleneck_channels=8, groups=2)]


@pytest.mark.parametrize("unit", BLOCKS, ids=lambda u: f"{type(u).__name__}-"
                         f"{getattr(u, 'strides', 0)}-{getattr(u, 'use_1x1conv', '')}"
                         f"{getattr(u, 'first_block', '')}-{u.conv_bias}")
@pytest.mark.parametrize("size", [6, 11])
def test_blocks_eval_parity(pair, unit, size):
    ref, other = pair
    state = random_state(unit, seed=size)
    x = make_input((2, unit.input_channels, size, size), seed=size)
    acts = {}
    for be in (ref, other):
        model = be.build(unit)
        be.load_state(model, state)
        acts[be.name] = be.activations(model, x)
    assert_parity(acts[other.name], acts[ref.name], title=f"{other.name} vs {ref.name}")


# -- every option away from its default ---------------------------------------------------------
# No conv bias, BatchNorm on the shortcut, and an eps that is neither the frameworks' 1e-5 nor
# Keras's 1e-3, so a backend that drops any option differs from one that keeps it.
OPTIONS = ResNetSpec(name="options", in_channels=3, num_classes=5, stem_channels=8,
                     stage_channels=(8, 16), stage_blocks=(1, 2), conv_bias=False,
                     shortcut_bn=True, bn_eps=1e-2, bn_momentum=0.3)
_options: dict[str, tuple] = {}


def options_run(be):
    """Eval activations and the state after one float64 SGD step of OPTIONS, once per backend."""
    if be.name not in _options:
        state, x = random_state(OPTIONS, seed=9), make_input((4, 3, 17, 17), seed=9)
        model = be.build(OPTIONS)
        be.load_state(model, state)
        acts = be.activations(model, x)
        model64 = be.build(OPTIONS, dtype="float64")
        be.load_state(model64, state)
        be.sgd_step(model64, x, labels(OPTIONS, 4), 0.05)
        _options[be.name] = (acts, be.export_state(model64), state)
    return _options[be.name]


def test_network_parity_with_non_default_options(pair):
    """No conv bias, BatchNorm on the shortcut, eps 1e-2, momentum 0.3: every layer agrees in
    eval mode within EVAL_RTOL_CPU, and after one training step (float64) every parameter and
    running statistic agrees too (momentum reaches every BatchNorm)."""
    ref, other = pair
    (acts_ref, step_ref, state), (acts_other, step_other, _) = options_run(ref), options_run(other)
    rows = assert_parity(acts_other, acts_ref, title=f"{other.name} vs {ref.name}, {OPTIONS}")
    assert any(r.layer.endswith("shortcut_bn") for r in rows)
    counts = bn_counts(OPTIONS, acts_ref)
    bound = tolerance("steps", "float64", 1)
    rows = compare_states(step_other, step_ref, state, rtol=bound, unit=OPTIONS, steps=1,
                          counts=counts, other_var=other.convention.running_var,
                          ref_var=ref.convention.running_var)
    report = format_rows(rows, f"after one SGD step, float64 (bound {bound:g})")
    print(report)
    assert all(r.ok for r in rows), report
    moved = step_ref["stem.bn.running_mean"] - state["stem.bn.running_mean"]
    assert np.abs(moved).max() > 1e-3


def test_state_circle_is_bit_exact(r18, r18_state):
    """torch -> tf -> mxnet -> torch: every tensor comes back bit for bit."""
    backends = [backend_or_skip(n) for n in BACKEND_NAMES] + [backend_or_skip(BACKEND_NAMES[0])]
    state = r18_state
    for be in backends:
        model = be.build(r18)
        be.load_state(model, state)
        state = be.export_state(model)
    assert list(state) == list(r18_state)
    for k in r18_state:
        assert state[k].tobytes() == r18_state[k].tobytes(), k
