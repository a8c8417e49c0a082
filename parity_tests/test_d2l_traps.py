"""d2l's code as printed: its Keras ResNet is not its PyTorch ResNet; the suite's Keras one is.

Two causes, isolated at block level: ``padding='same'`` pads a stride-2 convolution
asymmetrically when the input size is even (one extra row and column at the bottom/right
instead of one on each side), and Keras BatchNorm's default eps is 1e-3, PyTorch's 1e-5.
"""

from __future__ import annotations

import pytest

from common import format_rows
from common.tools import traps

from .conftest import backend_or_skip


@pytest.fixture(scope="module", autouse=True)
def backends():
    return backend_or_skip("torch"), backend_or_skip("tf")


def test_d2l_keras_resnet18_differs_the_suites_does_not():
    d2l_gap, suite_gap, same = traps.d2l_resnet18_logits_gap()
    print(f"\nlogits, ResNet-18, 96x96, max rel: d2l-Keras vs d2l-PyTorch {d2l_gap:.2e}; "
          f"suite Keras vs suite PyTorch {suite_gap:.2e}; suite PyTorch vs d2l-PyTorch {same:.2e}")
    assert same == 0.0         # the suite's PyTorch model is d2l's function, op for op
    assert d2l_gap > 1e-2      # the trap: a large, not a rounding, difference
    assert suite_gap <= 1e-5   # the fix


def rows(size, eps):
    out = traps.d2l_keras_residual_rows(size, eps)
    print(format_rows(list(out.values()), f"\nd2l Keras Residual vs PyTorch, {size}x{size}, "
                      f"eps {eps or 'Keras default 1e-3'}"))
    return out


def test_same_padding_is_asymmetric_at_stride_2_on_even_sizes():
    even = rows(8, 1e-5)
    assert even["conv1"].max_rel > 1e-1       # stride-2 3x3 conv: shifted by one pixel
    assert even["shortcut"].max_rel <= 1e-5   # 1x1 needs no padding: the same
    odd = rows(9, 1e-5)
    assert all(r.max_rel <= 1e-5 for r in odd.values())  # odd sizes pad 1 and 1: the same


def test_keras_default_eps_is_a_second_trap():
    eps = rows(9, None)                       # symmetric padding, eps 1e-3
    assert eps["conv1"].max_rel <= 1e-5
    assert eps["bn1"].max_rel > 1e-4


def test_traps_command_measures_every_trap(capsys):
    """`resnet-parity traps --markdown` regenerates the README's table."""
    backend_or_skip("mxnet")
    from common.tools.cli import main
    assert main(["traps", "--markdown", "-q"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 14  # header and 14 traps
    for trap in ("stride-2 'same' padding", "BatchNorm eps", "running variance",
                 "weight decay", "update timing", "default init", "float32 training"):
        assert any(line.startswith(f"| {trap} |") for line in lines), trap
    assert "d2l Keras vs d2l PyTorch logits: 1.8e-01" in out
