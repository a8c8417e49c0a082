"""``resnet-parity train``: d2l's recipe in each framework on the built-in digits, the
same-init comparison, checkpoints that cross frameworks, Ctrl-C safety, and colour data
(CIFAR-10's four vehicle classes, written here in its binary format)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common import (
    BACKEND_NAMES,
    compare,
    get_backend,
    load_state_file,
    resnet18_spec,
    worst,
    xavier_state,
)
from common.core.compare import global_floor
from common.core.data import ImageData, Split, load_builtin
from common.core.spec import ARCHITECTURES, architecture, param_shapes
from common.core.step_parity import tolerance
from common.tools.training_runs import TrainConfig, initial_state, train

from .conftest import backend_or_skip

# A short run of the d2l recipe on the built-in digits: ResNet-18, SGD lr 0.05, 32x32 images,
# batch 64, 2 epochs (46 steps). Measured on an Intel Xeon, seeds 0-2, all three frameworks:
# train accuracy 0.94-0.96 in epoch 2, but test accuracy, in eval mode on BatchNorm running
# statistics that lag 46 steps of lr 0.05, anywhere from 0.38 to 0.95 (Keras, seed 0: 0.95,
# and 0.38 with one shortcut's filter gradient summed in another order). The runs drift
# apart from the third step on, so where the test accuracy lands is a draw; that it is far
# above chance (0.1) is not.
CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05, resize=32, seed=0)
MIN_TRAIN_ACC, MIN_TEST_ACC = 0.9, 0.3


@pytest.fixture(scope="module")
def digits():
    return load_builtin()


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory, installed):
    names = list(installed)
    if len(names) < 2:
        pytest.skip("needs two installed frameworks")
    out = tmp_path_factory.mktemp("train")
    lines: list[str] = []
    result = train(names, digits, CFG, out, progress=False, print_fn=lines.append)
    return {r.name: r for r in result}, out, lines


def test_builtin_data_is_real_and_split(digits):
    assert digits.train.images.shape == (1438, 8, 8) and digits.test.images.shape == (359, 8, 8)
    assert digits.train.images.dtype == np.uint8 and digits.train.images.max() == 255
    assert set(np.unique(digits.test.labels)) == set(range(10))  # every class in the test split
    assert not set(map(bytes, digits.train.images)) & set(map(bytes, digits.test.images[:50]))


def test_each_framework_learns(runs):
    by_name, _, lines = runs
    for name, r in by_name.items():
        assert len(r.history) == CFG.epochs
        assert r.history[-1].train_acc >= MIN_TRAIN_ACC, (name, r.history[-1])
        assert r.history[-1].test_acc >= MIN_TEST_ACC, (name, r.history[-1])
        assert r.history[-1].loss < r.history[0].loss
        assert r.history[-1].examples_per_sec > 0
    assert any(line.strip().startswith("torch epoch 2: loss") and "examples/sec" in line
               for line in lines) or "torch" not in by_name


def test_same_init_runs_start_together(runs):
    """Same initial state, same batches: the first step's loss agrees to float32 rounding; from
    the second on, float32 BatchNorm training drifts (measured 8e-4 at step 2, lr 0.05), and
    by step 3 the losses are 4-7% apart. Where the runs end after two epochs is then a draw,
    not a property of a framework (test accuracy 0.38 to 0.95, see CFG), so no gap is asserted
    here (each framework learning is, in ``test_each_framework_learns``)."""
    by_name, _, _ = runs
    names = list(by_name)
    steps = {n: by_name[n].history[0].step_losses for n in names}
    assert len({len(s) for s in steps.values()}) == 1 and len(steps[names[0]]) == 23
    ref = steps[names[0]]
    for n in names[1:]:
        assert abs(steps[n][0] - ref[0]) <= tolerance("loss") * ref[0]
        assert abs(steps[n][1] - ref[1]) <= 1e-2 * ref[1]


def test_files_of_a_run(runs):
    by_name, out, lines = runs
    table = lines[-1].splitlines()  # how far apart the runs end
    n = len(by_name)
    assert table[0] == "after 2 epochs:" and "params (rel L2)" in table[2 + n]
    assert len(table) == 2 + n + 1 + n * (n - 1) // 2
    for name, r in by_name.items():
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
        assert metrics["config"]["lr"] == 0.05 and metrics["framework"] == name
        assert r.native.is_file() and r.checkpoint.is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert [d["epoch"] for d in comparison["drift"]] == [1, 2]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*tmp*"))


def test_checkpoints_cross_frameworks(runs, digits):
    """A checkpoint written by one framework's run gives the same predictions in the others."""
    by_name, _, _ = runs
    x, _ = ImageData(digits.test, CFG.resize).batch(np.arange(64))
    for writer, r in by_name.items():
        state, spec = load_state_file(r.checkpoint)
        logits = {}
        for reader in by_name:
            be = get_backend(reader)
            model = be.build(spec)
            be.load_state(model, state)
            logits[reader] = be.forward(model, x)
        for reader, y in logits.items():
            assert (y.argmax(1) == logits[writer].argmax(1)).all(), (writer, reader)
            assert worst(compare({"y": y}, {"y": logits[writer]})).max_rel <= 1e-5


def test_native_checkpoints_equal_the_canonical_ones(runs):
    by_name, _, _ = runs
    for name, r in by_name.items():
        be = get_backend(name)
        model = be.build(r.spec)
        if name == "torch":
            import torch
            model.load_state_dict(torch.load(r.native, weights_only=True))
        elif name == "tf":
            model.load_weights(str(r.native))
        else:
            model.load_parameters(str(r.native))
        canonical, _ = load_state_file(r.checkpoint)
        native = be.export_state(model)
        assert all(np.array_equal(native[k], canonical[k]) for k in canonical), name


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_the_framework_loop_takes_sgd_steps(name, digits):
    """Each idiomatic loop (DataLoader/optimizer, Keras fit, Gluon Trainer) takes the steps
    sgd_step takes -- which test_training.py proves equal across frameworks in float64."""
    be = backend_or_skip(name)
    spec, state = resnet18_spec(), xavier_state(resnet18_spec(), 3)

    def both(n_images):
        data = ImageData(Split(digits.train.images[:n_images], digits.train.labels[:n_images]), 16)
        loop, twin, losses = be.build(spec), be.build(spec), []
        be.load_state(loop, state)
        be.load_state(twin, state)
        be.trainer(loop, data, 32, 0.05, seed=1).run_epoch(0, lambda loss, n: losses.append(loss))
        steps = [be.sgd_step(twin, *data.batch(idx), 0.05) for idx in data.order(32, 0, 1)]
        return losses, steps, be.export_state(loop), be.export_state(twin)

    losses, steps, _, _ = both(96)          # three steps: the loss of each
    assert len(losses) == len(steps) == 3
    assert losses[0] == pytest.approx(steps[0], rel=1e-5)
    np.testing.assert_allclose(losses, steps, rtol=2e-3)
    _, _, after_loop, after_step = both(32)  # one step: every parameter and statistic
    rows = compare(after_loop, after_step, floor=global_floor(after_step))
    assert worst(rows).max_rel <= tolerance("steps", "float32", 1)


def test_ctrl_c_keeps_the_last_complete_epoch(digits, tmp_path, monkeypatch):
    be = backend_or_skip("torch")
    import resnet_torch.train as torch_train
    real = torch_train.Trainer.run_epoch

    def interrupted(self, epoch, on_batch):
        if epoch == 1:
            on_batch(1.0, 1)
            raise KeyboardInterrupt
        return real(self, epoch, on_batch)
    monkeypatch.setattr(torch_train.Trainer, "run_epoch", interrupted)
    small = type(digits)(digits.name, Split(digits.train.images[:128], digits.train.labels[:128]),
                         digits.test, digits.classes)
    cfg = TrainConfig(epochs=3, batch_size=64, resize=16)
    with pytest.raises(KeyboardInterrupt):
        train(["torch"], small, cfg, tmp_path, progress=False, print_fn=lambda m: None)
    metrics = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    state, spec = load_state_file(tmp_path / "torch" / "resnet18.safetensors")
    model = be.build(spec)
    be.load_state(model, state)  # intact and loadable
    assert sorted(p.name for p in (tmp_path / "torch").iterdir()) == [
        "metrics.json", "resnet18.pt", "resnet18.safetensors"]


def test_train_cli(tmp_path, capsys):
    backend_or_skip("torch")
    from common.tools.cli import main
    code = main(["train", "--framework", "torch", "--epochs", "1", "--batch-size", "128",
                 "--resize", "16", "--out", str(tmp_path), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "torch epoch 1: loss" in out and "metrics.json" in out
    checkpoint = tmp_path / "torch" / "resnet18.safetensors"
    from common.core.state import read_preprocessing
    pre = read_preprocessing(checkpoint)  # what predict and levels will feed it
    assert (pre.size, pre.channels, pre.resample, pre.rescale) == ((16, 16), "L", "bilinear",
                                                                   1 / 255)
    code = main(["train", "--framework", "torch", "--epochs", "1", "--batch-size", "128",
                 "--resize", "16", "--out", str(tmp_path / "again"), "--init", str(checkpoint),
                 "-q"])
    assert code == 0 and "init " + str(checkpoint) in capsys.readouterr().out
    from common import random_state, resnet18_spec, save_state
    other = resnet18_spec(num_classes=3)
    save_state(tmp_path / "three.safetensors", random_state(other), other)
    code = main(["train", "--epochs", "1", "--out", str(tmp_path / "x"),
                 "--init", str(tmp_path / "three.safetensors")])
    assert code == 2 and "three.safetensors" in capsys.readouterr().err
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "train-images-idx3-ubyte.gz: missing" in err
    assert "resnet-parity data fashion-mnist" in err


def test_train_cli_trains_a_member_of_the_family(tmp_path, capsys):
    """--arch: a pre-activation network, 1 input channel and the data's 10 classes; the
    checkpoint carries that spec and the loss goes down on the built-in digits."""
    backend_or_skip("torch")
    from common.tools.cli import main
    code = main(["train", "--framework", "torch", "--arch", "resnet18_v2", "--epochs", "1",
                 "--batch-size", "64", "--resize", "16", "--out", str(tmp_path), "-q"])
    assert code == 0 and "resnet18_v2, init xavier" in capsys.readouterr().out
    state, spec = load_state_file(tmp_path / "torch" / "resnet18_v2.safetensors")
    assert (spec.name, spec.preact, spec.in_channels, spec.num_classes) == (
        "resnet18_v2", True, 1, 10)
    metrics = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    steps = metrics["epochs"][0]["step_losses"]
    assert np.mean(steps[-5:]) < np.mean(steps[:5])
    with pytest.raises(SystemExit):
        main(["train", "--arch", "resnet51"])
    assert "invalid choice: 'resnet51'" in capsys.readouterr().err


# -- colour data: CIFAR-10's four vehicle classes --------------------------------------------

VEHICLES = ("airplane", "automobile", "ship", "truck")  # the seeds' labels 0..3


def test_every_member_takes_the_data_channels_and_labels():
    for name in ARCHITECTURES:
        spec = architecture(name, in_channels=3, num_classes=4, labels=VEHICLES)
        assert (spec.in_channels, spec.num_classes, spec.labels) == (3, 4, VEHICLES), name
        assert param_shapes(spec)["stem.conv.weight"][1] == 3, name


def test_an_init_file_without_labels_takes_the_data_labels(tmp_path):
    from common import save_state
    labelled = resnet18_spec(in_channels=3, num_classes=4, labels=VEHICLES)
    bare = resnet18_spec(in_channels=3, num_classes=4)
    save_state(tmp_path / "bare.safetensors", xavier_state(bare, 1), bare)
    state = initial_state(labelled, TrainConfig(init=str(tmp_path / "bare.safetensors")))
    assert np.array_equal(state["head.fc.weight"], xavier_state(bare, 1)["head.fc.weight"])
    other = resnet18_spec(in_channels=3, num_classes=4, labels=("a", "b", "c", "d"))
    save_state(tmp_path / "other.safetensors", xavier_state(other, 1), other)
    with pytest.raises(ValueError, match="other.safetensors: holds"):
        initial_state(labelled, TrainConfig(init=str(tmp_path / "other.safetensors")))


def write_tiny_cifar(directory):
    """CIFAR-10's binary files, written here by the format: one image of each class in each of
    the five train batches and two in the test batch. Image (c, k) has red plane 100 + c,
    green 10 c + k (k: the batch, 7 in the test batch) and a blue gradient."""
    directory.mkdir()

    def record(c, k):
        y = np.arange(32, dtype=np.uint8)[:, None].repeat(32, 1)
        planes = [np.full((32, 32), 100 + c), np.full((32, 32), 10 * c + k), 4 * y]
        return bytes([c]) + b"".join(p.astype(np.uint8).tobytes() for p in planes)
    for k in range(1, 6):
        (directory / f"data_batch_{k}.bin").write_bytes(b"".join(record(c, k) for c in range(10)))
    (directory / "test_batch.bin").write_bytes(b"".join(record(c, 7) for c in list(range(10)) * 2))
    (directory / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    return directory


def test_train_cli_on_four_cifar10_classes(tmp_path, capsys, monkeypatch, installed):
    """`--data DIR --classes airplane,automobile,ship,truck`: every framework's loop sees those
    classes alone, labelled 0..3 in that order, as 3-channel images, and writes a checkpoint
    whose spec has in_channels 3, 4 classes and their names."""
    if not installed:
        pytest.skip("needs a framework")
    framework = "all" if len(installed) == len(BACKEND_NAMES) else installed[0]
    names = list(BACKEND_NAMES) if framework == "all" else [framework]
    data_dir = write_tiny_cifar(tmp_path / "cifar-10-batches-bin")
    seen = []
    real = ImageData.batch

    def spy(self, indices):
        x, y = real(self, indices)
        seen.append((x, y))
        return x, y
    monkeypatch.setattr(ImageData, "batch", spy)
    from common.tools.cli import main
    code = main(["train", "--framework", framework, "--data", str(tmp_path), "--classes",
                 ",".join(VEHICLES), "--epochs", "1", "--batch-size", "8", "--resize", "32",
                 "--out", str(tmp_path / "out"), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "20 train / 8 test images (3 channels)" in out
    new_label = {0: 0, 1: 1, 8: 2, 9: 3}  # CIFAR-10's airplane, automobile, ship, truck
    images = {"train": [], "test": []}
    for x, y in seen:
        assert x.shape[1:] == (3, 32, 32)
        red, green = np.rint(x[:, 0, 0, 0] * 255).astype(int), np.rint(x[:, 1, 0, 0] * 255)
        assert [new_label[c] for c in red - 100] == y.tolist()
        assert (green // 10 == red - 100).all()
        for c, k in zip(red - 100, green.astype(int) % 10):
            images["test" if k == 7 else "train"].append((int(c), int(k)))
    assert sorted(images["train"]) == sorted([(c, k) for c in new_label for k in range(1, 6)]
                                             * len(names))
    assert sorted(images["test"]) == sorted([(c, 7) for c in new_label] * 2 * len(names))
    for name in names:
        _, spec = load_state_file(tmp_path / "out" / name / "resnet18.safetensors")
        assert (spec.in_channels, spec.num_classes, spec.labels) == (3, 4, VEHICLES)
        metrics = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert metrics["spec"]["labels"] == list(VEHICLES) and len(metrics["epochs"]) == 1
    assert data_dir.is_dir()
    code = main(["train", "--data", f"cifar10:{data_dir}", "--classes", "airplane,plane",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no class 'plane'" in err
    assert "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck" in err
