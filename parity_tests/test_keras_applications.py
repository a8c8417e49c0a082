"""keras.applications' ResNet50/101/152 checkpoints in and out, against keras.applications' own
code (``weights=None``: nothing downloaded). A ResNet-50 with random weights, conv biases and
BatchNorm statistics, 4 classes, on a non-square 61x47 input, is saved by Keras as
``.weights.h5`` and ``.keras``, converted (API and CLI) to canonical, PyTorch and Gluon files,
and each of the three suite frameworks is compared with keras.applications' model at the
stem pool, every stage and the logits; the suite's files written back load into
keras.applications' model bit for bit.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

import common.tools.cli as cli
from common import EVAL_RTOL_CPU, architecture, save_state
from common.core.compare import compare, format_rows, worst
from common.tools.convert import convert, inspect_checkpoint, open_checkpoint, resolve_spec
from common.tools.formats import FAMILIES, GLUON_PARAMS, TORCH, detect
from common.tools.formats.keras_applications import (
    KERAS_APPLICATIONS,
    KERAS_APPLICATIONS_WEIGHTS,
    member,
)

from .conftest import backend_or_skip, make_input

keras = pytest.importorskip("keras", reason="pip install 'resnet-parity[tf]'")

SHAPE = (61, 47, 3)
CLASSES = 4
# keras.applications' activation names -> the suite's: the stem pool, each stage's last block
KERAS_NAMES = {"pool1_pool": "stem.pool", "conv2_block3_out": "stages.0.2",
               "conv3_block4_out": "stages.1.3", "conv4_block6_out": "stages.2.5",
               "conv5_block3_out": "stages.3.2", "predictions": "head.fc"}


def _randomize(model, seed: int = 0) -> None:
    """Random biases and BatchNorm parameters and statistics (Keras's own init leaves biases
    and beta at 0, gamma and variance at 1: BatchNorm would be near the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for v in layer.weights:
            kind, shape = v.path.rsplit("/", 1)[-1], tuple(v.shape)
            if kind == "kernel":
                values.append(rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1])))
            elif kind in ("gamma", "moving_variance"):
                values.append(rng.uniform(0.5, 1.5, shape))
            else:  # bias, beta, moving_mean
                values.append(rng.normal(0.0, 0.1, shape))
        if values:
            layer.set_weights([a.astype(np.float32) for a in values])


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """keras.applications' ResNet50 (logits), its two files, and its activations on ``x``."""
    d = tmp_path_factory.mktemp("keras_apps")
    model = keras.applications.ResNet50(weights=None, classes=CLASSES, input_shape=SHAPE,
                                        classifier_activation=None)
    _randomize(model)
    model.save_weights(str(d / "r50.weights.h5"))
    model.save(str(d / "r50.keras"))
    x = make_input((2, *SHAPE), seed=1)              # NHWC
    probe = keras.Model(model.input, [model.get_layer(n).output for n in KERAS_NAMES])
    outs = [np.asarray(a) for a in probe(x, training=False)]
    ref = {ours: (np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a)
           for ours, a in zip(KERAS_NAMES.values(), outs)}
    return {"dir": d, "model": model, "x": np.transpose(x, (0, 3, 1, 2)).copy(), "ref": ref}


@pytest.fixture(scope="module")
def converted(r50):
    """SRC -> canonical, torch and Gluon (API; the .keras -> canonical once through the CLI)."""
    d, out = r50["dir"], {}
    t = time.perf_counter()
    out["cli"] = cli.main(["convert", str(d / "r50.keras"), str(d / "cli.safetensors"), "-q",
                           "--size", "32"])
    out["cli_seconds"] = time.perf_counter() - t
    for src, dst in (("r50.weights.h5", "r50.pt"), ("r50.keras", "r50.params"),
                     ("r50.weights.h5", "r50.safetensors")):
        out[dst] = convert(d / src, d / dst, size=32)
    return out


def test_files_are_recognised_with_no_flag(r50):
    for name, fmt in (("r50.weights.h5", KERAS_APPLICATIONS_WEIGHTS),
                      ("r50.keras", KERAS_APPLICATIONS)):
        ckpt = open_checkpoint(r50["dir"] / name)
        assert ckpt.format is fmt
        spec, source = resolve_spec(ckpt)
        assert spec == architecture("keras-resnet50", in_channels=3, num_classes=CLASSES), source
        assert inspect_checkpoint(r50["dir"] / name).architecture == (
            "keras-resnet50 (recognised from its blocks per stage)")


def test_conversions_verify(converted):
    assert converted["cli"] == 0
    print(f"\nCLI convert of a ResNet-50 .keras to canonical: {converted['cli_seconds']:.1f} s "
          "(in-process, verification included)")
    for dst in ("r50.pt", "r50.params", "r50.safetensors"):
        r = converted[dst]
        assert r.ok and r.verification.section.ok, dst
        print(f"{dst}: {', '.join(f'{k} {s:.2f} s' for k, s in r.seconds.items())}")


@pytest.mark.parametrize("framework, file, fmt", [("torch", "r50.pt", TORCH),
                                                   ("mxnet", "r50.params", GLUON_PARAMS),
                                                   ("tf", "cli.safetensors", None)])
def test_each_framework_computes_keras_applications_resnet50(r50, converted, framework, file,
                                                             fmt):
    be = backend_or_skip(framework)
    spec = architecture("keras-resnet50", num_classes=CLASSES)
    path = r50["dir"] / file
    fmt = fmt or detect(path)
    state = fmt.read(path, spec)
    model = be.build(spec)
    be.load_state(model, state)
    ours = be.activations(model, r50["x"])
    rows = compare(ours, r50["ref"], EVAL_RTOL_CPU, names=list(KERAS_NAMES.values()))
    print("\n" + format_rows(rows, f"{framework} vs keras.applications ResNet50, input "
                                   f"{r50['x'].shape}"))
    w = worst(rows)
    print(f"worst: {w.layer} max abs {w.max_abs:.3g}, max rel {w.max_rel:.3g}")
    assert all(r.ok for r in rows)
    assert np.abs(r50["ref"]["head.fc"]).max() > 0.1  # a comparison that could fail


def test_softmax_head_is_left_off_in_the_saved_graph(r50):
    """keras.applications puts a softmax on the classifier by default; the file's own graph is
    compared at the logits."""
    soft = keras.applications.ResNet50(weights=None, classes=CLASSES, input_shape=SHAPE)
    soft.set_weights(r50["model"].get_weights())
    path = r50["dir"] / "softmax.keras"
    soft.save(str(path))
    probs = np.asarray(soft(np.transpose(r50["x"], (0, 2, 3, 1)), training=False))
    logits = KERAS_APPLICATIONS.graph_forward(path, r50["x"])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    rows = compare({"softmax": e / e.sum(axis=1, keepdims=True)}, {"softmax": probs})
    assert rows[0].ok and not np.allclose(probs.sum(axis=1), logits.sum(axis=1))


@pytest.mark.parametrize("name", ["back.weights.h5", "back.keras"])
def test_written_files_load_into_keras_applications(r50, converted, name):
    d = r50["dir"]
    r = convert(d / "r50.safetensors", d / name, dst_format="keras-apps", size=32)
    assert r.ok and any(row.layer == "head.fc (saved graph)"
                        for rows in r.verification.section.pairs.values() for row in rows)
    if name.endswith(".keras"):
        model = keras.saving.load_model(str(d / name), compile=False, safe_mode=True)
    else:
        model = keras.applications.ResNet50(weights=None, classes=CLASSES, input_shape=SHAPE,
                                            classifier_activation=None)
        model.load_weights(str(d / name))
    theirs = {w.path: np.asarray(w) for w in r50["model"].weights}
    assert {w.path: np.asarray(w).shape for w in model.weights} == {
        k: v.shape for k, v in theirs.items()}
    assert all(np.array_equal(np.asarray(w), theirs[w.path]) for w in model.weights)


def test_resnet101_is_recognised(tmp_path):
    model = keras.applications.ResNet101(weights=None, classes=3, input_shape=(32, 32, 1))
    model.save_weights(str(tmp_path / "r101.weights.h5"))
    ckpt = open_checkpoint(tmp_path / "r101.weights.h5")
    spec, _ = resolve_spec(ckpt)
    assert spec == architecture("keras-resnet101", in_channels=1, num_classes=3)
    assert "keras-resnet101" in inspect_checkpoint(tmp_path / "r101.weights.h5").architecture
    state = ckpt.format.read(ckpt.path, spec, tensors=ckpt.tensors)
    conv = model.get_layer("conv4_block23_3_conv")
    assert np.array_equal(state["stages.2.22.conv3.bias"], np.asarray(conv.bias))


def test_include_top_false_is_refused(tmp_path):
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    for name, save in (("head.weights.h5", model.save_weights), ("head.keras", model.save)):
        save(str(tmp_path / name))
        with pytest.raises(ValueError, match=rf"{name}: .*include_top=False"):
            convert(tmp_path / name, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_misshaped_tensor_is_named(r50, tmp_path):
    import shutil

    import h5py
    path = tmp_path / "bad.weights.h5"
    shutil.copy(r50["dir"] / "r50.weights.h5", path)
    group = next(g for g in _groups(path) if g.startswith("layers/conv2d_"))
    with h5py.File(path, "r+") as f:
        del f[f"{group}/vars/1"]
        f[f"{group}/vars/1"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match=rf"bad.weights.h5: .*shape mismatch for {group}/vars/1 "
                                         r"\(\w+_conv/bias\): expected \(\d+,\), got \(7,\)"):
        convert(path, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def _groups(path) -> list[str]:
    import h5py
    with h5py.File(path, "r") as f:
        return sorted(f"layers/{g}" for g in f["layers"])


@pytest.mark.parametrize("name", ["r50.weights.h5", "r50.keras"])
def test_truncated_file_is_named(r50, tmp_path, name):
    data = (r50["dir"] / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{name}: not a readable"):
        convert(path, tmp_path / "x.pt")


def test_specs_keras_applications_has_not_are_refused_for_writing(r50, converted, tmp_path):
    keras50 = architecture("keras-resnet50", num_classes=CLASSES)
    assert member(keras50) == "keras-resnet50"
    for spec, field in ((dataclasses.replace(keras50, bn_eps=1e-5), "bn_eps"),
                        (dataclasses.replace(keras50, stride_at="3x3"), "stride_at"),
                        (architecture("resnet50"), "conv_bias"),
                        (dataclasses.replace(keras50, stage_blocks=(2, 2, 2, 2)), "stage_blocks")):
        with pytest.raises(ValueError, match=field):
            member(spec)
    src = r50["dir"] / "v15.safetensors"
    state = TORCH.read(r50["dir"] / "r50.pt", keras50)
    save_state(src, state, dataclasses.replace(keras50, stride_at="3x3"))
    with pytest.raises(ValueError, match="stride_at is '3x3', keras.applications' is '1x1'"):
        convert(src, tmp_path / "x.weights.h5", dst_format="keras-applications")
    assert not (tmp_path / "x.weights.h5").exists()
    assert FAMILIES["keras-applications"] == (KERAS_APPLICATIONS_WEIGHTS, KERAS_APPLICATIONS)

