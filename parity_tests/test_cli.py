"""``resnet-parity check``: the table, the verdict, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import common.tools.cli as cli
import common.tools.command as command
from common import BackendUnavailable, install_hint, random_state, resnet18_spec, save_state

from .conftest import backend_or_skip


@pytest.fixture
def two(installed):
    """Two installed frameworks for the CLI runs (torch and tf, else whatever is there)."""
    if len(installed) < 2:
        pytest.skip("needs two installed frameworks")
    return ",".join(installed[:2])


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_and_prints_every_layer(capsys, two, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = run(capsys, "check", "--frameworks", two, "--size", "33", "--batch", "1",
                         "--json", str(report))
    assert code == 0, out + err
    a, b = two.split(",")
    assert f"{b} vs {a}" in out and "max abs" in out and "max rel" in out
    assert "stages.3.1.bn2" in out and "head.fc" in out
    assert out.strip().splitlines()[-1].startswith("PASS: 2 frameworks")
    data = json.loads(report.read_text())
    assert data["ok"] and data["input_shape"] == [1, 1, 33, 33]
    (section,) = data["sections"]
    assert len(section["rows"][f"{b} vs {a}"]) == 58
    assert 0 < section["summary"][0]["max_rel"] <= 1e-5


@pytest.mark.parametrize("dtype, bound", [("float32", 1e-1), ("float64", 1e-9)])
def test_check_train_mode(capsys, two, tmp_path, dtype, bound):
    report = tmp_path / "r.json"
    code, out, err = run(capsys, "check", "--frameworks", two, "--mode", "train", "--dtype", dtype,
                         "--size", "32", "--batch", "4", "--momentum", "0.9", "--steps", "2",
                         "--json", str(report), "-q")
    assert code == 0, out + err
    assert "activations, training mode" in out and "loss and gradients" in out
    assert "after 2 SGD step(s), lr 0.05, momentum 0.9" in out
    assert "stages.3.1.bn2.running_var" in out and "head.fc.bias" in out
    data = json.loads(report.read_text())
    titles = [s["title"] for s in data["sections"]]
    assert len(titles) == 3 and data["dtype"] == dtype
    grads = data["sections"][1]
    rows = next(iter(grads["rows"].values()))
    assert rows[0]["layer"] == "loss" and len(rows) == 1 + 76
    assert grads["bound"] == bound and all(r["max_rel"] <= bound for r in rows)


def test_check_fails_with_exit_1_when_out_of_bound(capsys, two):
    code, out, _ = run(capsys, "check", "--frameworks", two, "--size", "17", "--batch", "1",
                       "--rtol", "0", "-q")
    assert code == 1
    assert "FAIL" in out and out.strip().splitlines()[-1].startswith("FAIL")


def test_check_reads_a_weights_file(capsys, two, tmp_path):
    spec = resnet18_spec(in_channels=3, num_classes=4)
    path = save_state(tmp_path / "w.safetensors", random_state(spec, 9), spec)
    code, out, _ = run(capsys, "check", "--frameworks", two, "--size", "32", "--weights", str(path))
    assert code == 0
    assert f"weights from {path}" in out and "input (2, 3, 32, 32)" in out
    assert "(2, 4)" in out  # the file's spec, not the default, was built


@pytest.mark.parametrize("content", [None, b"", b"not a safetensors file at all"])
def test_unreadable_weights_is_one_line(capsys, tmp_path, content):
    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "check", "--weights", str(path))
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_missing_framework_is_listed_with_the_extra(capsys, monkeypatch, two):
    real = command.get_backend

    def fake(name):
        if name == "mxnet":
            raise BackendUnavailable(install_hint("mxnet"))
        return real(name)
    monkeypatch.setattr(command, "get_backend", fake)
    code, out, _ = run(capsys, "check", "--frameworks", two + ",mxnet", "--size", "16", "-q")
    assert "skipped mxnet: MXNet is not installed: pip install 'resnet-parity[mxnet]'" in out
    assert code == 0


def test_one_framework_is_not_a_comparison(capsys):
    backend_or_skip("torch")
    code, _, err = run(capsys, "check", "--frameworks", "torch", "--size", "16")
    assert code == 2 and "need at least two frameworks" in err


def test_bad_arguments_exit_2(capsys):
    for argv in (["check", "--frameworks", "caffe"], ["check", "--size", "0"],
                 ["check", "--device", "tpu"], []):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert "unknown framework 'caffe'" in capsys.readouterr().err


def test_help_text():
    for argv in (["--help"], ["check", "--help"]):
        out = subprocess.run([sys.executable, "-m", "common.tools.cli", *argv], capture_output=True,
                             text=True)
        assert out.returncode == 0 and "usage: resnet-parity" in out.stdout
    assert "--weights FILE" in out.stdout and "--device {cpu,gpu}" in out.stdout


def test_check_takes_an_architecture(capsys, two):
    code, out, err = run(capsys, "check", "--frameworks", two, "--arch", "resnext50_32x4d",
                         "--size", "33", "--batch", "1", "-q")
    assert code == 0, out + err
    assert out.startswith("resnext50_32x4d: random weights") and "input (1, 3, 33, 33)" in out
    assert "stages.3.2.bn3" in out and "PASS: 2 frameworks" in out and ", 159 rows," in out
    code, _, err = run(capsys, "check", "--arch", "resnet50", "--weights", "w.safetensors")
    assert code == 2 and "--weights brings its own spec" in err
    with pytest.raises(SystemExit):
        cli.main(["check", "--arch", "resnet51"])
