"""``resnet-parity bench`` runs on a tiny configuration and its parity gate stops a wrong model.
No timing is asserted: benchmarks print figures, tests check that they can be trusted."""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np
import pytest

from common import ConvNeXtSpec, ResNetSpec, architecture, random_state, save_state, torchvision_resnet18_spec
from common.tools import bench
from common.tools.bench import GROUPED_CONV, conv_case, conv_macs, conv_worker, format_report, run, worker

from .conftest import backend_or_skip

TINY = ResNetSpec(name="tiny", in_channels=1, num_classes=10, stem_channels=8,
                  stage_channels=(8, 16), stage_blocks=(1, 1))
# three stages, a 3x3 depthwise conv and 2x MLP: every kind of ConvNeXt layer, at odd sizes too
TINY_CONVNEXT = ConvNeXtSpec(name="tiny-convnext", in_channels=1, num_classes=10, depths=(1, 2, 1),
                             widths=(8, 16, 24), patch_size=2, kernel_size=3, mlp_ratio=2)


def test_macs_match_a_count_of_the_torch_modules():
    """MACs from the spec equal a count over the real torch model's convs and dense layers
    (grouped and v1 bottlenecks, ConvNeXt's depthwise convs and per-pixel Linears included), and
    torchvision's members at 224x224 have their published counts."""
    torch = pytest.importorskip("torch")
    be = backend_or_skip("torch")
    for spec, size in ((torchvision_resnet18_spec(), 224), (TINY, 33),
                       (architecture("resnext50_32x4d"), 64), (architecture("resnet50_v1"), 45),
                       (TINY_CONVNEXT, 35), (architecture("convnext_tiny"), 64)):
        model, macs = be.build(spec), []

        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                macs.append(output[0].numel() * module.in_channels // module.groups * k)
            elif isinstance(module, torch.nn.Linear):  # once per output position (ConvNeXt's MLP)
                macs.append(output[0].numel() * module.in_features)
        for m in model.modules():
            m.register_forward_hook(hook)
        model.eval()(torch.zeros(1, spec.in_channels, size, size))
        assert conv_macs(spec, size) == sum(macs)
    # torchvision's published GFLOPS (multiply-accumulates) at 224x224
    for name, gmacs in (("torchvision-resnet18", 1.81), ("resnet50", 4.09), ("resnet152", 11.51),
                        ("resnext50_32x4d", 4.23), ("wide_resnet50_2", 11.40), ("convnext_tiny", 4.46),
                        ("convnext_small", 8.68), ("convnext_base", 15.36), ("convnext_large", 34.36)):
        assert conv_macs(architecture(name), 224) == pytest.approx(gmacs * 1e9, rel=0.005), name


def test_convnext_macs_are_the_layer_table_times_output_pixels():
    """A ConvNeXt's MACs: each conv's, depthwise conv's and Linear's weight size times the
    pixels it runs at (the stem's output, halved per stage; the classifier once), with no
    framework involved; ConvNeXt-T at 224x224 is about 4.47 GMACs."""
    def by_hand(spec: ConvNeXtSpec, size: int) -> int:
        total = 0
        for layer in spec.layers():
            assert layer.kind in ("conv", "dwconv", "dense", "ln", "scale"), layer
            if layer.kind in ("ln", "scale"):
                continue
            where = layer.name.split(".")
            stage = int(where[1]) if where[0] == "stages" else 0
            side = 1 if where[0] == "head" else size // spec.patch_size // 2 ** stage
            total += side * side * math.prod(layer.shapes["weight"])
        return total

    for spec, size in ((TINY_CONVNEXT, 16), (TINY_CONVNEXT, 35), (architecture("convnext_tiny"), 224),
                       (architecture("convnext_base", in_channels=1, num_classes=7), 97)):
        assert conv_macs(spec, size) == by_hand(spec, size), (spec.name, size)
    # 16x16, the stem at stride 2: 8x8, 4x4, 2x2; blocks 3*3*c + 2*2*c*c per pixel
    assert conv_macs(TINY_CONVNEXT, 16) == (64 * 4 * 1 * 8 + 64 * (9 * 8 + 4 * 64)
                                            + 16 * 4 * 8 * 16 + 2 * 16 * (9 * 16 + 4 * 256)
                                            + 4 * 4 * 16 * 24 + 4 * (9 * 24 + 4 * 576) + 24 * 10)
    assert conv_macs(architecture("convnext_tiny"), 224) == pytest.approx(4.47e9, rel=0.01)


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


def test_tiny_convnext_bench_end_to_end(monkeypatch):
    """``run`` and ``format_report`` on a ConvNeXt, each worker in this process (torch eager; a
    small GEMM for the peak, to stay fast): the gate passes on every layer, the MACs are the
    ConvNeXt count and the header names the family."""
    backend_or_skip("torch")

    def in_process(cfg: dict, env: dict, timeout: float) -> dict:
        return bench._WORKERS[cfg.get("kind", "model")](cfg)
    monkeypatch.setattr(bench, "_run_worker", in_process)
    monkeypatch.setattr(bench, "matmul_peaks", functools.partial(bench.matmul_peaks, n=256))
    report = run(["torch"], ["eager"], batch=4, size=16, threads=1, warmup=1, reps=2,
                 spec=TINY_CONVNEXT, conv=False)
    assert report["macs_per_image"] == conv_macs(TINY_CONVNEXT, 16) and report["conv"] == []
    (r,) = report["results"]
    assert r["parity"]["ok"] and r["parity"]["max_rel"] <= 1e-5, r["parity"]
    count, what = r["parity"]["checked"].split()  # eager: every layer, not only the logits
    assert what == "layers" and int(count) > len(TINY_CONVNEXT.top_level_names())
    assert r["forward"]["img_per_s"] > 0 and r["train_step"]["img_per_s"] > 0
    assert r["forward"]["fraction_of_peak"] > 0 and r["forward"]["n"] == 2
    out = format_report(report)
    assert out.startswith("ConvNeXt tiny-convnext, batch 4, 16x16, 1 thread(s); ")
    assert "grouped/dense" not in out and "torch  eager" in out


def test_parity_gate_refuses_a_wrong_convnext(tmp_path):
    """A ConvNeXt with one MLP weight 1% off is reported wrong, at that stage, and not timed."""
    torch_be = backend_or_skip("torch")
    state = random_state(TINY_CONVNEXT, 0)
    wrong = dict(state)
    wrong["stages.1.blocks.1.pwconv2.weight"] = wrong["stages.1.blocks.1.pwconv2.weight"] * 1.01
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 16, 16)).astype(np.float32)
    model = torch_be.build(TINY_CONVNEXT)
    torch_be.load_state(model, state)
    paths = {"state": str(save_state(tmp_path / "wrong.safetensors", wrong, TINY_CONVNEXT)),
             "input": str(tmp_path / "x.npy"), "reference": str(tmp_path / "ref.npz")}
    np.save(paths["input"], x)
    np.savez(paths["reference"], **torch_be.activations(model, x[:2]))
    result = worker({"framework": "torch", "mode": "eager", "threads": 1, "warmup": 1, "reps": 1,
                     **paths})
    assert not result["parity"]["ok"]
    assert result["parity"]["worst_layer"].startswith("stages.1")
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


def test_workers_run_with_the_chosen_allocator(monkeypatch):
    """``tuned`` hands the workers glibc's no-mmap, no-trim settings (a user's own setting
    wins); ``system`` adds none; the report's header says which; a wrong name is refused."""
    backend_or_skip("torch")
    envs = []

    def in_process(cfg: dict, env: dict, timeout: float) -> dict:
        envs.append(env)
        return bench._WORKERS[cfg.get("kind", "model")](cfg)
    monkeypatch.setattr(bench, "_run_worker", in_process)
    monkeypatch.setattr(bench, "matmul_peaks", functools.partial(bench.matmul_peaks, n=128))
    for k in bench.ALLOCATORS["tuned"]:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    tiny = dict(batch=2, size=16, threads=1, warmup=1, reps=1, spec=TINY, conv=False)
    report = run(["torch"], ["eager"], allocator="tuned", **tiny)
    assert {e["MALLOC_MMAP_MAX_"] for e in envs} == {"0"}
    assert {e["MALLOC_TRIM_THRESHOLD_"] for e in envs} == {"12345"}  # the user's, kept
    assert report["allocator"] == {"name": "tuned", "env": {"MALLOC_MMAP_MAX_": "0",
                                                            "MALLOC_TRIM_THRESHOLD_": "12345"}}
    assert "malloc: tuned (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=12345)" in format_report(report)
    envs.clear()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    report = run(["torch"], ["eager"], allocator="system", **tiny)
    assert not any(k.startswith("MALLOC_") for e in envs for k in e)
    assert "malloc: system (glibc defaults)" in format_report(report)
    with pytest.raises(ValueError, match="allocator must be one of tuned, system"):
        run(["torch"], ["eager"], allocator="jemalloc", **tiny)
