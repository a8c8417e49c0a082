"""Training-step parity: one batch, one framework's trajectory, compared with another's.

Two facts shape every comparison here (``docs/architecture.md``, "Tolerances"):

* PyTorch moves ``running_var`` with the *unbiased* batch variance, Keras 3 and Gluon with the
  *biased* one. Each backend states its convention (``Backend.convention``) and comparisons
  convert exactly: with ``n`` values per channel, after ``k`` steps from ``r0`` with momentum
  ``m``, ``biased = d*r0 + (unbiased - d*r0) * (n-1)/n`` where ``d = (1-m)**k``.
* float32 BatchNorm training is ill-conditioned when a BatchNorm averages few values per channel
  (ResNet-18 on 32x32 images: 8 in the last stage). Its backward pass subtracts nearly equal
  sums, so float32 rounding grows from step to step, in each framework against its own float64
  run as much as between frameworks. Where every BatchNorm averages at least
  :data:`WELL_CONDITIONED` values, float32 runs stay together. Semantics are therefore proven in
  float64, where the three agree to ~1e-12, and float32 bounds are measured (:data:`TOLERANCES`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from .compare import Row, compare, global_floor
from .spec import Unit, num_outputs

RUNNING = ("running_mean", "running_var")

# The fewest values per channel a BatchNorm may average for float32 training to stay
# well-conditioned: measured, float32 after 5 SGD steps at lr 0.05 agrees to <= 8e-7 with 100
# or more values (the single blocks of the tests), and drifts to 2e-1 with 8 (ResNet-18, 32x32).
WELL_CONDITIONED = 100

# (check, dtype) -> bound on max|a-b| / max(max|b|, floor). Measured on ResNet-18 (32x32,
# batch 8, random weights and BN statistics, lr 0.05) and the single blocks, CPU:
#   activations (training mode): float32 1.2e-5 (stages.3.1.bn2 normalises 8 values), float64 4e-14
#   loss: float32 4e-7, float64 1e-15
#   gradients: float32 up to 4.9e-2 (BatchNorm backward cancellation; PyTorch float32 is itself
#              9e-3 from its float64 result), float64 2e-12
#   parameters and statistics after SGD steps ("steps": one step, or several where every
#              BatchNorm averages >= WELL_CONDITIONED values): float32 up to 7e-6, and up to
#              6.2e-4 for a zero-initialised conv bias in front of a BatchNorm, whose exact
#              gradient is zero, so that its update is float32 rounding alone (d2l's Xavier
#              init, measured against the floor); float64 2.0e-7 after one step, 3.1e-7 after
#              five (Keras and Gluon hold lr 0.05 and momentum 0.9 in float32)
#   several steps where a BatchNorm averages fewer values ("steps-ill"; ResNet-18 at 32x32 has
#              8): float32 up to 2e-1, each framework as far from its own float64 run.
TOLERANCES: dict[tuple[str, str], float] = {
    ("activations", "float32"): 1e-4, ("activations", "float64"): 1e-10,
    ("loss", "float32"): 1e-5, ("loss", "float64"): 1e-12,
    ("gradients", "float32"): 1e-1, ("gradients", "float64"): 1e-9,
    ("step1", "float32"): 2e-3, ("step1", "float64"): 1e-6,
    ("steps", "float32"): 2e-3, ("steps", "float64"): 1e-5,
    ("steps-ill", "float32"): 0.5, ("steps-ill", "float64"): 1e-5,
    # mixed precision (float32 weights; PyTorch autocast, Keras policies, MXNet AMP) against the
    # float64 truth, measured on ResNet-18 (eval 96x96 batch 2; training 64x64 batch 4, one step)
    # and ResNet-50 (eval 64x64), CPU:
    #   activations: bfloat16 1.4e-2 (ResNet-18) to 4.0e-2 (ResNet-50, Gluon), training 4.6e-2;
    #                float16 1.9e-3 to 3.4e-3, training 5.8e-3 (Gluon cannot run float16 on CPU)
    #   loss: bfloat16 up to 8.9e-3, float16 2.2e-4
    #   gradients: bfloat16 up to 0.57, and 21 times the floor for the stem's conv bias, whose
    #              exact gradient is zero; float16 0.44: the BatchNorm backward cancellation,
    #              now at 8 or 11 bits, so no gradient is trustworthy to more than its sign
    #   one SGD step: bfloat16 4.7e-2 (PyTorch, Gluon) and 0.11 (Keras); float16: skipped by
    #              the dynamic loss scaler (PyTorch's GradScaler starts at 2^16, Keras's
    #              LossScaleOptimizer at 2^15; both overflow on step one here), so no bound
    ("activations", "bfloat16"): 0.1, ("activations", "float16"): 1e-2,
    ("loss", "bfloat16"): 2e-2, ("loss", "float16"): 1e-3,
    ("gradients", "bfloat16"): 50.0, ("gradients", "float16"): 1.0,
    ("step1", "bfloat16"): 0.2, ("step1", "float16"): 0.2,
    ("steps", "bfloat16"): 0.5, ("steps", "float16"): 0.5,
    ("steps-ill", "bfloat16"): 1.0, ("steps-ill", "float16"): 1.0,
}


def tolerance(check: str, dtype: str = "float32", steps: int = 1,
              bn_values: Optional[int] = None) -> float:
    """The bound for ``check`` (activations, loss, gradients, steps) in ``dtype``.

    For ``steps`` the bound depends on how many: one step, or several from a well-conditioned
    start, where ``bn_values`` (the fewest values any BatchNorm averages per channel, see
    :func:`bn_counts`) is at least :data:`WELL_CONDITIONED`; unknown counts are taken as
    ill-conditioned.
    """
    key = check
    if check == "steps":
        ill = bn_values is None or bn_values < WELL_CONDITIONED
        key = "step1" if steps <= 1 else ("steps-ill" if ill else "steps")
    return TOLERANCES[(key, dtype)]


def is_running(name: str) -> bool:
    return name.endswith(RUNNING)


def bn_counts(unit: Unit, acts: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Values per channel each BatchNorm averages over (N*H*W), from one trace's shapes."""
    out = {}
    for layer in unit.layers():
        if layer.kind == "bn":
            n, _, h, w = acts[layer.name].shape
            out[layer.name] = n * h * w
    return out


def convert_running_var(var: np.ndarray, initial: np.ndarray, bn_momentum: float, steps: int,
                        n: int, src: str, dst: str) -> np.ndarray:
    """Map a running variance after ``steps`` updates from convention ``src`` to ``dst``.

    Exact when both runs saw the same batch statistics (the same parameters): the part of the
    running average that came from batches scales by ``(n-1)/n`` (unbiased -> biased).
    """
    if src == dst:
        return var
    if {src, dst} != {"biased", "unbiased"}:
        raise ValueError(f"unknown running-variance conventions {src!r} -> {dst!r}")
    decay = (1.0 - bn_momentum) ** steps
    factor = (n - 1) / n if dst == "biased" else n / (n - 1)
    return decay * initial + (var - decay * initial) * factor


def compare_states(other: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                   initial: Mapping[str, np.ndarray], *, rtol: float, unit: Unit, steps: int,
                   counts: Mapping[str, int], other_var: str, ref_var: str) -> list[Row]:
    """Parameters (floored, see :func:`global_floor`) and running statistics after ``steps``
    SGD steps from ``initial``, ``other``'s running variance converted to ``ref``'s convention.
    """
    converted = dict(other)
    for layer, n in counts.items():
        k = f"{layer}.running_var"
        converted[k] = convert_running_var(np.asarray(other[k], np.float64), initial[k],
                                           unit.bn_momentum, steps, n, other_var, ref_var)
    params = [k for k in ref if not is_running(k)]
    stats = [k for k in ref if is_running(k)]
    return (compare(converted, ref, rtol, names=params,
                    floor=global_floor({k: ref[k] for k in params}))
            + compare(converted, ref, rtol, names=stats))


def labels(unit: Unit, batch: int, seed: int = 0) -> np.ndarray:
    """Random class labels for ``unit``'s loss (see :func:`common.core.spec.num_outputs`)."""
    return np.random.default_rng(seed + 1).integers(0, num_outputs(unit), batch)


def trajectory(be: Any, unit: Unit, state: Mapping[str, np.ndarray], x: np.ndarray,
               y: np.ndarray, *, steps: int, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, dtype: str = "float32", device: str = "cpu"
               ) -> tuple[list[float], list[dict[str, np.ndarray]]]:
    """Losses and states after each of ``steps`` SGD steps of a fresh model from ``state``."""
    model = be.build(unit, dtype=dtype)
    be.load_state(model, state)
    losses, states = [], []
    for _ in range(steps):
        losses.append(be.sgd_step(model, x, y, lr, momentum, weight_decay, device=device))
        states.append(be.export_state(model))
    return losses, states
