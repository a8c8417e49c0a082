"""``resnet-parity levels``: accuracy per model, framework, corruption and severity.

Every figure the command reports is recounted here directly: the images are corrupted with
:func:`common.core.corruptions.corrupt`, run through each framework's model and counted
without the command's own loop. Data: scikit-learn's digits (the built-in data) and a folder
of class subfolders written here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import common.tools.cli as cli
import common.tools.levels as levels_mod
from common import architecture, get_backend, random_state, save_state
from common.core.corruptions import corrupt
from common.core.data import load
from common.core.preprocess import Preprocessing
from common.tools.levels import CLEAN, Cell, ModelLevels, corruption_seed
from common.tools.predict import load_model

DIGITS = tuple(str(i) for i in range(10))


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def digit_model(path, seed=0, labels=DIGITS, size=24):
    spec = architecture("resnet18", num_classes=len(labels), labels=labels)
    state = random_state(spec, seed)
    state["head.fc.weight"] = state["head.fc.weight"] * np.float32(0.03)
    save_state(path, state, spec, Preprocessing(size=(size, size), channels="L"))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return digit_model(tmp_path_factory.mktemp("levels") / "digits.safetensors")


def test_accuracies_equal_a_direct_count(capsys, installed, model_file, tmp_path):
    out_json = tmp_path / "levels.json"
    code, out, err = run(capsys, "levels", "--model", model_file, "--data", "builtin",
                         "--corruptions", "fog,gaussian_noise", "--severities", "1,4",
                         "--limit", "20", "--batch-size", "8", "--seed", "3",
                         "--frameworks", ",".join(installed), "--json", out_json, "-q")
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert not report["interrupted"] and report["images"] == 20
    (m,) = report["models"]
    assert [(c["corruption"], c["severity"]) for c in m["cells"]] == [
        (CLEAN, 0), ("fog", 1), ("fog", 4), ("gaussian_noise", 1), ("gaussian_noise", 4)]

    # the direct count: the same seeded sample, corrupted image by image, each framework run
    data = load("builtin")
    idx = np.sort(np.random.default_rng(3).permutation(len(data.test))[:20])
    model = load_model(str(model_file))
    pixels = [model.preprocessing.pixels(data.test.image(int(i))) for i in idx]
    truth = np.asarray(data.test.labels)[idx]
    nets = {fw: model.build(get_backend(fw)) for fw in installed}
    for cell in m["cells"]:
        imgs = [p if cell["corruption"] == CLEAN else
                corrupt(p, cell["corruption"], cell["severity"],
                        corruption_seed(3, int(i), cell["corruption"], cell["severity"]))
                for p, i in zip(pixels, idx)]
        x = model.preprocessing.normalize(np.stack(imgs))
        top1 = {fw: get_backend(fw).forward(net, x).argmax(axis=1) for fw, net in nets.items()}
        for fw in installed:
            assert cell["correct"][fw] == int((top1[fw] == truth).sum()), (cell, fw)
            assert cell["accuracy"][fw] == pytest.approx(cell["correct"][fw] / 20)
        same = np.all([top1[fw] == top1[installed[0]] for fw in installed], axis=0)
        assert cell["agree_top1"] == pytest.approx(same.mean())
        assert 0 <= cell["max_score_diff"] < 1e-5
    # the table prints every level and framework
    assert "gaussian_noise" in out and all(fw in out for fw in installed)
    assert "first failure (accuracy < 0.5)" in out


def test_severity_changes_the_input_and_zero_does_not(model_file):
    data = load("builtin")
    model = load_model(str(model_file))
    p = model.preprocessing.pixels(data.test.image(0))
    assert np.array_equal(corrupt(p, "fog", 0, 1), p)
    assert not np.array_equal(corrupt(p, "fog", 1, corruption_seed(0, 0, "fog", 1)), p)
    # one image's noise is the same whatever else runs, and differs between images and levels
    a = corruption_seed(0, 5, "gaussian_noise", 2)
    assert a == corruption_seed(0, 5, "gaussian_noise", 2)
    assert len({a, corruption_seed(0, 6, "gaussian_noise", 2), corruption_seed(0, 5, "fog", 2),
                corruption_seed(0, 5, "gaussian_noise", 3)}) == 4


def test_first_failure_is_the_easiest_failing_level():
    m = ModelLevels(model=None, label="m")  # type: ignore[arg-type]
    acc = {(CLEAN, 0): 0.9, ("fog", 1): 0.8, ("fog", 2): 0.4, ("fog", 3): 0.6, ("dark", 1): 0.7,
           ("dark", 2): 0.6}
    m.cells = [Cell(c, s, 10, {"torch": round(a * 10)}, 1.0, 0.0) for (c, s), a in acc.items()]
    assert m.first_failure("torch", "fog", 0.5) == 2      # not 3: the first one counts
    assert m.first_failure("torch", "dark", 0.5) is None
    assert m.first_failure("torch", "dark", 0.65) == 2
    assert m.first_failure("torch", "fog", 0.95) == 0      # already on clean images


def test_models_compared_on_an_image_folder(capsys, tmp_path, installed):
    """Two models side by side on a folder of class subfolders; each sees the data's classes
    under its own label order."""
    fw = installed[0]
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path / "folder"
    for k in (3, 7):
        (root / f"digit{k}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(d.target == k)[:6]):
            Image.fromarray(np.round(d.images[i] * 255 / 16).astype(np.uint8)).save(
                root / f"digit{k}" / f"{j}.png")
    a = digit_model(tmp_path / "a.safetensors", 0, labels=("digit7", "x", "digit3"))
    b = digit_model(tmp_path / "b.safetensors", 1, labels=("digit3", "digit7"), size=20)
    out_json, plot, grid = tmp_path / "l.json", tmp_path / "l.png", tmp_path / "g.png"
    code, out, err = run(capsys, "levels", "--model", a, "--model", b, "--data", root,
                         "--corruptions", "dark,contrast", "--severities", "2",
                         "--frameworks", fw, "--json", out_json, "--plot", plot, "--grid", grid)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert [m["source"] for m in report["models"]] == [str(a), str(b)]
    assert report["models"][0]["name"] != report["models"][1]["name"]  # two resnet18s told apart
    assert all(len(m["cells"]) == 3 for m in report["models"])
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.width > 300
    with Image.open(grid) as im:
        assert im.format == "PNG"


def test_unknown_classes_and_labels_are_one_line(capsys, model_file, tmp_path, installed):
    other = digit_model(tmp_path / "o.safetensors", labels=("cat", "dog"))
    code, _, err = run(capsys, "levels", "--model", other, "--data", "builtin")
    assert code == 2 and "has no class '0'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "levels", "--model", model_file, "--data", "builtin",
                       "--classes", "0,eleven")
    assert code == 2 and "eleven" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        cli.main(["levels", "--model", str(model_file), "--corruptions", "smoke"])
    with pytest.raises(SystemExit):
        cli.main(["levels", "--model", str(model_file), "--severities", "6"])


def test_ctrl_c_keeps_the_finished_levels(capsys, model_file, tmp_path, installed, monkeypatch):
    calls = {"n": 0}
    real = levels_mod.corrupt

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:  # the clean level and fog 1 finish; fog 2 is cut short
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(levels_mod, "corrupt", interrupted)
    out_json = tmp_path / "cut.json"
    code, out, err = run(capsys, "levels", "--model", model_file, "--data", "builtin",
                         "--corruptions", "fog", "--severities", "1,2", "--limit", "12",
                         "--frameworks", installed[0], "--json", out_json, "-q")
    assert code == 130
    report = json.loads(out_json.read_text())
    assert report["interrupted"]
    assert [(c["corruption"], c["severity"]) for c in report["models"][0]["cells"]] == [
        (CLEAN, 0), ("fog", 1)]
    assert "interrupted" in out and "fog" in out
