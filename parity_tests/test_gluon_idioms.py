"""The Gluon model behaves like a Gluon model: it hybridizes, infers shapes, saves by name.

Also pins down what the Gluon backend relies on: the numpy shim, eps and momentum reaching
BatchNorm, and where Gluon updates BatchNorm running statistics (the backward pass).
"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("resnet_mxnet", reason="MXNet is not installed: "
                    "pip install 'resnet-parity[mxnet]'")

from common import ResidualSpec, ResNetSpec, diff, param_shapes, random_state  # noqa: E402
from common.core.trace import resolve  # noqa: E402
from resnet_mxnet import Residual, ResNet, resnet_block  # noqa: E402
from resnet_mxnet._compat import autograd, ensure_numpy_bool, mx  # noqa: E402
from resnet_mxnet.blocks import batch_norm  # noqa: E402

from .conftest import backend_or_skip, make_input  # noqa: E402

SMALL = ResNetSpec(name="small", stem_channels=8, stage_channels=(8, 16), stage_blocks=(1, 1))


@pytest.fixture(scope="module")
def be():
    return backend_or_skip("mxnet")


def _loaded(be, spec, seed=0):
    model = be.build(spec)
    be.load_state(model, random_state(spec, seed))
    return model


# -- the numpy shim ----------------------------------------------------------------------------
def test_shim_adds_bool_once_and_never_clobbers():
    fake = types.ModuleType("fake_numpy")
    assert ensure_numpy_bool(fake) is True and fake.bool is bool
    assert ensure_numpy_bool(fake) is False and fake.bool is bool  # idempotent

    sentinel = object()
    own = types.ModuleType("numpy_with_bool")
    own.bool = sentinel
    assert ensure_numpy_bool(own) is False
    assert own.bool is sentinel  # an existing attribute is left alone

    # on the real numpy the alias is there (ours on 1.24-1.26, numpy's own bool_ on >= 2)
    assert ensure_numpy_bool() is False
    assert vars(np)["bool"] in (bool, np.bool_)


NUMPY_WITHOUT_BOOL = pytest.mark.skipif(
    not (1, 24) <= tuple(int(p) for p in np.__version__.split(".")[:2]) < (2, 0),
    reason="numpy.bool is only missing on numpy 1.24-1.26")


@pytest.mark.trap
@NUMPY_WITHOUT_BOOL
def test_bare_mxnet_import_fails_on_numpy_1_24_and_later():
    """A fresh interpreter: mxnet 1.9.1 calls np.bool, which numpy 1.24 removed."""
    bare = subprocess.run([sys.executable, "-c", "import mxnet"], capture_output=True, text=True)
    assert bare.returncode != 0
    assert "module 'numpy' has no attribute 'bool'" in bare.stderr, bare.stderr[-500:]


@NUMPY_WITHOUT_BOOL
def test_shim_is_enough():
    """A fresh interpreter: through the package, ``import mxnet`` works on this numpy."""
    shimmed = subprocess.run([sys.executable, "-c",
                              "import resnet_mxnet, mxnet, numpy; assert numpy.bool is bool; "
                              "print(mxnet.__version__)"], capture_output=True, text=True)
    assert shimmed.returncode == 0, shimmed.stderr
    assert shimmed.stdout.strip() == mx.__version__


# -- d2l's Gluon usage: deferred shapes ---------------------------------------------------------
def test_d2l_deferred_residual():
    X = mx.nd.random.uniform(shape=(4, 3, 6, 6))
    blk = Residual(3)
    blk.initialize()
    assert blk.conv1.weight.shape == (3, 0, 3, 3)  # deferred until the first call
    assert blk(X).shape == (4, 3, 6, 6)
    assert blk.conv1.weight.shape == (3, 3, 3, 3)

    blk = Residual(6, use_1x1conv=True, strides=2)
    blk.initialize()
    assert blk(X).shape == (4, 6, 3, 3)
    assert blk.conv3.weight.shape == (6, 3, 1, 1) and blk.bn3 is None


def test_known_in_channels_allocate_at_initialize():
    blk = Residual(6, use_1x1conv=True, strides=2, in_channels=3, shortcut_bn=True)
    blk.initialize()
    shapes = {k: v.shape for k, v in blk.collect_params().items()}
    assert all(0 not in s for s in shapes.values()), shapes
    assert blk.conv1.weight.data().shape == (6, 3, 3, 3)  # readable before any call
    assert blk.bn3.gamma.data().shape == (6,)


def test_resnet_block_is_an_indexable_hybrid_sequential():
    blk = resnet_block(16, 2, in_channels=8)
    blk.initialize()
    assert isinstance(blk, mx.gluon.nn.HybridSequential) and len(blk) == 2
    assert blk[0].conv3 is not None and blk[1].conv3 is None
    assert blk[0].conv1.weight.shape == (16, 8, 3, 3)
    assert blk(mx.nd.zeros((2, 8, 9, 9))).shape == (2, 16, 5, 5)


# -- BatchNorm options reach Gluon ---------------------------------------------------------------
def test_eps_and_momentum_reach_every_batchnorm(be):
    spec = ResNetSpec(name="small_bn", stem_channels=8, stage_channels=(8, 16),
                      stage_blocks=(1, 1), shortcut_bn=True, bn_eps=1e-3, bn_momentum=0.25)
    model = be.build(spec)
    bns = [resolve(model, layer.attr) for layer in spec.layers() if layer.kind == "bn"]
    assert len(bns) == 1 + 2 * 2 + 1  # stem, two Residuals, one shortcut BN
    for bn in bns:
        assert isinstance(bn, mx.gluon.nn.BatchNorm)
        assert bn._kwargs["eps"] == 1e-3
        assert bn._kwargs["momentum"] == pytest.approx(0.75)  # Gluon: weight of the old value
        assert bn._kwargs["fix_gamma"] is False and bn._kwargs["use_global_stats"] is False


def test_eps_changes_the_numbers(be):
    """Eval-mode BN is (x - running_mean) / sqrt(running_var + eps) * gamma + beta, with our eps."""
    spec = ResidualSpec(3, 3, bn_eps=0.5)
    model = _loaded(be, spec, seed=4)
    state = be.export_state(model)
    acts = be.activations(model, make_input((2, 3, 5, 5)))
    g, b, m, v = (state[f"bn1.{p}"].reshape(1, -1, 1, 1)
                  for p in ("gamma", "beta", "running_mean", "running_var"))
    want = (acts["conv1"] - m) / np.sqrt(v + 0.5) * g + b
    assert diff(acts["bn1"], want)[1] < 1e-6
    assert diff(acts["bn1"], (acts["conv1"] - m) / np.sqrt(v + 1e-5) * g + b)[1] > 1e-2


# -- where Gluon updates running statistics -----------------------------------------------------
def test_training_forward_uses_batch_stats_and_leaves_running_stats(be):
    spec = ResidualSpec(3, 6, use_1x1conv=True, strides=2)
    model = _loaded(be, spec, seed=2)
    before = be.export_state(model)
    x = make_input((4, 3, 8, 8))
    train, evaluation = (be.forward(model, x, training=t) for t in (True, False))
    assert diff(train, evaluation)[1] > 1e-2  # batch statistics, not the running ones
    bn1 = be.activations(model, x, training=True)["bn1"]
    # normalised with this batch's mean: per channel, the batch mean of the output is beta
    assert np.abs(bn1.mean(axis=(0, 2, 3)) - before["bn1.beta"]).max() < 1e-4
    after = be.export_state(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # Gluon: not in forward


@pytest.mark.trap
@pytest.mark.parametrize("hybridize", [False, True])
def test_running_stats_move_in_backward_with_biased_variance(hybridize):
    bn = batch_norm(3, bn_momentum=0.25)
    bn.initialize()
    if hybridize:
        bn.hybridize()
    x = make_input((4, 3, 5, 5)) * 2 + 1
    with autograd.record(train_mode=True):
        y = bn(mx.nd.array(x))
    y.wait_to_read()
    assert np.array_equal(bn.running_mean.data().asnumpy(), np.zeros(3, np.float32))
    y.backward()
    mean, biased = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.data().asnumpy(), 0.25 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.data().asnumpy(), 0.75 + 0.25 * biased, rtol=1e-5)
    unbiased = x.var(axis=(0, 2, 3), ddof=1)  # what PyTorch would store
    assert np.abs(bn.running_var.data().asnumpy() - (0.75 + 0.25 * unbiased)).max() > 1e-4


# -- hybridization ------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [{}, {"static_alloc": True, "static_shape": True}],
                         ids=["plain", "static"])
def test_hybridized_equals_imperative(be, flags):
    model = _loaded(be, SMALL, seed=1)
    x = make_input((2, 1, 33, 33))
    imperative = be.forward(model, x)
    acts = be.activations(model, x)
    model.hybridize(**flags)
    hybrid = be.forward(model, x)
    assert model._cached_op is not None  # the symbolic graph really ran
    again = be.forward(model, x)
    hybrid_acts = be.activations(model, x)
    rel = max(diff(hybrid, imperative)[1], diff(again, imperative)[1],
              *(diff(hybrid_acts[k], acts[k])[1] for k in acts))
    print(f"\nhybridize({flags}) vs imperative, max rel over logits and every layer: {rel:.2e}")
    assert rel <= 1e-6


def test_load_state_reaches_a_static_hybridized_graph(be):
    """Gluon writes parameters in place, so a cached static graph sees a later load_state."""
    model = _loaded(be, SMALL, seed=1)
    model.hybridize(static_alloc=True, static_shape=True)
    x = make_input((2, 1, 20, 20))
    first = be.forward(model, x)
    be.load_state(model, random_state(SMALL, 2))
    second = be.forward(model, x)
    fresh = be.forward(_loaded(be, SMALL, seed=2), x)
    assert diff(second, first)[1] > 1e-2
    assert diff(second, fresh)[1] <= 1e-6


# -- state -------------------------------------------------------------------------------------
def test_state_round_trip_is_bit_exact(be):
    model = be.build(SMALL)
    be.load_state(model, random_state(SMALL, 3))
    first = be.export_state(model)
    other = be.build(SMALL)
    be.load_state(other, first)
    second = be.export_state(other)
    assert list(second) == list(param_shapes(SMALL))
    assert all(second[k].tobytes() == first[k].tobytes() for k in first)


def test_gluon_checkpoint_keys_are_the_canonical_names(be, tmp_path):
    """``save_parameters`` keys are the attribute paths, i.e. the canonical names (the 1x1
    shortcut keeps d2l's attribute name ``conv3``; the order is d2l's attribute order), and
    ``load_parameters`` reads them back."""
    model = _loaded(be, SMALL, seed=5)
    path = str(tmp_path / "small.params")
    model.save_parameters(path)
    keys = list(mx.nd.load(path))
    assert sorted(k.replace(".conv3.", ".shortcut.") for k in keys) == sorted(param_shapes(SMALL))
    again = ResNet(SMALL)
    again.load_parameters(path)
    state, other = be.export_state(model), be.export_state(be.register(again, SMALL))
    assert all(state[k].tobytes() == other[k].tobytes() for k in state)


def test_devices_never_raise_and_cpu_comes_first(be):
    devices = be.devices()
    assert devices[0] == "cpu" and set(devices) <= {"cpu", "gpu"}
    if not mx.runtime.Features().is_enabled("CUDA"):
        assert devices == ["cpu"]


def test_eval_inside_a_callers_record_still_uses_running_statistics(be):
    """Inside a caller's ``autograd.record()`` Gluon's BatchNorm would use batch statistics;
    the backend's eval-mode forward and activations use the running ones there too."""
    model = _loaded(be, SMALL, seed=7)
    x = make_input((2, 1, 20, 20))
    outside, acts = be.forward(model, x), be.activations(model, x)
    with autograd.record():
        inside, inside_acts = be.forward(model, x), be.activations(model, x)
    assert diff(inside, outside)[1] == 0
    assert all(np.array_equal(inside_acts[k], acts[k]) for k in acts)
    with autograd.record(), autograd.train_mode():  # what the backend guards against
        raw = model(mx.nd.array(x)).asnumpy()
    assert diff(raw, outside)[1] > 1e-2
