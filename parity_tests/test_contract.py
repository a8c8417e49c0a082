"""The Backend contract, one suite run against every framework."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from common import (
    EVAL_RTOL_CPU,
    BottleneckSpec,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    activation_names,
    compare,
    format_rows,
    num_inputs,
    param_shapes,
    random_state,
    resnet18_spec,
)

from .conftest import backend_or_skip, make_input

UNITS = [ResidualSpec(3, 6, use_1x1conv=True, strides=2),
         ResidualSpec(5, 5),
         ResidualSpec(3, 6, use_1x1conv=True, strides=2, conv_bias=False, shortcut_bn=True),
         ResnetBlockSpec(input_channels=4, num_channels=8, num_residuals=2),
         BottleneckSpec(3, 8, 4, use_1x1conv=True, strides=2, groups=2, conv_bias=False,
                        shortcut_bn=True),
         ResnetBlockSpec(input_channels=4, num_channels=16, num_residuals=2, first_block=True,
                         block="bottleneck", bottleneck_channels=4),
         ResidualSpec(3, 6, use_1x1conv=True, strides=2, preact=True),
         BottleneckSpec(3, 8, 4, use_1x1conv=True, strides=2, groups=2, preact=True),
         ResnetBlockSpec(input_channels=4, num_channels=8, num_residuals=2, preact=True),
         BottleneckSpec(3, 8, 4, use_1x1conv=True, strides=2, conv_bias=("1x1", "shortcut"))]


def test_build_default_is_resnet18(be):
    model = be.build()
    assert be.unit_of(model) == resnet18_spec()
    state = be.export_state(model)
    assert {k: v.shape for k, v in state.items()} == param_shapes(resnet18_spec())
    assert all(v.dtype == np.float32 for v in state.values())


# -- default init: each framework's own (the trap table's row), and parity never depends on it ------
INIT = ResNetSpec(name="init", in_channels=1, num_classes=10, stem_channels=64,
                  stage_channels=(64,), stage_blocks=(1,))


def init_bound(framework: str, shape: tuple[int, ...]) -> float:
    """The half-width of each framework's default uniform init for a weight of canonical
    ``shape`` (out, in, *kernel): PyTorch kaiming_uniform(a=sqrt(5)) = 1/sqrt(fan_in), Keras
    glorot_uniform = sqrt(6/(fan_in + fan_out)), Gluon Uniform(0.07)."""
    receptive = int(np.prod(shape[2:]))
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return {"torch": 1 / np.sqrt(fan_in), "tf": np.sqrt(6 / (fan_in + fan_out)),
            "mxnet": 0.07}[framework]


def fits_uniform(w: np.ndarray, bound: float) -> bool:
    """Drawn from uniform(-bound, bound): inside it, filling it (P(max|w| < 0.95 bound) is
    0.95**n), with its standard deviation bound/sqrt(3) (within 6 sigma of the sample std,
    whose relative spread for a uniform law is sqrt(0.2/n))."""
    top, n = float(np.abs(w).max()), w.size
    spread = abs(np.std(w) / (bound / np.sqrt(3)) - 1)
    return bound * 0.95 <= top <= bound and spread < 6 * np.sqrt(0.2 / n)


@pytest.mark.trap
def test_default_init_is_each_frameworks_own(be):
    """A freshly built model: conv and dense weights from the framework's own default
    initialiser (and not another framework's); biases per framework; BatchNorm at 1, 0, 0, 1."""
    state = be.export_state(be.build(INIT))
    others = [n for n in ("torch", "tf", "mxnet") if n != be.name]
    for name in ("stem.conv.weight", "stages.0.0.conv1.weight", "head.fc.weight"):
        w = state[name]
        bound = init_bound(be.name, w.shape)
        print(f"{be.name} {name} {w.shape}: max|w| {np.abs(w).max():.4f}, std {np.std(w):.4f}; "
              f"uniform bound {bound:.4f}, std {bound / np.sqrt(3):.4f}")
        assert fits_uniform(w, bound), name
        if name != "stages.0.0.conv1.weight":  # there glorot (0.072) and Gluon (0.07) are close
            assert not any(fits_uniform(w, init_bound(o, w.shape)) for o in others), name
    for name in ("stem.conv.bias", "head.fc.bias"):
        b = state[name]
        if be.name == "torch":  # PyTorch: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); the others: 0
            fan_in = int(np.prod(state[name.replace("bias", "weight")].shape[1:]))
            assert 0 < np.abs(b).max() <= 1 / np.sqrt(fan_in)
        else:
            assert not b.any()
    for p, value in (("gamma", 1), ("beta", 0), ("running_mean", 0), ("running_var", 1)):
        assert (state[f"stem.bn.{p}"] == value).all()


def test_parity_never_depends_on_init(pair):
    """Two frameworks' fresh models differ; after copying one's weights into the other, every
    tensor is bit-identical and every layer agrees within EVAL_RTOL_CPU."""
    ref, other = pair
    m_ref, m_other = ref.build(INIT), other.build(INIT)
    fresh = ref.export_state(m_ref)
    assert not np.array_equal(fresh["stem.conv.weight"], other.export_state(m_other)["stem.conv.weight"])
    other.load_state(m_other, fresh)
    copied = other.export_state(m_other)
    assert all(copied[k].tobytes() == fresh[k].tobytes() for k in fresh)
    x = make_input((1, 1, 20, 20))
    rows = compare(other.activations(m_other, x), ref.activations(m_ref, x), EVAL_RTOL_CPU)
    print(format_rows(rows, f"{other.name} vs {ref.name}, {ref.name}'s fresh weights copied"))
    assert all(r.ok for r in rows)


@pytest.mark.parametrize("unit", UNITS + [None], ids=lambda u: type(u).__name__ if u else "tiny")
def test_state_round_trip_is_bit_exact(be, unit, tiny):
    unit = unit or tiny
    model = be.build(unit)
    state = random_state(unit, seed=7)
    be.load_state(model, state)
    out = be.export_state(model)
    assert list(out) == list(param_shapes(unit))
    for k in state:
        assert out[k].tobytes() == state[k].tobytes(), k


# whole networks whose own forward differs from d2l's beyond the blocks: a v2 head
NETWORKS = [ResNetSpec(name="tiny-v2", in_channels=3, num_classes=5, stem_channels=8,
                       stage_channels=(8, 16), stage_blocks=(1, 1), preact=True)]


@pytest.mark.parametrize("unit", UNITS + NETWORKS, ids=lambda u: u.name if isinstance(u, ResNetSpec)
                         else type(u).__name__)
def test_activation_names_and_forward(be, unit):
    """The walk's names, and its last activation equals the framework's own forward."""
    model = be.build(unit)
    be.load_state(model, random_state(unit, 1))
    x = make_input((2, num_inputs(unit), 9, 9))
    acts = be.activations(model, x)
    assert list(acts) == activation_names(unit)
    last = acts[list(acts)[-1]]
    y = be.forward(model, x)
    assert last.shape == y.shape
    np.testing.assert_allclose(last, y, rtol=0, atol=1e-5 * np.abs(y).max())


def test_resnet_trace_ends_in_forward(be, tiny, loaded):
    model = loaded(be, tiny)
    x = make_input((2, 3, 32, 32))
    acts = be.activations(model, x)
    assert list(acts) == activation_names(tiny)
    assert acts["head.fc"].shape == (2, 5)
    np.testing.assert_allclose(acts["head.fc"], be.forward(model, x), rtol=0,
                               atol=1e-5 * np.abs(acts["head.fc"]).max())


def test_determinism(be, tiny):
    """Same seed, same input: bit-identical outputs, twice and from a second model."""
    x = make_input((2, 3, 17, 17))
    m1, m2 = be.build(tiny), be.build(tiny)
    be.load_state(m1, random_state(tiny, 5))
    be.load_state(m2, random_state(tiny, 5))
    y1, y2, y3 = be.forward(m1, x), be.forward(m1, x), be.forward(m2, x)
    assert y1.tobytes() == y2.tobytes() == y3.tobytes()
    a1, a2 = be.activations(m1, x), be.activations(m2, x)
    assert all(a1[k].tobytes() == a2[k].tobytes() for k in a1)


def test_eval_forward_leaves_state_alone(be, tiny, loaded):
    model = loaded(be, tiny)
    before = be.export_state(model)
    be.forward(model, make_input((2, 3, 16, 16)))
    be.activations(model, make_input((2, 3, 16, 16)))
    after = be.export_state(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _load_error(be, model, state) -> str:
    with pytest.raises(ValueError) as e:
        be.load_state(model, state)
    return str(e.value)


def test_strict_load(be, tiny):
    model = be.build(tiny)
    good = random_state(tiny, 2)
    be.load_state(model, good)

    missing = dict(good)
    del missing["stages.1.0.shortcut.weight"]
    assert "missing key(s): stages.1.0.shortcut.weight" in _load_error(be, model, missing)

    extra = {**good, "stages.1.0.bn3.gamma": np.ones(16, np.float32)}
    assert "unexpected key(s): stages.1.0.bn3.gamma" in _load_error(be, model, extra)

    shape = {**good, "stem.conv.weight": np.zeros((8, 3, 3, 3), np.float32)}
    msg = _load_error(be, model, shape)
    assert "stem.conv.weight" in msg and "(8, 3, 7, 7)" in msg and "(8, 3, 3, 3)" in msg

    nonfinite = {**good, "head.fc.bias": np.array([0, np.nan, 0, np.inf, 0], np.float32)}
    assert "non-finite values in head.fc.bias: 2 of 5" in _load_error(be, model, nonfinite)

    # nothing was written by the failed loads
    now = be.export_state(model)
    assert all(np.array_equal(now[k], good[k]) for k in good)
    be.load_state(model, nonfinite, allow_nonfinite=True)
    assert np.isnan(be.export_state(model)["head.fc.bias"][1])


def test_bad_input_is_named(be, tiny, loaded):
    model = loaded(be, tiny)
    with pytest.raises(ValueError, match="NCHW"):
        be.forward(model, np.zeros((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="1 channels, the model takes 3"):
        be.forward(model, np.zeros((2, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="device must be one of"):
        be.forward(model, make_input((1, 3, 16, 16)), device="tpu")


def test_gpu_request_without_gpu_is_a_clear_error(be, tiny, loaded):
    if "gpu" in be.devices():
        pytest.skip(f"{be.name} sees a GPU here")
    with pytest.raises(RuntimeError, match="no GPU"):
        be.forward(loaded(be, tiny), make_input((1, 3, 16, 16)), device="gpu")


def test_only_its_own_framework_is_imported(be):
    """A torch user never imports TensorFlow, and so on (run in a fresh interpreter)."""
    import subprocess
    code = ("import sys; from common import get_backend; get_backend(%r).build(); "
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'tensorflow', 'keras', 'mxnet'})))" % be.name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.strip().split(","))
    own = {"torch": {"torch"}, "tf": {"tensorflow", "keras"}, "mxnet": {"mxnet"}}[be.name]
    assert loaded == own


def test_float64_twin(be, tiny):
    """build(dtype="float64"): state, activations and outputs in float64, same function."""
    state = random_state(tiny, 4)
    m32, m64 = be.build(tiny), be.build(tiny, dtype="float64")
    be.load_state(m32, state)
    be.load_state(m64, state)
    exported = be.export_state(m64)
    assert all(v.dtype == np.float64 for v in exported.values())
    assert all(np.array_equal(exported[k], state[k]) for k in state)
    x = make_input((2, 3, 16, 16))
    y32, y64 = be.forward(m32, x), be.forward(m64, x)
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=0, atol=1e-5 * np.abs(y64).max())
    assert all(a.dtype == np.float64 for a in be.activations(m64, x).values())
    with pytest.raises(ValueError, match="dtype must be one of"):
        be.build(tiny, dtype="float16")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_pytorch_modules_mode_is_left_as_the_caller_set_it(tiny, mode):
    """PyTorch keeps train/eval mode on the module itself: forward, activations, gradients and
    sgd_step switch it for their own work and put it back."""
    be = backend_or_skip("torch")
    model = be.build(tiny)
    model.train(mode == "train")
    x, y = make_input((2, 3, 16, 16)), np.array([0, 1])
    for call in (lambda: be.forward(model, x), lambda: be.forward(model, x, training=True),
                 lambda: be.activations(model, x), lambda: be.activations(model, x, training=True),
                 lambda: be.gradients(model, x, y), lambda: be.sgd_step(model, x, y, 0.01)):
        call()
        assert all(m.training == (mode == "train") for m in model.modules())
