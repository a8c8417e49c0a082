"""``resnet-parity bench`` runs on a tiny configuration and its parity gate stops a wrong model.
No timing is asserted: benchmarks print figures, tests check that they can be trusted."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from common import ResNetSpec, architecture, random_state, save_state, torchvision_resnet18_spec
from common.tools.bench import GROUPED_CONV, conv_case, conv_macs, conv_worker, run, worker

from .conftest import backend_or_skip

TINY = ResNetSpec(name="tiny", in_channels=1, num_classes=10, stem_channels=8,
                  stage_channels=(8, 16), stage_blocks=(1, 1))


def test_macs_match_a_count_of_the_torch_modules():
    """MACs from the spec equal a count over the real torch model's convs and dense layer
    (grouped and v1 bottlenecks included), and torchvision's members at 224x224 have their
    published counts."""
    torch = pytest.importorskip("torch")
    be = backend_or_skip("torch")
    for spec, size in ((torchvision_resnet18_spec(), 224), (TINY, 33),
                       (architecture("resnext50_32x4d"), 64), (architecture("resnet50_v1"), 45)):
        model, macs = be.build(spec), []

        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                macs.append(output[0].numel() * module.in_channels // module.groups * k)
            elif isinstance(module, torch.nn.Linear):
                macs.append(module.in_features * module.out_features)
        for m in model.modules():
            m.register_forward_hook(hook)
        model.eval()(torch.zeros(1, spec.in_channels, size, size))
        assert conv_macs(spec, size) == sum(macs)
    # torchvision's published GFLOPS (multiply-accumulates) at 224x224
    for name, gmacs in (("torchvision-resnet18", 1.81), ("resnet50", 4.09), ("resnet152", 11.51),
                        ("resnext50_32x4d", 4.23), ("wide_resnet50_2", 11.40)):
        assert conv_macs(architecture(name), 224) == pytest.approx(gmacs * 1e9, rel=0.005), name


@pytest.fixture(scope="module")
def report(installed):
    names = list(installed)
    if "torch" not in names:
        pytest.skip("bench compares against eager PyTorch")
    return run(names, ["eager"], batch=4, size=32, threads=1, warmup=1, reps=2, spec=TINY)


def test_tiny_bench_reports_every_figure(report):
    assert report["macs_per_image"] == conv_macs(TINY, 32) and report["matmul_peak_gflops"] > 0
    assert {r["mode"] for r in report["results"]} <= {"eager", "imperative"}
    for r in report["results"]:
        assert "error" not in r, r
        assert r["parity"]["ok"] and r["parity"]["max_rel"] <= 1e-5
        assert r["forward"]["img_per_s"] > 0 and r["train_step"]["img_per_s"] > 0
        assert 0 < r["forward"]["fraction_of_peak"] < 2
        assert r["latency_b1"]["ms"] > 0 and r["peak_rss_mb"] > 50
        assert r["forward"]["n"] == 2
    torch_run = next(r for r in report["results"] if r["framework"] == "torch")
    assert torch_run["threads"]["intra_op"] == 1  # the requested count, checked in the worker
    # the peak is the fastest GEMM, measured before and after; MKL's is always among them
    assert report["matmul_peak_gflops"] == max(report["gemm_gflops"].values())
    assert "MKL torch.mm" in report["gemm_gflops"] and len(report["load_average"]) == 2


def test_grouped_and_dense_conv_have_the_same_macs_and_pass_the_gate(report):
    g = GROUPED_CONV
    (groups, batch), (dense_groups, dense_batch) = conv_case(g["groups"]), conv_case(1)
    assert groups == g["groups"] and dense_groups == 1
    assert batch * g["channels"] ** 2 // groups == dense_batch * g["channels"] ** 2
    assert {c["framework"] for c in report["conv"]} == {r["framework"] for r in report["results"]}
    for c in report["conv"]:
        assert "error" not in c, c
        for label in ("grouped", "dense"):
            assert c[label]["ok"] and c[label]["max_rel"] <= 1e-5, (c["framework"], label)
            assert c[label]["gflops"] > 0 and c[label]["fraction_of_peak"] > 0


def test_conv_gate_refuses_a_wrong_conv(monkeypatch):
    """A conv whose output is off by 1% is reported wrong and not timed."""
    backend_or_skip("torch")
    import resnet_torch.bench as torch_bench
    right = torch_bench.conv_runner

    def off(x, weight, groups):
        run_conv, fetch = right(x, weight, groups)
        return run_conv, lambda y: fetch(y) * 1.01
    monkeypatch.setattr(torch_bench, "conv_runner", off)
    result = conv_worker({"framework": "torch", "threads": 1, "warmup": 1, "reps": 1})
    for label in ("grouped", "dense"):
        assert not result[label]["ok"] and result[label]["max_rel"] > 5e-3
        assert "gflops" not in result[label] and "median_s" not in result[label]


def test_parity_gate_refuses_a_wrong_model(tmp_path):
    """A model whose weights differ from the reference's is reported wrong and not timed."""
    torch_be = backend_or_skip("torch")
    state = random_state(TINY, 0)
    wrong = dict(state)
    wrong["stages.1.0.conv2.weight"] = wrong["stages.1.0.conv2.weight"] * 1.01
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 32, 32)).astype(np.float32)
    model = torch_be.build(TINY)
    torch_be.load_state(model, state)
    paths = {"state": str(save_state(tmp_path / "wrong.safetensors", wrong, TINY)),
             "input": str(tmp_path / "x.npy"), "reference": str(tmp_path / "ref.npz")}
    np.save(paths["input"], x)
    np.savez(paths["reference"], **torch_be.activations(model, x[:2]))
    result = worker({"framework": "torch", "mode": "eager", "threads": 1, "warmup": 1, "reps": 1,
                     **paths})
    assert not result["parity"]["ok"]
    assert result["parity"]["worst_layer"].startswith("stages.1.0")
    assert "forward" not in result and "train_step" not in result


def test_bench_cli(tmp_path, capsys):
    backend_or_skip("torch")
    from common.tools.cli import main
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    code = main(["bench", "--frameworks", "torch", "--modes", "eager", "--batch", "2",
                 "--size", "16", "--threads", "1", "--warmup", "1", "--reps", "2",
                 "--arch", "resnext50_32x4d", "--json", str(out_json), "--plot", str(out_png),
                 "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "torch  eager" in out and "float32 matmul peak" in out
    assert "grouped/dense" in out and "MKL torch.mm" in out
    assert out.startswith("ResNet resnext50_32x4d, batch 2, 16x16")
    data = json.loads(out_json.read_text())
    assert data["macs_per_image"] == conv_macs(architecture("resnext50_32x4d"), 16)
    assert data["threads"] == 1 and data["results"][0]["forward"]["img_per_s"] > 0
    assert out_png.read_bytes()[:4] == b"\x89PNG" and os.path.getsize(out_png) > 1000
    with pytest.raises(SystemExit):
        main(["bench", "--batch", "0"])
    assert main(["bench", "--modes", "fast"]) == 2
