"""Each layer's definition in float64 numpy, NCHW, written here independently of the suite's
code: what a recorded activation must equal, and what a framework's own layer computes."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

Padding = Union[int, str, None]


def _pads(size: int, k: int, stride: int, padding: Padding) -> tuple[int, int]:
    """(before, after) along one axis: ``k // 2`` each side by default, ``padding`` each side
    for an int, TensorFlow's 'same' for "same" (output ceil(size / stride); of the padding that
    needs, the larger half goes after)."""
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return total // 2, total - total // 2
    p = k // 2 if padding is None else int(padding)
    return p, p


def conv2d(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None, stride: int = 1,
           padding: Padding = None, groups: int = 1) -> np.ndarray:
    """Cross-correlation of NCHW ``x`` with ``w`` ``(out, in / groups, kh, kw)``, zero padding
    (default ``k // 2`` on each side, PyTorch's ``padding=k//2``; "same": TensorFlow's), then
    the bias. With ``groups``, output channel block g sees input channel block g only."""
    if groups > 1:
        xs, ws = np.split(np.asarray(x), groups, axis=1), np.split(np.asarray(w), groups, axis=0)
        out = np.concatenate([conv2d(xg, wg, None, stride, padding) for xg, wg in zip(xs, ws)],
                             axis=1)
        return out if b is None else out + np.asarray(b, np.float64)[None, :, None, None]
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), _pads(x.shape[2], kh, stride, padding),
                    _pads(x.shape[3], kw, stride, padding)))
    oh, ow = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, i, j])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
               var: np.ndarray, eps: float) -> np.ndarray:
    """Eval-mode BatchNorm over NCHW channels: ``(x - mean) / sqrt(var + eps) * gamma + beta``."""
    c = lambda v: np.asarray(v, np.float64)[None, :, None, None]  # noqa: E731
    return (np.asarray(x, np.float64) - c(mean)) / np.sqrt(c(var) + eps) * c(gamma) + c(beta)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(x, np.float64), 0.0)


def max_pool(x: np.ndarray, k: int = 3, stride: int = 2, padding: Padding = 1) -> np.ndarray:
    """NCHW max pool; the padding is -inf, so it never wins the max (PyTorch's ``padding``;
    "same": TensorFlow's)."""
    x = np.asarray(x, np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), _pads(x.shape[2], k, stride, padding),
                    _pads(x.shape[3], k, stride, padding)), constant_values=-np.inf)
    oh, ow = (xp.shape[2] - k) // stride + 1, (xp.shape[3] - k) // stride + 1
    return np.max([xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                   for i in range(k) for j in range(k)], axis=0)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
               axis: int = 1) -> np.ndarray:
    """LayerNorm over one axis (NCHW channels by default): ``(x - mean) / sqrt(var + eps)``
    with the biased variance, then ``* gamma + beta`` along that axis."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    c = lambda v: np.asarray(v, np.float64).reshape(shape)  # noqa: E731
    return (x - mean) / np.sqrt(var + eps) * c(gamma) + c(beta)


def gelu(x: np.ndarray, form: str = "exact") -> np.ndarray:
    """GELU: ``x * Phi(x)`` with the error function, or its tanh approximation."""
    x = np.asarray(x, np.float64)
    if form == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0)))


def dense_channels(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A Linear layer ``(out, in)`` applied to the channels of NCHW ``x`` at every pixel."""
    out = np.einsum("nchw,oc->nohw", np.asarray(x, np.float64), np.asarray(w, np.float64))
    return out + np.asarray(b, np.float64)[None, :, None, None]
