"""Per-layer comparison of activations (or parameters) and the tolerance policy.

Every comparison reports, per layer, ``max|a-b|`` and ``max|a-b| / max|b|`` (relative to the
reference's largest magnitude, so a near-zero element cannot blow the figure up).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

# Measured, not guessed: see README "Measured parity". On CPU in float32 eval mode the three
# frameworks agree to ~3e-6 relative at every layer of ResNet-18. 1e-5 leaves room for depth and
# input size while still catching the smallest trap: Keras's default BatchNorm eps (1e-3 for
# 1e-5) moves a BatchNorm output by 3.1e-4 in d2l's Residual and up to 2.6e-3 in the tests'
# small network (parity_tests/test_compare.py).
EVAL_RTOL_CPU = 1e-5
# GPU convolutions pick different algorithms per framework (cuDNN autotune, Winograd/FFT),
# so agreement is looser even with TF32 off. Provisional: not yet measured on a GPU; 1e-4 is ten
# times the CPU bound, to be replaced by a measured figure.
EVAL_RTOL_GPU = 1e-4


@dataclass(frozen=True)
class Row:
    """One layer of a comparison report."""

    layer: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


def diff(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> tuple[float, float]:
    """``(max|a-b|, max|a-b| / max(max|b|, floor))`` in float64; b is the reference.

    ``floor`` keeps a tensor whose true value is zero (a conv bias right before a BatchNorm
    in training mode has a zero gradient) from turning rounding noise into a huge ratio.
    """
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.size == 0:
        return 0.0, 0.0
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: reported as inf below
        d = np.abs(a64 - b64)
    if not np.isfinite(d).all():
        return float("inf"), float("inf")
    max_abs = float(d.max())
    scale = max(float(np.abs(b64).max()), floor)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel


def compare(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], rtol: float = EVAL_RTOL_CPU,
            names: Optional[list[str]] = None, floor: float = 0.0) -> list[Row]:
    """Compare ``a`` against the reference ``b`` name by name, in ``b``'s order.

    ``floor`` bounds each relative difference's denominator from below (see :func:`diff`);
    :func:`global_floor` gives the suite's choice for gradients and parameters.

    A name present on one side only, or a shape mismatch, is a failing row, never an exception,
    so a report always shows every layer.
    """
    order = list(names) if names is not None else list(b) + [k for k in a if k not in b]
    rows = []
    for name in order:
        if name not in a or name not in b:
            side = "first" if name not in a else "second"
            shape = tuple(np.shape(b[name] if name in b else a[name]))
            rows.append(Row(name, shape, float("inf"), float("inf"), False, f"missing in {side}"))
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            rows.append(Row(name, tuple(y.shape), float("inf"), float("inf"), False,
                            f"shape {tuple(x.shape)} != {tuple(y.shape)}"))
            continue
        max_abs, max_rel = diff(x, y, floor)
        rows.append(Row(name, tuple(y.shape), max_abs, max_rel, max_rel <= rtol))
    return rows


def global_floor(tensors: Mapping[str, np.ndarray], fraction: float = 1e-3) -> float:
    """``fraction`` of the largest magnitude over all tensors: the denominator floor for
    gradients and parameters, where some tensors are zero in exact arithmetic."""
    return fraction * max((float(np.abs(v).max()) for v in tensors.values() if np.size(v)),
                          default=0.0)


def worst(rows: list[Row]) -> Row:
    """The row with the largest relative difference."""
    if not rows:
        raise ValueError("no rows to compare")
    return max(rows, key=lambda r: r.max_rel)


def format_rows(rows: list[Row], title: str = "") -> str:
    """A plain-text table: layer, shape, max abs, max rel, ok."""
    width = max([len(r.layer) for r in rows] + [5])
    lines = [title] if title else []
    lines.append(f"{'layer':<{width}}  {'shape':<20} {'max abs':>10} {'max rel':>10}  ok")
    for r in rows:
        lines.append(f"{r.layer:<{width}}  {str(r.shape):<20} {r.max_abs:>10.2e} {r.max_rel:>10.2e}  "
                     f"{'ok' if r.ok else 'FAIL'}{'  ' + r.note if r.note else ''}")
    return "\n".join(lines)


# -- multi-pair reports (resnet-parity check, convert) ------------------------------------------
Pairs = dict[tuple[str, str], list[Row]]


@dataclass
class Section:
    """One per-layer report: every pair of frameworks, the first of a pair the reference."""

    title: str
    bound: float
    pairs: Pairs

    @property
    def ok(self) -> bool:
        return all(r.ok for rows in self.pairs.values() for r in rows)


def pairwise(results: dict[str, Any], fn: Callable[[Any, Any, str, str], list[Row]]) -> Pairs:
    """``fn(other, reference, other name, reference name)`` for every pair of ``results``."""
    return {(a, b): fn(results[b], results[a], b, a)
            for a, b in itertools.combinations(results, 2)}


def format_table(pairs: Pairs) -> str:
    """One row per layer, max abs and max rel for every pair side by side, then ok/FAIL."""
    keys = list(pairs)
    rows0 = next(iter(pairs.values()))
    width = max(len(r.layer) for r in rows0)
    head = f"{'layer':<{width}}  {'shape':<18}" + "".join(
        f" {f'{b} vs {a}':>22}" for a, b in keys) + "  status"
    sub = f"{'':<{width}}  {'':<18}" + "".join(f" {'max abs':>10} {'max rel':>11}" for _ in keys)
    lines = [head, sub, "-" * len(head)]
    for i, r in enumerate(rows0):
        cells = "".join(f" {pairs[k][i].max_abs:>10.2e} {pairs[k][i].max_rel:>11.2e}" for k in keys)
        ok = all(pairs[k][i].ok for k in keys)
        notes = "; ".join(pairs[k][i].note for k in keys if pairs[k][i].note)
        lines.append(f"{r.layer:<{width}}  {str(r.shape):<18}{cells}  {'ok' if ok else 'FAIL'}"
                     + (f"  ({notes})" if notes else ""))
    return "\n".join(lines)


def summarize(section: Section) -> list[dict]:
    """Per pair: the worst layer, its max rel, and the largest max abs."""
    out = []
    for (a, b), rows in section.pairs.items():
        w = max(rows, key=lambda r: r.max_rel)
        out.append({"pair": f"{b} vs {a}", "worst_layer": w.layer, "max_rel": w.max_rel,
                    "max_abs": max(r.max_abs for r in rows)})
    return out


def format_section(section: Section) -> str:
    """:func:`format_table` followed by one summary line per pair."""
    lines = [format_table(section.pairs)]
    lines += [f"{item['pair']}: worst max rel {item['max_rel']:.2e} at {item['worst_layer']}; "
              f"max abs {item['max_abs']:.2e}" for item in summarize(section)]
    return "\n".join(lines)
