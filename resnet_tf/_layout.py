"""The one edge between the suite's layouts and Keras's: the only place ``resnet_tf`` transposes.

The suite speaks NCHW activations, ``(out, in, kh, kw)`` conv kernels and ``(out, in)`` dense
kernels. Keras computes NHWC (the only layout CPU TensorFlow convolves) with ``(kh, kw, in, out)``
and ``(in, out)`` kernels. The backend, the training loop and the benchmark all cross here.
This module has no twin in ``resnet_torch`` and ``resnet_mxnet``: both already speak the
suite's layouts.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
# kernel layout permutations per layer kind; a depthwise kernel is (C, 1, kh, kw) canonically
# (PyTorch's grouped conv with groups=C) and (kh, kw, C, 1) in Keras's DepthwiseConv2D (its
# last axis the depth multiplier), the one permutation both ways
_KERAS_TO_CANONICAL = {"conv": (3, 2, 0, 1), "dwconv": (2, 3, 0, 1), "dense": (1, 0)}
_CANONICAL_TO_KERAS = {"conv": (2, 3, 1, 0), "dwconv": (2, 3, 0, 1), "dense": (1, 0)}


def nhwc(x: np.ndarray) -> np.ndarray:
    """An NCHW batch as the NHWC array Keras takes."""
    return np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC))


def nchw(x: Any) -> np.ndarray:
    """A Keras output as numpy: 4-D NHWC tensors back to NCHW, anything else (logits) as is."""
    a = keras.ops.convert_to_numpy(x)
    return np.ascontiguousarray(np.transpose(a, NHWC_TO_NCHW)) if a.ndim == 4 else a


def kernel_to_canonical(kernel: np.ndarray, kind: str) -> np.ndarray:
    """A Keras conv, depthwise conv or dense kernel in the canonical layout."""
    return np.transpose(kernel, _KERAS_TO_CANONICAL[kind])


def kernel_to_keras(weight: np.ndarray, kind: str) -> np.ndarray:
    """A canonical conv, depthwise conv or dense weight in Keras's kernel layout."""
    return np.ascontiguousarray(np.transpose(weight, _CANONICAL_TO_KERAS[kind]))
