"""The one place this package imports MXNet, after a small numpy shim.

MXNet 1.9.1 (the last 1.x release) still refers to ``numpy.bool``, an alias of the builtin
``bool`` that numpy deprecated in 1.20 and removed in 1.24, so ``import mxnet`` fails with
``AttributeError: module 'numpy' has no attribute 'bool'`` under a current numpy. The shim puts
the alias back *only if it is missing*: it never replaces an existing attribute (numpy >= 2
defines ``numpy.bool`` again, as ``numpy.bool_``) and calling it twice is harmless.

Every module of ``resnet_mxnet`` imports MXNet from here (``from ._compat import mx, nn``).
"""

from __future__ import annotations

from types import ModuleType

import numpy


def ensure_numpy_bool(module: ModuleType = numpy) -> bool:
    """Define ``module.bool = bool`` if the module has no ``bool`` of its own.

    Returns True when the alias was added. Looks in the module's namespace rather than calling
    ``hasattr``, which on numpy 1.24-1.26 emits a FutureWarning through ``__getattr__``.
    """
    if "bool" in vars(module):
        return False
    module.bool = bool  # type: ignore[attr-defined]
    return True


ensure_numpy_bool()

import mxnet as mx  # noqa: E402  (needs the shim above)
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

__all__ = ["autograd", "ensure_numpy_bool", "gluon", "mx", "nn"]
