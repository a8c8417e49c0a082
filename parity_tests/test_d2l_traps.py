"""d2l's code as printed: its Keras ResNet is not its PyTorch ResNet; the suite's Keras one is.

Two causes, isolated at block level: ``padding='same'`` pads a stride-2 convolution
asymmetrically when the input size is even (one extra row and column at the bottom/right
instead of one on each side), and Keras BatchNorm's default eps is 1e-3, PyTorch's 1e-5.

Also the trap table itself (``resnet-parity traps``, the README's "What differs between the
frameworks"): every row cites a test that pins the frameworks' behaviour, and its figures are
measured, not copied.
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
from pathlib import Path

import pytest

from common import format_rows
from common.tools import traps

from .conftest import backend_or_skip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch_and_tf():
    return backend_or_skip("torch"), backend_or_skip("tf")


@pytest.fixture(scope="module")
def logits_gap(torch_and_tf):
    """(d2l Keras vs d2l PyTorch, suite Keras vs suite PyTorch, suite PyTorch vs d2l PyTorch):
    max rel of the logits, ResNet-18, 96x96, one random state loaded into all four."""
    gaps = traps.d2l_resnet18_logits_gap()
    print(f"\nlogits, ResNet-18, 96x96, max rel: d2l-Keras vs d2l-PyTorch {gaps[0]:.2e}; "
          f"suite Keras vs suite PyTorch {gaps[1]:.2e}; suite PyTorch vs d2l-PyTorch {gaps[2]:.2e}")
    return gaps


@pytest.mark.trap
def test_d2l_keras_resnet18_is_not_d2l_pytorch(logits_gap):
    d2l_gap, _, _ = logits_gap
    assert d2l_gap > 1e-2      # the trap: a large, not a rounding, difference


def test_suites_keras_resnet18_is_d2ls_pytorch(logits_gap):
    _, suite_gap, same = logits_gap
    assert same == 0.0         # the suite's PyTorch model is d2l's function, op for op
    assert suite_gap <= 1e-5   # the fix


def rows(size, eps):
    out = traps.d2l_keras_residual_rows(size, eps)
    print(format_rows(list(out.values()), f"\nd2l Keras Residual vs PyTorch, {size}x{size}, "
                      f"eps {eps or 'Keras default 1e-3'}"))
    return out


@pytest.mark.trap
def test_same_padding_is_asymmetric_at_stride_2_on_even_sizes(torch_and_tf):
    even = rows(8, 1e-5)
    assert even["conv1"].max_rel > 1e-1       # stride-2 3x3 conv: shifted by one pixel
    assert even["shortcut"].max_rel <= 1e-5   # 1x1 needs no padding: the same
    odd = rows(9, 1e-5)
    assert all(r.max_rel <= 1e-5 for r in odd.values())  # odd sizes pad 1 and 1: the same


@pytest.mark.trap
def test_keras_default_eps_is_a_second_trap(torch_and_tf):
    eps = rows(9, None)                       # symmetric padding, eps 1e-3
    assert eps["conv1"].max_rel <= 1e-5
    assert eps["bn1"].max_rel > 1e-4


# -- the trap table --------------------------------------------------------------------------------
def _is_trap_mark(node: ast.expr) -> bool:
    """``pytest.mark.trap`` or ``mark.trap``, called or not."""
    node = node.func if isinstance(node, ast.Call) else node
    return isinstance(node, ast.Attribute) and node.attr == "trap" and (
        isinstance(node.value, ast.Attribute) and node.value.attr == "mark")


def _module_marks(tree: ast.Module) -> list[ast.expr]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets):
            value = stmt.value
            return list(value.elts) if isinstance(value, (ast.List, ast.Tuple)) else [value]
    return []


def test_every_trap_row_cites_a_trap_test():
    """Each of the 14 rows, the family's 5 and ConvNeXt's 5 names
    ``parity_tests/<file>.py::<test>``: a test function that exists at the top level of that
    file and is marked ``trap`` (checked from the source, without measuring anything); and the
    ``trap`` marker is registered."""
    assert len(traps.TRAPS) == 16 and len(traps.FAMILY_TRAPS) == 5
    assert len(traps.CONVNEXT_TRAPS) == 5
    rows = traps.TRAPS + traps.FAMILY_TRAPS + traps.CONVNEXT_TRAPS
    assert len({t.trap for t in rows}) == len(rows)
    cited = {}
    for t in rows:
        path, sep, name = t.test.partition("::")
        assert sep and path.startswith("parity_tests/test_") and path.endswith(".py"), t.test
        source = ROOT / path
        assert source.is_file(), t.test
        tree = ast.parse(source.read_text(), str(source))
        funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
        assert name in funcs and name.startswith("test_"), f"{t.trap}: no test {t.test}"
        marks = funcs[name].decorator_list + _module_marks(tree)
        assert any(_is_trap_mark(m) for m in marks), f"{t.trap}: {t.test} is not marked trap"
        cited[t.trap] = t.test
    print("\n" + "\n".join(f"{k}: {v}" for k, v in cited.items()))
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = config["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("trap:") for m in markers)


def test_trap_checker_sees_marks():
    """The checker above on hand-written sources: it finds decorator and module marks only."""
    marked = ast.parse("import pytest\n@pytest.mark.trap\ndef test_a(): pass\n"
                       "@pytest.mark.slow\ndef test_b(): pass\n")
    a, b = (f for f in marked.body if isinstance(f, ast.FunctionDef))
    assert any(map(_is_trap_mark, a.decorator_list)) and not any(map(_is_trap_mark,
                                                                    b.decorator_list))
    module = ast.parse("import pytest\npytestmark = [pytest.mark.gpu, pytest.mark.trap]\n")
    assert any(map(_is_trap_mark, _module_marks(module)))
    assert not _module_marks(ast.parse("x = 1\n"))


@pytest.fixture(scope="module")
def measured(torch_and_tf):
    backend_or_skip("mxnet")
    return {f.trap: f for f in traps.findings()}


def test_traps_measures_every_trap(measured):
    """`resnet-parity traps` measures each row's figures; these are the README's numbers."""
    assert list(measured) == [t.trap for t in traps.TRAPS]
    for f in measured.values():
        print(f"{f.trap}: " + ", ".join(f"{k} {v:.3g}" for k, v in f.figures.items()))
    fig = {k: f.figures for k, f in measured.items()}
    whole = fig["the whole network"]
    assert whole["d2l_keras_vs_d2l_torch"] > 1e-2 and whole["suite_keras_vs_suite_torch"] <= 1e-5
    assert whole["suite_torch_vs_d2l_torch"] == 0.0
    assert fig["kernel layout"]["reshaped_kernel"] > 1e-1
    pad = fig["stride-2 'same' padding"]
    assert pad["conv1_even"] > 1e-1 and pad["conv1_odd"] <= 1e-5
    assert fig["max-pool padding"]["zero_padding"] > 1e-1
    assert 1e-4 < fig["BatchNorm eps"]["bn1"] < 1e-2
    assert fig["BatchNorm momentum"]["literal_momentum"] > 1e-1
    rv = fig["running variance"]   # momentum 0.1 times the 1/(n-1) of unbiased over biased
    assert 1e-3 < rv["running_var"] <= 1 / (rv["values_per_channel"] - 1)
    assert fig["update timing"]["torch_moved"] > 0.1 and fig["update timing"]["gluon_moved"] == 0
    # a 3x3 conv, 64 -> 64 (fan in = fan out = 576): the std of uniform(-b, b) is b/sqrt(3)
    laws = {"torch": 1 / 576 ** 0.5, "tf": (6 / 1152) ** 0.5, "mxnet": 0.07}
    for name, bound in laws.items():
        assert fig["default init"][f"std_{name}"] == pytest.approx(bound / 3 ** 0.5, rel=0.03)
    wd = fig["weight decay"]
    assert wd["no_momentum"] < 1e-6 and wd["momentum_0.9"] > 1e-3
    f32 = fig["float32 training"]
    assert 1e-3 < f32["torch_float32_vs_float64_gradients"] <= 1e-1
    assert 1e-12 < f32["keras_vs_torch_float64_step"] < 1e-6
    heap = fig["oneDNN strided 1x1 filter gradient"]
    assert heap["onednn"] >= 2 and heap["eigen"] == 0 and heap["suite"] == 0


def test_traps_command_prints_the_table(measured, monkeypatch, capsys):
    """`resnet-parity traps --markdown` prints one row per trap with its cited test (the
    measurements are the fixture's, not repeated)."""
    from common.tools.cli import main
    monkeypatch.setattr(traps, "findings", lambda log=None: list(measured.values()))
    asked = []

    def family(arch, log=None):
        asked.append(arch)
        return [traps.Finding(**dataclasses.asdict(t), measured="-") for t in traps.FAMILY_TRAPS]
    def convnext(arch, log=None):
        asked.append(arch)
        return [traps.Finding(**dataclasses.asdict(t), measured="-") for t in traps.CONVNEXT_TRAPS]
    monkeypatch.setattr(traps, "family_findings", family)
    monkeypatch.setattr(traps, "convnext_findings", convnext)
    assert main(["traps", "--markdown", "-q", "--arch", "resnext50_32x4d"]) == 0
    assert asked == ["resnext50_32x4d", "convnext_tiny"]
    assert main(["traps", "--markdown", "-q", "--arch", "convnext_small"]) == 0
    assert asked[2:] == ["resnet50", "convnext_small"]
    out = capsys.readouterr().out.split("| trap |")[1]
    lines = [line for line in ("| trap |" + out).splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(traps.TRAPS) + len(traps.FAMILY_TRAPS) + len(
        traps.CONVNEXT_TRAPS)  # header, one row each
    for line, t in zip(lines[1:], traps.TRAPS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == t.trap and cells[-1] == f"`{t.test}`"
        assert cells[4] == measured[t.trap].measured
