"""The d2l chapter's own checkpoints in and out (``convert`` with the ``d2l-*`` formats).

Each chapter network is built by the chapter's code as printed (:mod:`parity_tests.d2l_chapter`),
given random BatchNorm statistics, trained one SGD step in its own framework and saved the way
that framework saves. The file is then converted into the other frameworks and the converted
model's logits are compared with the chapter model's own, at 96, 97 and 224, batch 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import get_backend, random_state, resnet18_spec
from common.core.compare import diff
from common.core.spec import ResidualSpec, ResnetBlockSpec, d2l_keras_resnet18_spec
from common.core.state import save_state
from common.tools.convert import convert, open_checkpoint, resolve_spec
from common.tools.formats import D2L_MXNET, D2L_TF, D2L_TORCH, detect

from .conftest import backend_or_skip, randomize_batch_norms
from .d2l_chapter import gluon_chapter, keras_chapter, numpy_mode, torch_chapter

# These tests train d2l's Keras code as printed, whose Residual(6, use_1x1conv=True, strides=2)
# on an RGB input is the case TensorFlow's oneDNN filter gradient for strided 1x1 convolutions
# corrupts the heap in (the trap "oneDNN strided 1x1 filter gradient": a segmentation fault, or
# "malloc(): corrupted top size" in a later step). The chapter's code stays as printed, so each
# group runs in a child pytest process of its own (test_the_chapter_checkpoint_tests_in_children)
# with TensorFlow's own kernels, TF_ENABLE_ONEDNN_OPTS=0, the README's workaround; this variable
# lets the tests in, and a crash fails one named group instead of the whole run.
IN_CHILD = bool(os.environ.get("RESNET_PARITY_D2L_CHILD"))
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in a child process, see "
                                "test_the_chapter_checkpoint_tests_in_children")

SIZES = (96, 97, 224)
RTOL = 1e-5
SUITE_SUFFIX = {"torch": ".pt", "tf": ".weights.h5", "mxnet": ".params"}
D2L_SUFFIX = {"torch": ".pt", "tf": ".weights.h5", "mxnet": ".params"}


def _x(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return diff(a, b)[1]


# -- the chapter's code, driven as a learner drives it ----------------------------------------
class Chapter:
    """Build, randomise, train one step, save, load and run one framework's chapter code."""

    framework = ""
    fmt: Any = None

    def build(self, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        raise NotImplementedError

    def run(self, model: Any, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, model: Any, unit: str, in_channels: int) -> None:
        """Whatever the framework needs before a model has weights (Gluon: initialize)."""

    def randomise(self, model: Any, seed: int) -> None:
        raise NotImplementedError

    def step(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def save(self, model: Any, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        raise NotImplementedError

    def trained(self, unit: str, path: Path, in_channels: int = 1, num_classes: int = 10,
                train_size: int = 64) -> Any:
        """A chapter model with random BatchNorm statistics, one SGD step, saved at ``path``."""
        model = self.build(unit, in_channels, num_classes)
        self.prepare(model, unit, in_channels)
        self.randomise(model, seed=1)
        x = _x((4, in_channels if unit == "net" else 3, train_size, train_size), seed=2)
        self.step(model, x, np.arange(4) % (num_classes if unit == "net" else 6 if
                                             unit == "residual" else 8))
        self.save(model, path)
        return model


class TorchChapter(Chapter):
    framework, fmt = "torch", D2L_TORCH

    def build(self, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        import torch
        d2l = torch_chapter()
        if unit == "residual":
            return d2l.Residual(3, 6, use_1x1conv=True, strides=2)
        if unit == "block":
            return torch.nn.Sequential(*d2l.resnet_block(3, 8, 2))
        net = d2l.net()
        if in_channels != 1:   # as a learner adapts the chapter's b1 and Linear
            net[0][0] = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        if num_classes != 10:
            net[-1] = torch.nn.Linear(512, num_classes)
        return net

    def run(self, model: Any, x: np.ndarray) -> np.ndarray:
        import torch
        model.eval()
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    def randomise(self, model: Any, seed: int) -> None:
        import torch
        torch.manual_seed(seed)
        randomize_batch_norms(model)

    def step(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        import torch
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(torch.from_numpy(x))
        logits = out if out.ndim == 2 else out.mean((2, 3))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
        opt.step()
        model.eval()

    def save(self, model: Any, path: Path) -> None:
        import torch
        torch.save(model.state_dict(), path)

    def load(self, path: Path, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        import torch
        model = self.build(unit, in_channels, num_classes)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()


class KerasChapter(Chapter):
    framework, fmt = "tf", D2L_TF

    def build(self, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        import tensorflow as tf
        d2l = keras_chapter()
        if unit == "residual":
            model, c = d2l.Residual(6, use_1x1conv=True, strides=2), 3
        elif unit == "block":
            model, c = tf.keras.Sequential([d2l.ResnetBlock(8, 2)]), 3
        else:
            model, c = d2l.net(), in_channels
            if num_classes != 10:  # as a learner adapts the chapter's Dense
                model.pop()
                model.add(tf.keras.layers.Dense(units=num_classes))
        model(np.zeros((1, 16, 16, c), np.float32))
        return model

    def run(self, model: Any, x: np.ndarray) -> np.ndarray:
        y = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
        return y if y.ndim == 2 else y.transpose(0, 3, 1, 2)

    def randomise(self, model: Any, seed: int) -> None:
        rng = np.random.default_rng(seed)
        draw = {"gamma": lambda n: rng.uniform(0.5, 1.5, n), "beta": lambda n: rng.normal(0, 0.2, n),
                "moving_mean": lambda n: rng.normal(0, 0.2, n),
                "moving_variance": lambda n: rng.uniform(0.5, 2.0, n)}
        for v in model.variables:
            if v.name in draw:
                v.assign(draw[v.name](v.shape).astype(np.float32))

    def step(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        import tensorflow as tf
        opt = tf.keras.optimizers.SGD(learning_rate=0.1)
        with tf.GradientTape() as tape:
            out = model(x.transpose(0, 2, 3, 1), training=True)
            logits = out if len(out.shape) == 2 else tf.reduce_mean(out, axis=(1, 2))
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    def save(self, model: Any, path: Path) -> None:
        model.save_weights(str(path))

    def load(self, path: Path, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        model = self.build(unit, in_channels, num_classes)
        model.load_weights(str(path))
        return model


class GluonChapter(Chapter):
    framework, fmt = "mxnet", D2L_MXNET

    def __init__(self, edition: str) -> None:
        self.edition = edition

    def _array(self, x: np.ndarray) -> Any:
        from resnet_mxnet._compat import mx
        return mx.np.array(x) if self.edition == "np" else mx.nd.array(x)

    def build(self, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        from resnet_mxnet._compat import nn
        with numpy_mode(self.edition):
            d2l = gluon_chapter(self.edition)
            if unit == "residual":
                model = d2l.Residual(6, use_1x1conv=True, strides=2)
            elif unit == "block":
                model = d2l.resnet_block(8, 2)
            else:
                model = d2l.net()
                if num_classes != 10:  # as a learner adapts the chapter's Dense
                    model.register_child(nn.Dense(num_classes), str(len(model) - 1))
            return model

    def prepare(self, model: Any, unit: str, in_channels: int) -> None:
        with numpy_mode(self.edition):
            model.initialize()
            model(self._array(np.zeros((1, in_channels if unit == "net" else 3, 16, 16),
                                       np.float32)))

    def run(self, model: Any, x: np.ndarray) -> np.ndarray:
        with numpy_mode(self.edition):
            return model(self._array(x)).asnumpy()

    def randomise(self, model: Any, seed: int) -> None:
        rng = np.random.default_rng(seed)
        draw = {"gamma": lambda n: rng.uniform(0.5, 1.5, n), "beta": lambda n: rng.normal(0, 0.2, n),
                "running_mean": lambda n: rng.normal(0, 0.2, n),
                "running_var": lambda n: rng.uniform(0.5, 2.0, n)}
        with numpy_mode(self.edition):
            for name, p in model.collect_params().items():
                kind = name.rsplit("_", 1)[-1]
                if kind in ("mean", "var"):
                    kind = "running_" + kind
                if kind in draw:
                    p.set_data(self._array(draw[kind](p.shape).astype(np.float32)))

    def step(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        from resnet_mxnet._compat import autograd, gluon
        with numpy_mode(self.edition):
            trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.1})
            loss = gluon.loss.SoftmaxCrossEntropyLoss()
            with autograd.record():
                out = model(self._array(x))
                logits = out if out.ndim == 2 else out.mean(axis=(2, 3))
                loss(logits, self._array(y.astype(np.float32))).backward()
            trainer.step(len(y))

    def save(self, model: Any, path: Path) -> None:
        with numpy_mode(self.edition):
            model.save_parameters(str(path))

    def load(self, path: Path, unit: str, in_channels: int = 1, num_classes: int = 10) -> Any:
        model = self.build(unit, in_channels, num_classes)
        with numpy_mode(self.edition):
            model.load_parameters(str(path))
        return model


@dataclasses.dataclass
class Remote:
    """A chapter model that lives in a file, run by :class:`IsolatedChapter` in a child."""

    path: Path
    unit: str
    in_channels: int
    num_classes: int


class IsolatedChapter(Chapter):
    """The Gluon ``np`` edition, each use in a child process of its own. MXNet 1.9.1 in numpy
    mode corrupts the heap of its process (``save_parameters`` of a ResNet-18, then TensorFlow
    aborts: "malloc(): corrupted top size"); a child keeps that out of the test process."""

    framework, fmt = "mxnet", D2L_MXNET

    def __init__(self) -> None:
        self.edition = "np"

    def _child(self, call: str) -> None:
        code = (f"from pathlib import Path; import numpy as np; "
                f"from parity_tests.test_d2l_checkpoints import GluonChapter; "
                f"g = GluonChapter('np'); {call}")
        run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]

    def trained(self, unit: str, path: Path, in_channels: int = 1, num_classes: int = 10,
                train_size: int = 64) -> Remote:
        self._child(f"g.trained({unit!r}, Path({str(path)!r}), {in_channels}, {num_classes}, "
                    f"{train_size})")
        return Remote(path, unit, in_channels, num_classes)

    def load(self, path: Path, unit: str, in_channels: int = 1, num_classes: int = 10) -> Remote:
        return Remote(path, unit, in_channels, num_classes)

    def run(self, model: Remote, x: np.ndarray) -> np.ndarray:
        xin, out = model.path.with_suffix(".x.npy"), model.path.with_suffix(".y.npy")
        np.save(xin, x)
        self._child(f"m = g.load(Path({str(model.path)!r}), {model.unit!r}, {model.in_channels}, "
                    f"{model.num_classes}); np.save({str(out)!r}, "
                    f"g.run(m, np.load({str(xin)!r})))")
        return np.load(out)


CHAPTERS = {"torch": TorchChapter(), "tf": KerasChapter(), "mxnet-nd": GluonChapter("nd"),
            "mxnet-np": IsolatedChapter()}
SOURCES = list(CHAPTERS)


@dataclasses.dataclass
class Saved:
    chapter: Chapter
    path: Path
    outputs: dict[int, np.ndarray]     # the chapter model's own logits, by input size


_saved: dict[tuple, Saved] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("d2l")


def saved(name: str, workdir: Path, unit: str = "net", sizes: tuple[int, ...] = SIZES) -> Saved:
    """The chapter ``name``'s trained ``unit``, saved natively, with its own outputs (cached)."""
    key = (name, unit, sizes)
    if key not in _saved:
        chapter = CHAPTERS[name]
        backend_or_skip(chapter.framework)
        path = workdir / f"chapter-{name}-{unit}{D2L_SUFFIX[chapter.framework]}"
        model = chapter.trained(unit, path)
        c = 1 if unit == "net" else 3
        outputs = {s: chapter.run(model, _x((2, c, s, s), seed=s)) for s in sizes}
        _saved[key] = Saved(chapter, path, outputs)
    return _saved[key]


def suite_outputs(path: Path, framework: str, spec: Any, sizes: tuple[int, ...]) -> dict:
    """Read the suite's file ``path`` in ``framework`` and run it at ``sizes`` (batch 2)."""
    be = get_backend(framework)
    fmt = detect(path, framework)
    model = be.build(spec)
    be.load_state(model, fmt.read(path, spec))
    c = spec.in_channels if hasattr(spec, "in_channels") else spec.input_channels
    return {s: be.forward(model, _x((2, c, s, s), seed=s)) for s in sizes}


EXPECTED = {"torch": resnet18_spec(), "tf": d2l_keras_resnet18_spec(),
            "mxnet-nd": resnet18_spec(), "mxnet-np": resnet18_spec()}


# -- in: recognised, converted, compared ------------------------------------------------------
@child_only
@pytest.mark.parametrize("name", SOURCES)
def test_chapter_checkpoint_is_recognised_with_its_function(name, workdir):
    s = saved(name, workdir)
    ckpt = open_checkpoint(s.path)
    assert ckpt.format is s.chapter.fmt
    spec, source = resolve_spec(ckpt)
    assert spec == EXPECTED[name], source
    assert "chapter's layout" in source


@child_only
@pytest.mark.parametrize("name,dst", [(n, d) for n in SOURCES for d in ("torch", "tf", "mxnet")
                                      if CHAPTERS[n].framework != d])
def test_chapter_checkpoint_runs_in_the_other_frameworks(name, dst, workdir, capsys):
    """The converted model computes the chapter model's logits, at even and odd sizes."""
    backend_or_skip(dst)
    s = saved(name, workdir)
    out = workdir / f"from-{name}-to-{dst}{SUITE_SUFFIX[dst]}"
    result = convert(s.path, out, dst_format=dst, force=True)
    assert result.ok and out.exists()
    got = suite_outputs(out, dst, result.spec, SIZES)
    figures = {size: diff(got[size], s.outputs[size]) for size in SIZES}
    with capsys.disabled():
        print(f"\n  d2l {name} -> {dst}: " + ", ".join(
            f"{size}: max|a-b| {a:.2e}, rel {r:.2e}" for size, (a, r) in figures.items()))
    for size, (_, rel) in figures.items():
        assert rel <= RTOL, (size, rel)


@child_only
@pytest.mark.parametrize("name", SOURCES)
def test_round_trip_through_the_suite_is_bit_exact(name, workdir):
    """chapter file -> canonical -> chapter file: every weight and statistic identical, and the
    chapter's own code loads it and computes the very same logits."""
    s = saved(name, workdir)
    canonical = workdir / f"rt-{name}.safetensors"
    assert convert(s.path, canonical, force=True).ok
    back = workdir / f"rt-{name}{D2L_SUFFIX[s.chapter.framework]}"
    result = convert(canonical, back, dst_format=s.chapter.fmt.family, force=True)
    assert result.ok and result.change is None
    original, written = s.chapter.fmt.tensors(s.path), s.chapter.fmt.tensors(back)
    weights = [k for k in original if not k.endswith("num_batches_tracked")]
    assert sorted(weights) == sorted(k for k in written if not k.endswith("num_batches_tracked"))
    for k in weights:
        np.testing.assert_array_equal(written[k], original[k], err_msg=k)
    model = s.chapter.load(back, "net")
    x = _x((2, 1, 96, 96), seed=96)
    np.testing.assert_array_equal(s.chapter.run(model, x), s.outputs[96])


@child_only
@pytest.mark.parametrize("framework", ["torch", "tf", "mxnet-nd", "mxnet-np"])
def test_suite_model_loads_into_the_chapter_code(framework, workdir):
    """A suite model of the chapter's function, written as the chapter's file, loaded by the
    chapter's own load_state_dict / load_weights / load_parameters."""
    chapter = CHAPTERS[framework]
    be = backend_or_skip(chapter.framework)
    spec = EXPECTED[framework]
    state = random_state(spec, seed=7)
    src = workdir / f"suite-{framework}.safetensors"
    save_state(src, state, spec)
    dst = workdir / f"for-chapter-{framework}{D2L_SUFFIX[chapter.framework]}"
    assert convert(src, dst, dst_format=chapter.fmt.family, force=True).ok
    model = chapter.load(dst, "net")
    suite = be.build(spec)
    be.load_state(suite, state)
    for size in (96, 97):
        x = _x((2, 1, size, size), seed=size)
        assert _rel(chapter.run(model, x), be.forward(suite, x)) <= RTOL


@child_only
@pytest.mark.parametrize("edition", ["nd", "np"])
def test_pytorch_chapter_checkpoint_into_the_gluon_chapter_code(edition, workdir):
    """The chapter's PyTorch and Gluon code compute one function: a checkpoint moves between
    them directly, with no function change."""
    backend_or_skip("mxnet")
    s = saved("torch", workdir)
    dst = workdir / f"torch-to-gluon-{edition}.params"
    result = convert(s.path, dst, dst_format="d2l-mxnet", force=True)
    assert result.ok and result.change is None
    gluon = CHAPTERS[f"mxnet-{edition}"]
    model = gluon.load(dst, "net")
    for size in (96, 97):
        assert _rel(gluon.run(model, _x((2, 1, size, size), seed=size)), s.outputs[size]) <= RTOL


# -- the function: d2l's Keras code is another one -----------------------------------------------
@child_only
def test_keras_chapter_into_the_pytorch_chapter_code_is_refused_and_measured(workdir):
    backend_or_skip("torch")
    s = saved("tf", workdir)
    dst = workdir / "keras-to-torch-chapter.pt"
    result = convert(s.path, dst, dst_format="d2l-torch", force=True)
    assert result.refused and not result.written and not dst.exists()
    assert set(result.change.fields) == {"padding", "bn_eps", "bn_momentum"}
    logits = next(iter(result.change.section.pairs.values()))[-1]
    assert logits.layer == "head.fc" and logits.max_rel > 1e-3
    allowed = convert(s.path, dst, dst_format="d2l-torch", force=True, allow_function_change=True)
    assert allowed.ok and dst.exists()
    # what the PyTorch chapter code now computes is the symmetric function of the same weights
    torch_be = get_backend("torch")
    model = torch_be.build(resnet18_spec())
    torch_be.load_state(model, D2L_TF.read(s.path, d2l_keras_resnet18_spec()))
    x = _x((2, 1, 96, 96), seed=96)
    chapter = CHAPTERS["torch"].load(dst, "net")
    assert _rel(CHAPTERS["torch"].run(chapter, x), torch_be.forward(model, x)) <= RTOL


@child_only
def test_keras_chapter_function_differs_from_the_pytorch_one_at_even_sizes(workdir):
    """The d2l Keras checkpoint, read as the suite's PyTorch-equivalent function, would quietly
    change the model: its logits move by far more than rounding."""
    torch_be = backend_or_skip("torch")
    s = saved("tf", workdir)
    state = D2L_TF.read(s.path, d2l_keras_resnet18_spec())
    same, symmetric = torch_be.build(d2l_keras_resnet18_spec()), torch_be.build(resnet18_spec())
    torch_be.load_state(same, state)
    torch_be.load_state(symmetric, state)
    x = _x((2, 1, 96, 96), seed=96)
    assert _rel(torch_be.forward(same, x), s.outputs[96]) <= RTOL
    assert _rel(torch_be.forward(symmetric, x), s.outputs[96]) > 1e-3


@child_only
def test_cli_refuses_a_function_change_and_prints_the_figure(workdir):
    backend_or_skip("tf")
    s = saved("torch", workdir)
    dst = workdir / "cli-torch-to-keras-chapter.weights.h5"
    run = subprocess.run([sys.executable, "-m", "common.tools.cli", "convert", str(s.path),
                          str(dst), "--to", "d2l-tf", "-q"], capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert "REFUSED" in run.stdout and "function change at head.fc" in run.stdout
    assert not dst.exists()
    run = subprocess.run([sys.executable, "-m", "common.tools.cli", "convert", str(s.path),
                          str(dst), "--to", "d2l-tf", "-q", "--allow-function-change"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout and dst.exists()


# -- alone, and any classes and channels --------------------------------------------------------
UNIT_SPECS = {
    "residual": dict(cls=ResidualSpec, input_channels=3, num_channels=6, use_1x1conv=True,
                     strides=2),
    "block": dict(cls=ResnetBlockSpec, input_channels=3, num_channels=8, num_residuals=2,
                  first_block=False),
}


@child_only
@pytest.mark.parametrize("name", ["torch", "tf", "mxnet-np"])
@pytest.mark.parametrize("unit", ["residual", "block"])
def test_a_residual_or_resnet_block_alone(name, unit, workdir):
    """The chapter's Residual and resnet_block saved alone are recognised and converted."""
    s = saved(name, workdir, unit, sizes=(8, 9))
    ckpt = open_checkpoint(s.path)
    assert ckpt.format is s.chapter.fmt
    spec, _ = resolve_spec(ckpt)
    fields = dict(UNIT_SPECS[unit])
    assert isinstance(spec, fields.pop("cls"))
    assert {k: getattr(spec, k) for k in fields} == fields
    assert spec.padding == ("same" if name == "tf" else "symmetric")
    dst = {"torch": "tf", "tf": "mxnet", "mxnet-np": "torch"}[name]
    backend_or_skip(dst)
    out = workdir / f"{unit}-{name}-to-{dst}{SUITE_SUFFIX[dst]}"
    result = convert(s.path, out, dst_format=dst, force=True, size=9)
    assert result.ok
    got = suite_outputs(out, dst, result.spec, (8, 9))
    for size in (8, 9):
        assert _rel(got[size], s.outputs[size]) <= RTOL, size


@child_only
@pytest.mark.parametrize("name", ["torch", "tf", "mxnet-nd"])
def test_any_classes_and_input_channels(name, workdir):
    chapter = CHAPTERS[name]
    backend_or_skip(chapter.framework)
    path = workdir / f"rgb5-{name}{D2L_SUFFIX[chapter.framework]}"
    model = chapter.trained("net", path, in_channels=3, num_classes=5)
    spec, _ = resolve_spec(open_checkpoint(path))
    assert (spec.in_channels, spec.num_classes) == (3, 5)
    dst = "tf" if name != "tf" else "torch"
    backend_or_skip(dst)
    out = workdir / f"rgb5-{name}-to-{dst}{SUITE_SUFFIX[dst]}"
    assert convert(path, out, dst_format=dst, force=True).ok
    got = suite_outputs(out, dst, spec, (64,))[64]
    assert got.shape == (2, 5)
    assert _rel(got, chapter.run(model, _x((2, 3, 64, 64), seed=64))) <= RTOL


# -- refusals that name the problem ---------------------------------------------------------
@child_only
def test_a_spec_the_chapter_code_cannot_hold_is_refused_by_name(workdir):
    backend_or_skip("torch")
    spec = dataclasses.replace(resnet18_spec(), conv_bias=False, shortcut_bn=True)
    src = workdir / "tv-like.safetensors"
    save_state(src, random_state(spec), spec)
    with pytest.raises(ValueError, match=r"conv_bias=False.*shortcut_bn=True"):
        convert(src, workdir / "no.pt", dst_format="d2l-torch", force=True)
    assert not (workdir / "no.pt").exists()


@child_only
def test_a_damaged_chapter_file_is_named(workdir):
    import torch
    s = saved("torch", workdir)
    sd = torch.load(s.path, weights_only=True)
    del sd["3.1.bn2.running_var"]
    bad = workdir / "missing.pt"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"missing\.pt.*3\.1\.bn2\.running_var"):
        convert(bad, workdir / "x.weights.h5", src_format="d2l-torch", force=True)
    cut = workdir / "cut.pt"
    cut.write_bytes(s.path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut\.pt"):
        convert(cut, workdir / "y.weights.h5", force=True)


GROUPS = {"in": "recognised or other_frameworks",
          "out": "round_trip or loads_into or pytorch_chapter_into",
          "function": "refused or differs or cli_refuses",
          "alone": "alone",
          "any": "any_classes or cannot_hold or damaged"}


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
@pytest.mark.parametrize("group", GROUPS)
def test_the_chapter_checkpoint_tests_in_children(group):
    """The tests above, one group per child pytest process; the figures are printed. A child
    killed by a signal (the native crash above) is run once more and says so; a failed
    assertion is never retried."""
    def child() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                               __file__, "-k", GROUPS[group]], cwd=Path(__file__).parents[1],
                              capture_output=True, text=True,
                              env={**os.environ, "RESNET_PARITY_D2L_CHILD": "1",
                                   "TF_ENABLE_ONEDNN_OPTS": "0"})
    run = child()
    if run.returncode < 0:
        print(f"\n  group {group!r}: the child died by signal {-run.returncode}; run again")
        run = child()
    # a native crash ends stderr with faulthandler's list of extension modules: show its stack
    stderr = run.stderr.split("\nExtension modules:")[0]
    assert run.returncode == 0, run.stdout[-4000:] + stderr[-3000:]
    assert re.search(r"\d+ passed", run.stdout) and " failed" not in run.stdout, run.stdout[-800:]
    print("\n".join(line for line in run.stdout.splitlines() if line.startswith("  d2l ")))
