"""The structure ``docs/architecture.md`` describes, checked from the source (no framework needed).

* Layers: ``common/core`` (framework-neutral) at the bottom, the framework packages above it,
  ``common/tools`` above them, and the ``common`` facade on top. Every import, module-level or
  inside a function, runs downward or stays within its layer; the core imports no framework.
* No import cycles among the project's modules, including those a function-local import hides.
* The framework packages are translations of each other: the same files, the same public names,
  the same signatures, with the differences that stay listed here with their reason.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK_PACKAGES = {"resnet_torch": {"torch"}, "resnet_tf": {"tensorflow", "keras"},
                      "resnet_mxnet": {"mxnet"}}
FRAMEWORKS = {"torch", "torchvision", "tensorflow", "keras", "mxnet", "jax"}
LAYERS = {"core": 0, "framework": 1, "tools": 2, "facade": 3}


@dataclass(frozen=True)
class Import:
    importer: str   # dotted module name
    target: str     # dotted name as imported (a project module where it resolves to one)
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def project_modules() -> dict[str, Path]:
    files = [p for pkg in ("common", *FRAMEWORK_PACKAGES) for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in sorted(files)}


def layer(module: str) -> str:
    if module == "common":
        return "facade"
    if module.startswith("common.core"):
        return "core"
    if module.startswith("common.tools"):
        return "tools"
    if module.split(".")[0] in FRAMEWORK_PACKAGES:
        return "framework"
    raise ValueError(f"{module} belongs to no layer")


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = project_modules()[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports() -> tuple[Import, ...]:
    """Every import statement of every project module, with where it sits."""
    modules, out = project_modules(), []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node

        def in_function(node: ast.AST) -> bool:
            while node in parents:
                node = parents[node]
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    return True
            return False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node)
                # `from pkg import module` imports the module; `from module import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            out += [Import(name, t, node.lineno, in_function(node)) for t in targets]
    return tuple(out)


def project_target(target: str) -> Optional[str]:
    """The project module an import loads (its longest importable prefix), or None."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in project_modules():
            return candidate
    return None


def edges() -> list[tuple[Import, str]]:
    return [(i, t) for i in imports() if (t := project_target(i.target)) is not None]


def where(i: Import) -> str:
    return f"{project_modules()[i.importer].relative_to(ROOT)}:{i.line}"


# -- layers ---------------------------------------------------------------------------------------

def test_every_module_belongs_to_a_layer():
    assert {layer(m) for m in project_modules()} == set(LAYERS)
    assert any(layer(m) == "core" for m in project_modules())


def test_imports_run_downward_or_stay_in_their_layer():
    bad = [f"{where(i)}: {layer(i.importer)} module {i.importer} imports {layer(t)} module {t}"
           for i, t in edges() if LAYERS[layer(t)] > LAYERS[layer(i.importer)]]
    assert not bad, "imports that run upward:\n" + "\n".join(bad)


def test_framework_packages_use_the_core_and_themselves_only():
    bad = []
    for i, t in edges():
        if layer(i.importer) != "framework" or t.split(".")[0] == i.importer.split(".")[0]:
            continue
        if layer(t) != "core":
            bad.append(f"{where(i)}: {i.importer} imports {t}")
    assert not bad, "\n".join(bad)


def test_each_framework_package_imports_its_own_framework_only():
    bad = []
    for i in imports():
        package, root = i.importer.split(".")[0], i.target.split(".")[0]
        own = FRAMEWORK_PACKAGES.get(package)
        if own is not None and root in FRAMEWORKS - own:
            bad.append(f"{where(i)}: {i.importer} imports {i.target}")
    assert not bad, "\n".join(bad)


def test_the_core_imports_no_framework_even_inside_a_function():
    bad = [f"{where(i)}: {i.importer} imports {i.target}" for i in imports()
           if layer(i.importer) == "core"
           and (i.target.split(".")[0] in FRAMEWORKS | set(FRAMEWORK_PACKAGES)
                or i.target.split(".")[0] == "importlib")]
    assert not bad, "\n".join(bad)
    for name, path in project_modules().items():
        if layer(name) == "core":
            assert "__import__" not in path.read_text(), f"{path}: a dynamic import in the core"


def test_tools_import_frameworks_only_inside_functions():
    """So that importing a tool (or ``common``) loads no framework: a PyTorch user never
    imports TensorFlow. Checked at run time by test_convert.py::test_common_imports_no_framework."""
    bad = [f"{where(i)}: {i.importer} imports {i.target} at module level" for i in imports()
           if layer(i.importer) in ("tools", "facade") and not i.in_function
           and i.target.split(".")[0] in FRAMEWORKS | set(FRAMEWORK_PACKAGES)]
    assert not bad, "\n".join(bad)


def _cycles() -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in project_modules()}
    for i, t in edges():
        if t != i.importer:
            graph[i.importer].add(t)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_not_even_through_function_local_imports():
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_function_local_imports(monkeypatch):
    """The check above can fail: a function-local import back up closes a cycle it reports."""
    spec, trace = "common.core.spec", "common.core.trace"
    hidden = Import(spec, trace, 1, in_function=True)
    real = imports()
    monkeypatch.setattr(sys.modules[__name__], "imports", lambda: real + (hidden,))
    assert [spec, trace] in _cycles()


# -- twins ----------------------------------------------------------------------------------------

# The one module each package has that its twins do not, and why.
OWN_MODULES = {
    "resnet_tf": {"_layout",      # the NCHW/NHWC and kernel-layout edge: only Keras computes NHWC
                  "freeze"},      # BatchNorm folding: PyTorch's and MXNet's inference graphs do it themselves
    "resnet_mxnet": {"_compat"},  # the numpy.bool shim MXNet 1.9.1 needs before `import mxnet`
    "resnet_torch": set(),
}
# Public names only one package has, and why.
OWN_NAMES = {
    "resnet_tf": {"PaddedConv2D", "PaddedMaxPooling2D",  # PyTorch's padding, which Keras lacks
                  "ResnetBlock",                           # d2l's Keras stage class
                  "FusedBatchNormalization"},              # TF's fused kernel, which Keras 3 dropped
    "resnet_torch": {"Conv2dSame", "MaxPool2dSame",   # TensorFlow's 'same', which PyTorch lacks
                     "LayerNorm2d"},                   # LayerNorm over NCHW channels (torchvision's)
    "resnet_mxnet": {"Conv2DSame", "MaxPool2DSame"},  # ... and Gluon lacks
}
# a GELU layer with its form named, exact in float64 (PyTorch's nn.GELU is one already)
OWN_NAMES["resnet_tf"] |= {"GELU"}
OWN_NAMES["resnet_mxnet"] |= {"GELU"}


def _tree(package: str, module: str) -> ast.Module:
    path = ROOT / package / f"{module}.py"
    return ast.parse(path.read_text(), str(path))


def _top_level(package: str, module: str) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in _tree(package, module).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return out


def test_twins_have_the_same_files():
    files = {p: {f.stem for f in (ROOT / p).glob("*.py")} - OWN_MODULES[p] for p in FRAMEWORK_PACKAGES}
    assert files["resnet_torch"] == files["resnet_tf"] == files["resnet_mxnet"], files
    assert files["resnet_torch"] >= {"__init__", "blocks", "model", "backend", "train", "bench",
                                     "distributed"}


def _exported(package: str) -> set[str]:
    for node in _tree(package, "__init__").body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{package}/__init__.py has no __all__")


def test_twins_export_the_same_names():
    exported = {p: _exported(p) - OWN_NAMES[p] for p in FRAMEWORK_PACKAGES}
    assert exported["resnet_torch"] == exported["resnet_tf"] == exported["resnet_mxnet"], exported
    assert {"Residual", "resnet_block", "batch_norm", "Stem", "Head", "ResNet", "resnet18",
            "residual_from_spec", "block_from_spec"} <= exported["resnet_torch"]


@pytest.mark.parametrize("module", ["blocks", "model", "convnext", "backend", "train", "bench",
                                    "distributed"])
def test_twin_modules_define_the_same_names(module):
    """Public names, and the private ones every backend shares (``_PARAM_NAMES``, ``_Ops``,
    ``_device``): a helper that exists in one twin exists in all three."""
    shared_private = {"_PARAM_NAMES", "_Ops", "_device"}
    names = {p: {n for n in _top_level(p, module) if not n.startswith("_") or n in shared_private}
             - OWN_NAMES[p] for p in FRAMEWORK_PACKAGES}
    assert names["resnet_torch"] == names["resnet_tf"] == names["resnet_mxnet"], names


def _params(node: ast.AST) -> tuple[list[str], list[str]]:
    """(positional, keyword-only) parameter names of a function, or of a class's __init__."""
    if isinstance(node, ast.ClassDef):
        node = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert isinstance(node, ast.FunctionDef)
    positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg != "self"]
    return positional, [a.arg for a in node.args.kwonlyargs]


# (module, name) -> the positional parameters each package adds in front of the shared ones, and
# the extra keyword-only ones. Why they differ: PyTorch layers need their input size when they
# are made (d2l's PyTorch Residual takes input_channels); Keras learns it when the layer is
# built; Gluon learns it on the first call unless told (in_channels, keyword-only, so that
# parameters exist at initialize()). Keras's batch_norm takes no channel count at all. Keras's
# resnet_block takes in_channels too: it decides whether a first block that does not downsample
# still needs a 1x1 conv shortcut (it widens, as every bottleneck network's first stage does).
SIGNATURES = {
    ("blocks", "batch_norm"): {"resnet_torch": ["num_channels"], "resnet_tf": [],
                               "resnet_mxnet": ["num_channels"]},
    ("blocks", "Residual"): {"resnet_torch": ["input_channels"], "resnet_mxnet": ["+in_channels"]},
    ("blocks", "Bottleneck"): {"resnet_torch": ["input_channels"], "resnet_mxnet": ["+in_channels"]},
    ("blocks", "resnet_block"): {"resnet_torch": ["input_channels"], "resnet_tf": ["+in_channels"],
                                 "resnet_mxnet": ["+in_channels"]},
    ("model", "Stem"): {"resnet_torch": ["input_channels"], "resnet_mxnet": ["+in_channels"]},
    ("model", "Head"): {"resnet_torch": ["input_channels"], "resnet_mxnet": ["+in_channels"]},
    ("model", "ResNet"): {},
    ("model", "resnet18"): {},
    ("model", "residual_from_spec"): {},
    ("model", "block_from_spec"): {},
    ("model", "bottleneck_from_spec"): {},
    # ConvNeXt: the same differences, for the same reasons; Keras's layer_norm takes no channel
    # count and no channels_first (Keras is NHWC: every LayerNorm is over the last axis)
    ("convnext", "layer_norm"): {"resnet_torch": ["num_channels", "+channels_first"], "resnet_tf": [],
                                 "resnet_mxnet": ["num_channels", "+channels_first"]},
    ("convnext", "gelu_layer"): {},
    ("convnext", "LayerScale"): {},
    ("convnext", "DropPath"): {},
    ("convnext", "ConvNeXtBlock"): {},
    ("convnext", "Downsample"): {"resnet_torch": ["input_channels"], "resnet_mxnet": ["+in_channels"]},
    ("convnext", "ConvNeXtStage"): {"resnet_torch": ["input_channels"],
                                    "resnet_mxnet": ["+in_channels"]},
    ("convnext", "PatchifyStem"): {"resnet_torch": ["input_channels"],
                                   "resnet_mxnet": ["+in_channels"]},
    ("convnext", "ConvNeXtHead"): {"resnet_torch": ["input_channels"],
                                   "resnet_mxnet": ["+in_channels"]},
    ("convnext", "ConvNeXt"): {},
    ("convnext", "convnext_from_spec"): {},
    ("convnext", "convnext_tiny"): {},
    ("train", "Trainer"): {},
    ("distributed", "Engine"): {},
    ("distributed", "DistributedTrainer"): {},
    ("bench", "runners"): {},
}


@pytest.mark.parametrize("module, name", SIGNATURES, ids=lambda v: str(v))
def test_twin_signatures_match_but_for_the_stated_differences(module, name):
    seen = {}
    for package in FRAMEWORK_PACKAGES:
        positional, keyword = _params(_top_level(package, module)[name])
        extra = SIGNATURES[(module, name)].get(package, [])
        if name in ("batch_norm", "layer_norm"):  # the channel count is the whole difference
            lead = [e for e in extra if not e.startswith("+")]
            assert positional == lead, (package, positional)
            positional = []
        else:
            lead = [e for e in extra if not e.startswith("+")]
            assert positional[:len(lead)] == lead, (package, positional)
            positional = positional[len(lead):]
        keyword = [k for k in keyword if f"+{k}" not in extra]
        seen[package] = (positional, keyword)
    assert seen["resnet_torch"] == seen["resnet_tf"] == seen["resnet_mxnet"], seen


def test_batch_norm_options_are_keyword_only_everywhere():
    for package in FRAMEWORK_PACKAGES:
        _, keyword = _params(_top_level(package, "blocks")["batch_norm"])
        assert {"bn_eps", "bn_momentum"} <= set(keyword), package


def test_resnet_tf_transposes_at_one_edge():
    """Only ``resnet_tf/_layout.py`` transposes: the backend, the loop and the bench use it."""
    bad = []
    for path in (ROOT / "resnet_tf").glob("*.py"):
        if path.name == "_layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "attr", getattr(node, "id", None))
            if name in ("transpose", "permute_dimensions"):
                bad.append(f"{path.name}:{node.lineno}")
    assert not bad, "transposes outside resnet_tf/_layout.py: " + ", ".join(bad)
