"""The comparison every parity claim rests on: ``diff``, ``compare``, ``global_floor``, ``worst``
and ``format_rows``, checked against figures worked out by hand (no framework needed); and the
CPU bound, EVAL_RTOL_CPU, against the smallest trap it must catch (each framework's tiny net)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from common import EVAL_RTOL_CPU, Row, compare, diff, format_rows, random_state, worst
from common.core.compare import Section, global_floor, summarize

from .conftest import make_input

INF = float("inf")


# -- diff -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, floor, want", [
    ([1, 2], [1, 4], 0.0, (2.0, 0.5)),          # |2-4| = 2, relative to max|b| = 4
    ([0, -1], [0, -3], 0.0, (2.0, 2 / 3)),       # magnitudes, not signed values
    ([[1, 5], [3, 3]], [[1, 4], [3, 1]], 0.0, (2.0, 0.5)),  # the largest difference anywhere
    ([1, 2], [1, 4], 1.0, (2.0, 0.5)),          # a floor below max|b| changes nothing
    ([1, 2], [1, 4], 10.0, (2.0, 0.2)),         # a floor above it is the denominator
    ([1e-3, 0], [0, 0], 0.0, (1e-3, INF)),      # a zero reference: any difference is infinite
    ([1e-3, 0], [0, 0], 1e-2, (1e-3, 0.1)),     # ... unless floored
    ([0, 0], [0, 0], 0.0, (0.0, 0.0)),          # zero against zero is no difference
    ([], [], 0.0, (0.0, 0.0)),                  # nothing to compare
])
def test_diff_is_max_abs_and_max_abs_over_max_ref(a, b, floor, want):
    got = diff(np.array(a, np.float32), np.array(b, np.float32), floor)
    print(f"\ndiff({a}, {b}, floor={floor}): max abs {got[0]:.3e}, max rel {got[1]:.3e}")
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("a, b", [([1, np.nan], [1, 2]), ([1, 2], [np.nan, 2]),
                                  ([np.inf, 2], [np.inf, 2]), ([1, 2], [1, -np.inf])])
def test_diff_of_nonfinite_values_is_infinite(a, b):
    """A NaN or inf anywhere is an infinite difference (inf - inf included), without a numpy
    warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert diff(np.array(a), np.array(b)) == (INF, INF)


def test_diff_is_computed_in_float64():
    """float32 inputs near float32's largest value: their difference overflows float32 (inf)
    but not float64, where it is 6e38, twice the reference's magnitude."""
    a, b = np.array([3e38], np.float32), np.array([-3e38], np.float32)
    max_abs, max_rel = diff(a, b)
    assert max_abs == pytest.approx(6e38, rel=1e-6) and max_rel == pytest.approx(2.0)
    # b is the reference: swapping the arguments changes the denominator
    assert diff(np.array([1.0]), np.array([2.0])) == (1.0, 0.5)
    assert diff(np.array([2.0]), np.array([1.0])) == (1.0, 1.0)


# -- compare ------------------------------------------------------------------------------------
def test_compare_rows_follow_the_reference_and_apply_rtol():
    a = {"x": np.array([1.0, 2.0]), "y": np.array([3.0]), "z": np.array([0.5, 0.25])}
    b = {"z": np.array([0.5, 0.5]), "x": np.array([1.0, 4.0]), "y": np.array([3.0])}
    rows = compare(a, b, rtol=0.5)
    print(format_rows(rows, "\nhand-made rows, rtol 0.5"))
    assert [r.layer for r in rows] == ["z", "x", "y"]          # b's order
    z, x, y = rows
    assert (z.max_abs, z.max_rel, z.ok, z.shape) == (0.25, 0.5, True, (2,))  # 0.5 <= 0.5
    assert (x.max_abs, x.max_rel, x.ok) == (2.0, 0.5, True)
    assert (y.max_abs, y.max_rel, y.ok) == (0.0, 0.0, True)
    assert [r.ok for r in compare(a, b, rtol=0.49)] == [False, False, True]
    # names picks and orders the rows
    assert [r.layer for r in compare(a, b, names=["y", "x"])] == ["y", "x"]


def test_compare_floor_reaches_every_row():
    a, b = {"w": np.array([1.0, 2.0])}, {"w": np.array([1.0, 4.0])}
    (row,) = compare(a, b, rtol=1.0, floor=10.0)
    assert (row.max_abs, row.max_rel) == (2.0, 0.2)


def test_default_bound_is_the_measured_cpu_bound():
    """compare's default rtol is EVAL_RTOL_CPU = 1e-5: 0.9e-5 passes, 1.1e-5 fails."""
    b = {"l": np.array([1.0, -1.0])}
    inside, outside = {"l": np.array([1.0 + 0.9e-5, -1.0])}, {"l": np.array([1.0, -1.0 - 1.1e-5])}
    (row_in,), (row_out,) = compare(inside, b), compare(outside, b)
    print(f"\n0.9e-5 off: max rel {row_in.max_rel:.3e} ok={row_in.ok}; "
          f"1.1e-5 off: max rel {row_out.max_rel:.3e} ok={row_out.ok}")
    assert row_in.max_rel == pytest.approx(0.9e-5) and row_in.ok
    assert row_out.max_rel == pytest.approx(1.1e-5) and not row_out.ok
    assert EVAL_RTOL_CPU == 1e-5


def test_missing_names_and_shape_mismatches_are_failing_rows():
    a = {"both": np.zeros(3), "only_a": np.zeros((2, 2)), "shape": np.zeros((2, 3))}
    b = {"both": np.zeros(3), "only_b": np.zeros(4), "shape": np.zeros((3, 2))}
    rows = {r.layer: r for r in compare(a, b, rtol=INF)}  # no bound at all: still failing
    print(format_rows(list(rows.values()), "\nmissing and mis-shaped"))
    assert list(rows) == ["both", "only_b", "shape", "only_a"]  # b's names, then a's extras
    assert rows["both"].ok
    for name, shape, note in (("only_b", (4,), "missing in first"),
                              ("only_a", (2, 2), "missing in second"),
                              ("shape", (3, 2), "shape (2, 3) != (3, 2)")):
        r = rows[name]
        assert not r.ok and r.max_abs == INF and r.max_rel == INF, r
        assert r.shape == shape and r.note == note


def test_nonfinite_activations_fail_any_bound():
    rows = compare({"l": np.array([np.nan, 1.0])}, {"l": np.array([0.0, 1.0])}, rtol=1e6)
    assert not rows[0].ok and rows[0].max_rel == INF


# -- global_floor, worst, summaries --------------------------------------------------------------
def test_global_floor_is_a_fraction_of_the_largest_magnitude():
    tensors = {"a": np.array([1.0, -3.0]), "b": np.array([[2.0]]), "e": np.zeros(0)}
    assert global_floor(tensors) == pytest.approx(3e-3)          # 1e-3 * |-3|
    assert global_floor(tensors, fraction=0.5) == pytest.approx(1.5)
    assert global_floor({"e": np.zeros(0)}) == 0.0 and global_floor({}) == 0.0
    # what it is for: a zero-gradient tensor next to large ones gets a finite ratio
    grads = {"big": np.array([100.0]), "zero": np.array([0.0, 0.0])}
    noisy = {"big": np.array([100.0]), "zero": np.array([1e-4, 0.0])}
    rows = compare(noisy, grads, rtol=1e-5, floor=global_floor(grads))
    assert rows[1].max_rel == pytest.approx(1e-4 / 0.1) and not rows[1].ok   # 1e-3
    assert compare(noisy, grads, rtol=1e-2, floor=global_floor(grads))[1].ok


def test_worst_is_the_largest_relative_difference():
    rows = [Row("a", (1,), 5.0, 1e-3, True), Row("b", (1,), 1.0, 2e-3, True),
            Row("c", (1,), 9.0, 5e-4, True)]
    assert worst(rows).layer == "b"                        # by max rel, not max abs
    assert worst(rows + [Row("m", (1,), INF, INF, False, "missing in first")]).layer == "m"
    with pytest.raises(ValueError, match="no rows"):
        worst([])


def test_section_and_summary():
    good, bad = Row("x", (2,), 1e-7, 1e-6, True), Row("y", (2,), 3e-2, 2e-1, False)
    s = Section("t", 1e-5, {("torch", "tf"): [good, bad], ("torch", "mxnet"): [good]})
    assert not s.ok and Section("t", 1e-5, {("torch", "mxnet"): [good]}).ok
    first = summarize(s)[0]
    assert first["pair"] == "tf vs torch" and first["worst_layer"] == "y"
    assert (first["max_rel"], first["max_abs"]) == (2e-1, 3e-2)


# -- format_rows ---------------------------------------------------------------------------------
def test_format_rows_shows_every_row_with_its_figures():
    rows = [Row("stem.conv", (2, 8, 5, 5), 1.25e-6, 3.5e-7, True),
            Row("head.fc", (2, 5), 0.5, 0.125, False, "a note"),
            Row("gone", (3,), INF, INF, False, "missing in first")]
    text = format_rows(rows, "the title")
    print("\n" + text)
    lines = text.splitlines()
    assert lines[0] == "the title" and lines[1].split() == ["layer", "shape", "max", "abs", "max",
                                                            "rel", "ok"]
    assert len(lines) == 2 + len(rows)
    for row, line in zip(rows, lines[2:]):
        assert line.startswith(row.layer + " ")
        assert str(row.shape) in line
        before, _, note = line.partition(("ok" if row.ok else "FAIL"))
        max_abs, max_rel = (float(v) for v in before.replace(str(row.shape), "").split()[1:3])
        for shown, value in ((max_abs, row.max_abs), (max_rel, row.max_rel)):
            assert shown == value if math.isinf(value) else shown == pytest.approx(value, rel=0.01)
        assert note.strip() == row.note
    assert format_rows(rows).splitlines()[0].startswith("layer")  # no title: no title line


# -- the CPU bound: tight enough for the smallest trap (correct models: test_parity.py) ---------
def test_eval_bound_catches_keras_default_eps(be, tiny):
    """BatchNorm eps 1e-3 (Keras's default) instead of 1e-5, same weights and random running
    statistics (variance 0.5..2): the smallest trap the suite knows moves the BatchNorm outputs
    by ~1e-3 relative at most; EVAL_RTOL_CPU must call that out of bound, at every BatchNorm."""
    state, x = random_state(tiny, seed=8), make_input((2, 3, 19, 19), seed=8)
    acts = {}
    for eps in (1e-5, 1e-3):
        model = be.build(dataclasses.replace(tiny, bn_eps=eps))
        be.load_state(model, state)
        acts[eps] = be.activations(model, x)
    rows = compare(acts[1e-3], acts[1e-5], EVAL_RTOL_CPU)
    print(format_rows(rows, f"{be.name}: eps 1e-3 vs eps 1e-5 (bound {EVAL_RTOL_CPU:g})"))
    bn_rows = [r for r in rows if r.layer.endswith(("bn", "bn1", "bn2"))]
    assert len(bn_rows) == 7 and not any(r.ok for r in bn_rows)
    assert rows[0].layer == "stem.conv" and rows[0].ok  # before the first BatchNorm: identical
    assert worst(rows).max_rel < 1e-2  # a small trap: the bound is what separates it
