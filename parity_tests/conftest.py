"""Shared fixtures: backends (skipped with an install hint when missing), specs, states, inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common import (
    BACKEND_NAMES,
    BackendUnavailable,
    ResNetSpec,
    get_backend,
    random_state,
    resnet18_spec,
)

_cache: dict[str, object] = {}


def _load(name: str):
    """The backend, or the ``BackendUnavailable`` that says how to install it (cached)."""
    if name not in _cache:
        try:
            _cache[name] = get_backend(name)
        except BackendUnavailable as e:
            _cache[name] = e
    return _cache[name]


def backend_or_skip(name: str):
    """The backend ``name``, or skip the test with the install hint."""
    be = _load(name)
    if isinstance(be, BackendUnavailable):
        pytest.skip(str(be))
    return be


@pytest.fixture(scope="session")
def installed() -> tuple[str, ...]:
    """The names of the installed frameworks, in ``BACKEND_NAMES`` order: the one place the
    suite asks whether a framework is there (``backend_or_skip`` for a single one)."""
    return tuple(n for n in BACKEND_NAMES if not isinstance(_load(n), BackendUnavailable))


PAIRS = list(itertools.combinations(BACKEND_NAMES, 2))


@pytest.fixture(params=BACKEND_NAMES)
def be(request):
    """Each backend in turn."""
    return backend_or_skip(request.param)


@pytest.fixture(params=PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def pair(request):
    """Each pair of backends: (reference, other)."""
    a, b = request.param
    return backend_or_skip(a), backend_or_skip(b)


@pytest.fixture(scope="session")
def r18() -> ResNetSpec:
    return resnet18_spec()


@pytest.fixture(scope="session")
def r18_state(r18):
    return random_state(r18, seed=0)


@pytest.fixture(scope="session")
def tiny() -> ResNetSpec:
    """A small ResNet with every kind of layer, for fast contract tests."""
    return ResNetSpec(name="tiny", in_channels=3, num_classes=5, stem_channels=8,
                      stage_channels=(8, 16), stage_blocks=(1, 2))


_models: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def loaded():
    """``loaded(backend, spec, state_seed)``: a model with that random state, built once."""
    def get(be, spec, seed=0):
        key = (be.name, spec, seed)
        if key not in _models:
            model = be.build(spec)
            be.load_state(model, random_state(spec, seed))
            _models[key] = model
        return _models[key]
    return get


def make_input(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomize_batch_norms(model):
    """Random BatchNorm weights and running statistics in a PyTorch model built by someone
    else's code (transformers, a hand-built torchvision layout): fresh ones would hide eps and
    running-statistic mistakes."""
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model
