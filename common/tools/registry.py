"""Which framework package serves which name: ``get_backend(name)`` and the install hints.

The thin dispatcher between the tools and the framework packages. It names the packages as
strings and imports one only when asked for it, so importing this module (or ``common``) loads
no framework, and a PyTorch user never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..core.backend import BaseBackend


class BackendUnavailable(ImportError):
    """The framework behind a backend is not installed; the message names the pip extra."""


# name -> (package, the framework's import names, pip extra, human name)
_BACKENDS = {
    "torch": ("resnet_torch", ("torch",), "torch", "PyTorch"),
    "tf": ("resnet_tf", ("tensorflow", "keras"), "tf", "TensorFlow/Keras"),
    "mxnet": ("resnet_mxnet", ("mxnet",), "mxnet", "MXNet"),
}
_ALIASES = {"pytorch": "torch", "keras": "tf", "tensorflow": "tf", "gluon": "mxnet", "mx": "mxnet"}
BACKEND_NAMES = tuple(_BACKENDS)


def canonical_name(name: str) -> str:
    """``torch``, ``tf`` or ``mxnet`` for a framework name or alias (``keras``, ``gluon``, ...)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _BACKENDS:
        raise ValueError(f"unknown framework {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    return key


def install_hint(name: str) -> str:
    _, _, extra, human = _BACKENDS[canonical_name(name)]
    return f"{human} is not installed: pip install 'resnet-parity[{extra}]'"


def framework_module(name: str, module: str) -> ModuleType:
    """One module of a framework package (``framework_module("tf", "bench")`` is
    ``resnet_tf.bench``), or :class:`BackendUnavailable` naming the extra to install."""
    package, roots, _, _ = _BACKENDS[canonical_name(name)]
    try:
        return importlib.import_module(f"{package}.{module}")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in roots:
            raise BackendUnavailable(install_hint(name)) from e
        raise


_instances: dict[str, BaseBackend] = {}


def get_backend(name: str) -> BaseBackend:
    """The backend for "torch", "tf" or "mxnet"; imports that framework now and no other.

    One instance per framework: models built through it are known to every later call.
    """
    key = canonical_name(name)
    if key not in _instances:
        _instances[key] = framework_module(key, "backend").backend()
    return _instances[key]
