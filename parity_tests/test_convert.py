"""Checkpoint conversion and inspection: ``common.tools.formats``, ``common.tools.convert``, and the
``resnet-parity convert`` / ``inspect`` commands.

Every format, every ordered pair of formats bit-exact; a torchvision-structured state_dict built
here by hand (torchvision itself is not installed) into Keras and Gluon; refused pickles; and
fuzzed files of every format (truncated, bit-flipped, shape-altered), each of which must give a
``ValueError`` naming the file and leave no DST, partial or temporary, behind.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import common.tools.cli as cli
from common import (
    ResNetSpec,
    activation_names,
    architecture,
    format_rows,
    get_backend,
    load_state_file,
    random_state,
    save_state,
    torchvision_resnet18_spec,
)
from common.tools.convert import convert, infer_io, inspect_checkpoint
from common.tools.formats import (
    FORMATS,
    TORCHVISION,
    detect,
    read_ndarray_file,
    torch_bn_counters,
    torch_keys,
    torchvision_module,
)

from .conftest import backend_or_skip, randomize_batch_norms

TINY = ResNetSpec(name="tiny", in_channels=3, num_classes=5, stem_channels=8,
                  stage_channels=(8, 16), stage_blocks=(1, 2))
# torchvision's structure (no conv bias, BatchNorm on the shortcut) at a testable size
TINY_TV = ResNetSpec(name="tiny-tv", in_channels=3, num_classes=5, stem_channels=8,
                     stage_channels=(8, 16), stage_blocks=(1, 2), conv_bias=False,
                     shortcut_bn=True)
FILE_NAMES = {"canonical": "w.safetensors", "torch": "w.pt", "torchvision": "w.pth",
              "keras-weights": "w.weights.h5", "keras": "w.keras", "gluon-params": "w.params",
              "gluon-export": "w-symbol.json"}
# what --from / --to says for each format (the others follow from the file name)
FAMILY = {"torchvision": "torchvision"}
FRAMEWORK = {name: fmt.framework for name, fmt in FORMATS.items()}


def need(*names: str | None) -> None:
    for n in names:
        if n:
            backend_or_skip(n)


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=True) for k in a)


@pytest.fixture(scope="module")
def files(tmp_path_factory, installed):
    """TINY_TV's random state written once in every format, plus its spec as JSON."""
    d = tmp_path_factory.mktemp("formats")
    state = random_state(TINY_TV, 1)
    save_state(d / "src.safetensors", state, TINY_TV)
    (d / "spec.json").write_text(TINY_TV.to_json())
    out = {}
    for name, fmt in FORMATS.items():
        if not FRAMEWORK[name] or FRAMEWORK[name] in installed:
            (d / name).mkdir()
            out[name] = d / name / FILE_NAMES[name]
            fmt.write(out[name], state, TINY_TV)
    return {"dir": d, "state": state, "spec": d / "spec.json", **out}


def spec_args(name: str, files) -> dict:
    return {} if FORMATS[name].carries_spec else {"spec_file": files["spec"]}


# -- formats and round trips ----------------------------------------------------------------------
def test_every_format_reads_back_what_it_wrote(files):
    for name, fmt in FORMATS.items():
        if name not in files:
            continue
        path = files[name]
        assert detect(path, FAMILY.get(name)) is fmt
        assert same_state(fmt.read(path, TINY_TV), files["state"]), name
        if fmt.carries_spec:
            assert fmt.spec(path) == TINY_TV


@pytest.mark.parametrize("x, y", list(itertools.permutations(FORMATS, 2)),
                         ids=[f"{x}-{y}" for x, y in itertools.permutations(FORMATS, 2)])
def test_round_trip_through_every_pair_is_bit_exact(files, tmp_path, x, y):
    """canonical -> X -> Y -> canonical gives the original state, bit for bit."""
    need(FRAMEWORK[x], FRAMEWORK[y])
    mid = tmp_path / FILE_NAMES[y]
    convert(files[x], mid, src_format=FAMILY.get(x), dst_format=FAMILY.get(y),
            verify_output=False, **spec_args(x, files))
    back = tmp_path / "back.safetensors"
    convert(mid, back, src_format=FAMILY.get(y), verify_output=False, **spec_args(y, files))
    state, spec = inspect_state(back)
    assert spec == TINY_TV and same_state(state, files["state"])


def inspect_state(path: Path):
    from common import load_state_file
    return load_state_file(path)


@pytest.mark.parametrize("name", list(FORMATS))
def test_convert_verifies_and_writes_only_dst(files, tmp_path, name):
    """canonical -> X with verification: state bit-identical, every layer within 1e-5, and
    the directory holds DST's files and nothing else."""
    need(FRAMEWORK[name], "torch")
    dst = tmp_path / FILE_NAMES[name]
    r = convert(files["dir"] / "src.safetensors", dst, dst_format=FAMILY.get(name), size=32)
    v = r.verification
    assert r.ok and r.written and v.ok and not v.differing and v.tensors == 42
    rows = next(iter(v.section.pairs.values()))
    n_layers = len(activation_names(TINY_TV))  # + a row for the file's own graph, if any
    assert len(rows) == n_layers + (name in ("keras", "gluon-export"))
    assert all(row.max_rel <= 1e-5 for row in rows)
    assert listing(tmp_path) == sorted(p.name for p in r.dst)
    assert all(oct(p.stat().st_mode & 0o777) != "0o600" for p in r.dst)  # not mkstemp's mode


@pytest.mark.filterwarnings("ignore:Cannot decide type")  # SymbolBlock.imports on a bare graph
def test_written_files_are_what_each_framework_loads_natively(files):
    """The files are the frameworks' own: strict load_state_dict, keras.saving.load_model,
    Gluon load_parameters and SymbolBlock.imports all take them as they are."""
    need("torch", "tf", "mxnet")
    import keras
    import torch

    from common import get_backend
    from resnet_mxnet._compat import gluon
    from resnet_torch.model import ResNet
    ResNet(TINY_TV).load_state_dict(torch.load(files["torch"], weights_only=True), strict=True)
    tv = torch.load(files["torchvision"], weights_only=True)
    assert set(tv) == set(torch_keys(TINY_TV, True).values()) | set(torch_bn_counters(TINY_TV,
                                                                                       True))
    model = keras.saving.load_model(files["keras"])
    assert model.spec == TINY_TV
    get_backend("mxnet").build(TINY_TV).load_parameters(str(files["gluon-params"]))
    block = gluon.SymbolBlock.imports(str(files["gluon-export"]), ["data"],
                                      str(files["gluon-export"]).replace("-symbol.json",
                                                                         "-0000.params"))
    assert len(block.collect_params().keys()) == 42


# -- torchvision ----------------------------------------------------------------------------------
def torchvision_resnet18(in_channels: int = 3, num_classes: int = 1000, seed: int = 0):
    """torchvision's resnet18, built by hand with exactly its module names (``conv1``, ``bn1``,
    ``layerN.M.downsample.0/1``, ``fc``), random weights and random BatchNorm statistics."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, c: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False),
                                             nn.BatchNorm2d(c)) if stride != 1 else None)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, c in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride),
                                                             BasicBlock(c, c, 1)))
                cin = c
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(seed)
    model = ResNet().eval()
    randomize_batch_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.num_batches_tracked.fill_(7)
    return model


def torchvision_bottleneck_resnet(layers=(3, 4, 6, 3), groups: int = 1, width_per_group: int = 64,
                                  num_classes: int = 1000, seed: int = 0):
    """torchvision's ResNet with Bottleneck blocks (resnet50, resnext50_32x4d, ...), built by hand
    from torchvision's resnet.py: ``width = int(planes * (base_width / 64.)) * groups``, the
    stride on ``conv2`` (v1.5), ``downsample`` where the stride or the channel count changes."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int) -> None:
            super().__init__()
            width = int(planes * (width_per_group / 64.0)) * groups
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                             nn.BatchNorm2d(planes * 4))
                               if stride != 1 or inplanes != planes * 4 else None)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
                blocks = []
                for j in range(n):
                    blocks.append(Bottleneck(inplanes, planes, 2 if i and not j else 1))
                    inplanes = planes * 4
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(2048, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(seed)
    model = ResNet().eval()
    return randomize_batch_norms(model)


@pytest.mark.parametrize("dst_name, framework", [("x50.weights.h5", "tf"), ("x50.params", "mxnet")])
def test_torchvision_resnext50_converts_into_keras_and_gluon(tmp_path, capsys, dst_name,
                                                             framework):
    """A torchvision-structured resnext50_32x4d state_dict (320 keys, grouped 3x3 convs) -> Keras
    and Gluon with --arch: verified by the CLI, and the converted model computes what the
    hand-built torchvision module computes."""
    need("torch", framework)
    import torch

    from common import architecture, get_backend
    tv = torchvision_bottleneck_resnet(groups=32, width_per_group=4, num_classes=4)
    assert len(tv.state_dict()) == 320
    src = tmp_path / "resnext50.pth"
    torch.save(tv.state_dict(), src)
    dst = tmp_path / dst_name
    code = cli.main(["convert", str(src), str(dst), "--arch", "resnext50_32x4d", "-q",
                     "--size", "40"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "num_classes=4 inferred from fc.weight" in out
    assert "267 tensors read back from DST, all bit-identical" in out
    x = np.random.default_rng(4).standard_normal((2, 3, 45, 38)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    spec = architecture("resnext50_32x4d", num_classes=4)
    be = get_backend(framework)
    model = be.build(spec)
    be.load_state(model, FORMATS["keras-weights" if framework == "tf" else "gluon-params"]
                  .read(dst, spec))
    got = be.forward(model, x)
    print(f"\n{framework} vs hand-built torchvision resnext50_32x4d, logits: max rel "
          f"{np.abs(got - want).max() / np.abs(want).max():.2e}")
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_torchvision_keys_and_shapes_are_torchvisions():
    need("torch")
    sd = torchvision_resnet18().state_dict()
    assert len(sd) == 122
    spec = torchvision_resnet18_spec()
    keys = torch_keys(spec, torchvision=True)
    shapes = dict(zip(keys.values(), (s for layer in spec.layers() for s in layer.shapes.values())))
    assert set(shapes) | set(torch_bn_counters(spec, True)) == set(sd)
    assert all(tuple(sd[k].shape) == s for k, s in shapes.items())
    assert keys["stages.1.0.shortcut.weight"] == "layer2.0.downsample.0.weight"
    assert keys["stages.1.0.shortcut_bn.gamma"] == "layer2.0.downsample.1.weight"
    assert keys["stem.bn.running_var"] == "bn1.running_var" and keys["head.fc.bias"] == "fc.bias"
    assert torchvision_module("stages.3.1.bn2") == "layer4.1.bn2"
    assert len(keys) == 102 and spec.conv_bias is False and spec.shortcut_bn is True


@pytest.mark.parametrize("dst_name, framework", [("r18.weights.h5", "tf"),
                                                 ("r18-symbol.json", "mxnet")])
def test_torchvision_state_dict_converts_into_keras_and_gluon(tmp_path, capsys, dst_name,
                                                              framework):
    """A torchvision resnet18 state_dict -> Keras / Gluon with --arch: the CLI verifies it, and
    the converted model computes what the torchvision-structured module computes."""
    need("torch", framework)
    import torch

    from common import get_backend
    tv = torchvision_resnet18(num_classes=7)
    src = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), src)
    dst = tmp_path / dst_name
    code = cli.main(["convert", str(src), str(dst), "--arch", "torchvision-resnet18", "-q",
                     "--size", "48"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "SRC" in out and "torchvision" in out and "num_classes=7 inferred from fc.weight" in out
    assert "102 tensors read back from DST, all bit-identical" in out
    assert "stages.3.1.bn2" in out and out.strip().splitlines()[-1].startswith("PASS: wrote")
    # the converted model against the hand-built torchvision module itself
    x = np.random.default_rng(3).standard_normal((2, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    spec = torchvision_resnet18_spec(num_classes=7)
    be = get_backend(framework)
    model = be.build(spec)
    be.load_state(model, FORMATS["keras-weights" if framework == "tf" else "gluon-export"]
                  .read(dst, spec))
    got = be.forward(model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_torchvision_output_has_torchvisions_keys_in_order(files, tmp_path):
    need("torch")
    import torch
    dst = tmp_path / "tv.pth"
    convert(files["dir"] / "src.safetensors", dst, dst_format="torchvision", verify_output=False)
    sd = torch.load(dst, weights_only=True)
    assert list(sd)[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                            "bn1.running_var", "bn1.num_batches_tracked",
                            "layer1.0.conv1.weight"]
    assert "layer2.0.downsample.1.running_var" in sd and list(sd)[-2:] == ["fc.weight", "fc.bias"]
    assert detect(dst).refine({k: v.numpy() for k, v in sd.items()}) is TORCHVISION


def test_training_checkpoints_and_any_file_name_are_read(files, tmp_path):
    """``{"state_dict": {"module.conv1.weight": ...}, "epoch": 3}`` saved as ``model.bin``
    (DataParallel, a training loop's checkpoint): --from torch reads it."""
    need("torch")
    import torch
    sd = torch.load(files["torchvision"], weights_only=True)
    src = tmp_path / "model.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, src)
    r = convert(src, tmp_path / "w.safetensors", src_format="torch", spec_file=files["spec"],
                verify_output=False)
    assert r.src.format is TORCHVISION
    assert same_state(inspect_state(tmp_path / "w.safetensors")[0], files["state"])


# -- spec: stored, given, inferred -----------------------------------------------------------------
def test_arch_infers_in_channels_and_num_classes(files, tmp_path):
    need("torch")
    from common import resnet18_spec
    spec = resnet18_spec(in_channels=2, num_classes=7)
    src = tmp_path / "d2l.safetensors"
    save_state(src, random_state(spec, 0), spec)
    pt = tmp_path / "d2l.pt"
    convert(src, pt, verify_output=False)
    r = convert(pt, tmp_path / "back.safetensors", arch="resnet18", verify_output=False)
    assert r.spec == spec
    assert "in_channels=2 inferred from stem.conv.weight (64, 2, 7, 7)" in r.spec_source
    assert "num_classes=7 inferred from head.fc.weight (7, 512)" in r.spec_source


def test_infer_io_reads_keras_layout_and_refuses_ambiguity():
    spec = torchvision_resnet18_spec()
    found, _ = infer_io({"k": np.zeros((7, 7, 4, 64)), "d": np.zeros((512, 9))}, spec)
    assert found == {"in_channels": 4, "num_classes": 9}
    found, notes = infer_io({"a": np.zeros((64, 3, 7, 7)), "b": np.zeros((64, 5, 7, 7))}, spec)
    assert found == {} and "in_channels not inferred (2 tensors" in notes[0]


def test_spec_is_required_where_the_file_has_none(files, tmp_path):
    need("torch")
    # TINY_TV is no named architecture: the keys say so, and the error asks for its spec
    with pytest.raises(ValueError, match=r"w\.pt: no known architecture fits its keys and shapes "
                                         r"\(resnet18, .*\); pass --spec FILE"):
        convert(files["torch"], tmp_path / "x.safetensors")
    other = tmp_path / "other.json"
    other.write_text(TINY.to_json())
    with pytest.raises(ValueError, match=r"stores spec 'tiny-tv', which differs from .* in: "
                                         r"conv_bias \(False vs True\)"):
        convert(files["canonical"], tmp_path / "x.pt", spec_file=other)
    bad = tmp_path / "bad.json"
    bad.write_text('{"in_channels": 3, "depth": 50}')
    with pytest.raises(ValueError, match=r"bad\.json: not a valid spec: unknown ResNetSpec "
                                         r"field\(s\): depth"):
        convert(files["torch"], tmp_path / "x.safetensors", spec_file=bad)
    assert listing(tmp_path) == ["bad.json", "other.json"]


def test_a_spec_that_does_not_fit_names_every_key(files, tmp_path):
    """Reading TINY_TV's files as d2l's TINY: every key named, with both shapes."""
    need("torch", "tf", "mxnet")
    (tmp_path / "tiny.json").write_text(TINY.to_json())
    for name in ("torch", "keras-weights", "gluon-params", "gluon-export"):
        with pytest.raises(ValueError) as e:
            convert(files[name], tmp_path / "x.safetensors", spec_file=tmp_path / "tiny.json")
        msg = str(e.value)
        assert msg.startswith(str(FORMATS[name].files(files[name])[-1]))  # the tensors' file
        assert "does not fit spec 'tiny'" in msg and "missing key(s)" in msg, msg
    (tmp_path / "wide.json").write_text(json.dumps({**TINY_TV.to_dict(), "num_classes": 6}))
    with pytest.raises(ValueError, match=r"shape mismatch for head\.fc\.weight: expected "
                                         r"\(6, 16\), got \(5, 16\); shape mismatch for "
                                         r"head\.fc\.bias: expected \(6,\), got \(5,\)"):
        convert(files["torch"], tmp_path / "x.safetensors", spec_file=tmp_path / "wide.json")
    assert listing(tmp_path) == ["tiny.json", "wide.json"]


# A checkpoint of a deeper net (one more Residual in the last stage) read as TINY_TV: the keys of
# the extra Residual are a superset that a lenient reader would drop, "verifying" a truncated net.
DEEP = dataclasses.replace(TINY_TV, name="tiny-tv-deep", stage_blocks=(1, 3))
# how each format spells the extra Residual, stages.1.2, in its keys
EXTRA = {"canonical": "stages.1.2.", "torch": "stages.1.2.", "torchvision": "layer2.2.",
         "keras-weights": "/residual_2/", "keras": "/residual_2/", "gluon-params": "stages.1.2.",
         "gluon-export": "_residual2_"}


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_deeper_checkpoint_is_refused_not_truncated(files, tmp_path, name):
    """Every format: reading a deeper net's checkpoint with the shallower spec is a ValueError
    naming the file and every key of the extra Residual (10 tensors; PyTorch adds 2 BatchNorm
    counters), directly and through convert, which writes nothing."""
    need(FRAMEWORK[name])
    fmt = FORMATS[name]
    src = tmp_path / "deep" / FILE_NAMES[name]
    src.parent.mkdir()
    fmt.write(src, random_state(DEEP, 2), DEEP)
    with pytest.raises(ValueError) as e:
        fmt.read(src, TINY_TV)
    msg = str(e.value)
    print(f"\n{name}: {msg[:300]}...")
    assert msg.startswith(str(fmt.files(src)[-1]) + ": ")  # the file holding the tensors
    assert "does not fit" in msg and "missing key" not in msg
    found = re.search(r"unexpected key\(s\): ([^;]*)", msg)
    assert found, msg
    keys = found.group(1).split(", ")
    assert len(keys) == 10 + 2 * (name in ("torch", "torchvision"))
    assert all(EXTRA[name] in k for k in keys), keys
    if not fmt.carries_spec:  # the others are converted with the spec they store, DEEP
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(ValueError, match="unexpected key") as e:
            convert(src, out / "w.safetensors", src_format=FAMILY.get(name),
                    spec_file=files["spec"])
        assert str(e.value) == msg and listing(out) == []


def test_verification_compares_src_with_the_file_read_back(files, tmp_path, monkeypatch):
    """A writer that moves one value of one tensor by one float32 ulp: the activations cannot
    tell, so only comparing SRC's state with DST read back catches it. convert names that
    tensor, fails and writes nothing."""
    need("torch")
    fmt, key = FORMATS["torch"], "stages.1.1.bn2.running_var"
    write = fmt.write

    def one_ulp_off(path, state, spec):
        value = state[key].copy()
        value[3] = np.nextafter(value[3], np.float32(np.inf))
        write(path, {**state, key: value}, spec)
    monkeypatch.setattr(fmt, "write", one_ulp_off)
    r = convert(files["dir"] / "src.safetensors", tmp_path / "w.pt", size=32)
    v = r.verification
    rows = next(iter(v.section.pairs.values()))
    print(format_rows(rows, f"\nDST one ulp off in {key}: differing {v.differing}"))
    assert v.differing == [key]
    assert v.section.ok            # within EVAL_RTOL_CPU at every layer: invisible there
    assert not v.ok and not r.ok and not r.written
    assert listing(tmp_path) == []


# -- nothing lost ---------------------------------------------------------------------------------
class _OpensAFile:
    """A pickle payload that would create ``path`` if it were ever executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_never_executed(tmp_path, capsys, writer):
    need("torch")
    import torch
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    payload = {"stem.conv.weight": torch.zeros(8, 3, 7, 7), "x": _OpensAFile(str(marker))}
    if writer == "torch.save":
        torch.save(payload, src)
    else:
        src.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"evil\.pt: refused: not a plain tensor checkpoint"):
        convert(src, tmp_path / "out.safetensors", arch="resnet18")
    code = cli.main(["inspect", str(src)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "refused" in err and str(src) in err
    assert not marker.exists() and listing(tmp_path) == ["evil.pt"]


def test_existing_dst_needs_force(files, tmp_path, capsys):
    need("torch", "mxnet")
    dst = tmp_path / "w.pt"
    dst.write_bytes(b"precious")
    code = cli.main(["convert", str(files["canonical"]), str(dst), "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and err == (f"resnet-parity: error: {dst}: already exists; pass --force "
                                 "to overwrite\n")
    assert dst.read_bytes() == b"precious"
    assert cli.main(["convert", str(files["canonical"]), str(dst), "-q", "--force"]) == 0
    assert dst.read_bytes() != b"precious" and listing(tmp_path) == ["w.pt"]
    # a Gluon pair is refused when either of its files exists
    (tmp_path / "g-0000.params").write_bytes(b"old")
    with pytest.raises(ValueError, match=r"g-0000\.params: already exists"):
        convert(files["canonical"], tmp_path / "g-symbol.json")
    r = convert(files["canonical"], tmp_path / "g-symbol.json", force=True, verify_output=False)
    assert [p.name for p in r.dst] == ["g-symbol.json", "g-0000.params"]
    assert listing(tmp_path) == ["g-0000.params", "g-symbol.json", "w.pt"]


def test_failed_verification_writes_nothing(files, tmp_path, capsys):
    need("torch", "tf")
    dst = tmp_path / "w.weights.h5"
    code = cli.main(["convert", str(files["torch"]), str(dst), "--spec", str(files["spec"]),
                     "--rtol", "0", "-q", "--size", "32"])
    out, _ = capsys.readouterr()
    assert code == 1 and "FAIL" in out and "nothing written" in out.splitlines()[-1]
    assert listing(tmp_path) == []


def test_an_interrupted_write_leaves_no_dst(files, tmp_path, monkeypatch):
    need("tf")
    fmt = FORMATS["keras-weights"]

    def half_then_interrupt(path, state, spec):
        Path(path).write_bytes(b"\x89HDF\r\n\x1a\n half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(fmt, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(files["canonical"], tmp_path / "w.weights.h5")
    assert listing(tmp_path) == []


def test_nonfinite_weights_are_refused_unless_allowed(files, tmp_path, capsys):
    need("torch")
    from safetensors.numpy import save_file
    state = dict(files["state"])
    state["stages.1.0.shortcut_bn.running_var"] = state[
        "stages.1.0.shortcut_bn.running_var"].copy()
    state["stages.1.0.shortcut_bn.running_var"][:3] = [np.nan, np.inf, -np.inf]
    src = tmp_path / "nan.safetensors"
    save_file(state, str(src), metadata={"spec": TINY_TV.to_json()})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ValueError, match=r"nan\.safetensors: .*non-finite values in "
                                         r"stages\.1\.0\.shortcut_bn\.running_var: 3 of 16"):
        convert(src, out_dir / "w.pt")
    r = convert(src, out_dir / "w.pt", allow_nonfinite=True)
    assert r.ok and r.verification.section is None and "NaN or inf" in r.verification.note
    back = FORMATS["torch"].read(out_dir / "w.pt", TINY_TV, allow_nonfinite=True)
    assert same_state(back, state)
    assert cli.main(["inspect", str(src)]) == 1
    out, _ = capsys.readouterr()
    assert "non-finite values: 1 tensor(s): stages.1.0.shortcut_bn.running_var (3 of 16)" in out


# -- fuzzing: truncated, bit-flipped and shape-altered files of every format ------------------------
FUZZ = collections.Counter()  # (format, mutation, outcome) -> cases, printed with -s


def _alter_shape(name: str, path: Path, which: int, grow: bool) -> None:
    """Rewrite the file at ``path`` with one tensor's first dimension one larger or smaller."""
    def altered(a: np.ndarray) -> np.ndarray:
        shape = (a.shape[0] + (1 if grow else -1),) + a.shape[1:]
        return np.resize(a, shape).astype(a.dtype)
    if name == "canonical":
        from safetensors import safe_open
        from safetensors.numpy import save_file
        with safe_open(str(path), "np") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        k = sorted(t)[which % len(t)]
        save_file({**t, k: altered(t[k])}, str(path), metadata=meta)
    elif name in ("torch", "torchvision"):
        import torch
        sd = torch.load(path, weights_only=True)
        k = [k for k in sd if sd[k].ndim][which % sum(1 for v in sd.values() if v.ndim)]
        sd[k] = torch.from_numpy(altered(sd[k].numpy()))
        torch.save(sd, path)
    elif name in ("keras-weights", "keras"):
        import h5py
        raw = (zipfile.ZipFile(path).read("model.weights.h5") if name == "keras"
               else path.read_bytes())
        buf = io.BytesIO(raw)
        with h5py.File(buf, "r+") as f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            k = sorted(names)[which % len(names)]
            a = altered(f[k][()])
            del f[k]
            f[k] = a
        if name == "keras":
            with zipfile.ZipFile(path) as z:
                members = {i.filename: z.read(i) for i in z.infolist()}
            members["model.weights.h5"] = buf.getvalue()
            with zipfile.ZipFile(path, "w") as z:
                for member, data in members.items():
                    z.writestr(member, data)
        else:
            path.write_bytes(buf.getvalue())
    else:
        from resnet_mxnet._compat import mx
        params = path if name == "gluon-params" else Path(str(path).replace("-symbol.json",
                                                                            "-0000.params"))
        arrays = read_ndarray_file(params)
        k = sorted(arrays)[which % len(arrays)]
        mx.nd.save(str(params), {n: mx.nd.array(altered(a) if n == k else a)
                                 for n, a in arrays.items()})


def _fuzz_case(files, name: str, mutate) -> str:
    """Copy ``name``'s file(s) into a fresh directory, mutate, convert to canonical; return the
    outcome after checking the documented behaviour."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src_files = FORMATS[name].files(files[name])
        for f in src_files:
            shutil.copy(f, d / f.name)
        src = d / files[name].name
        mutate(d, src)
        out = d / "out"
        out.mkdir()
        try:
            r = convert(src, out / "w.safetensors", src_format=FAMILY.get(name),
                        verify_output=False, **spec_args(name, files))
        except ValueError as e:
            msg = str(e)
            assert "\n" not in msg and any(str(d / f.name) in msg for f in src_files), msg
            assert listing(out) == [], listing(out)
            return "ValueError: " + _category(msg)
        assert r.written and listing(out) == ["w.safetensors"]
        inspect_state(out / "w.safetensors")  # a complete, valid file
        return "converted"


def _category(msg: str) -> str:
    for words in ("shape mismatch", "non-finite", "missing key", "unexpected key", "refused",
                  "not a readable", "truncated", "no spec", "not valid", "does not fit",
                  "not a state_dict", "not an MXNet symbol"):
        if words in msg:
            return words
    return msg.split(": ", 1)[-1][:40]


def _target(name: str, d: Path, src: Path, pick: int) -> Path:
    """The file of the checkpoint to damage (a Gluon export has two)."""
    files = FORMATS[name].files(src)
    return files[pick % len(files)]


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None

# RESNET_PARITY_FUZZ=300 pytest -s -k fuzz: a longer, randomised campaign, counts printed at the end
FUZZ_EXAMPLES = int(os.environ.get("RESNET_PARITY_FUZZ", "30"))

if given is not None:
    fuzz_settings = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                             derandomize="RESNET_PARITY_FUZZ" not in os.environ,
                             suppress_health_check=list(HealthCheck))

    # A damaged file goes through C libraries (HDF5, the zip reader under torch.load, MXNet's
    # loader), which can corrupt the heap of the process that reads it: measured, a Keras
    # training step and a PyTorch forward much later in the same pytest run aborted ("corrupted
    # size vs. prev_size", a segmentation fault). The fuzz therefore runs in a child process of
    # its own (test_fuzzed_checkpoints_in_a_child), where this variable lets it in.
    FUZZED = list(FORMATS) if os.environ.get("RESNET_PARITY_FUZZ_CHILD") else []

    @pytest.mark.parametrize("name", FUZZED)
    @fuzz_settings
    @given(data=st.data())
    def test_fuzzed_checkpoints_give_the_documented_error(files, name, data):
        """Truncated, bit-flipped and shape-altered files: a ValueError naming the file and
        no DST (or, for a harmless flip in the data, a complete and valid DST)."""
        need(FRAMEWORK[name])
        kind = data.draw(st.sampled_from(["truncate", "flip", "shape"]), label="mutation")
        pick = data.draw(st.integers(0, 1), label="file")

        def mutate(d: Path, src: Path) -> Path:
            target = _target(name, d, src, pick)
            raw = target.read_bytes()
            if kind == "truncate":
                target.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")])
            elif kind == "flip":
                b = bytearray(raw)
                for pos in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1,
                                              max_size=4), label="positions"):
                    b[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
                target.write_bytes(bytes(b))
            else:
                _alter_shape(name, src, data.draw(st.integers(0, 200), label="tensor"),
                             data.draw(st.booleans(), label="grow"))
            return target
        outcome = _fuzz_case(files, name, mutate)
        if kind == "shape":
            assert outcome == "ValueError: shape mismatch", outcome
        if kind == "truncate":
            assert outcome.startswith("ValueError"), outcome
        FUZZ[(name, kind, outcome)] += 1

    @pytest.mark.skipif(bool(os.environ.get("RESNET_PARITY_FUZZ_CHILD")), reason="in the child")
    def test_fuzzed_checkpoints_in_a_child():
        """The fuzz above, every format, run by pytest in a child process."""
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", __file__,
             "-k", "fuzzed_checkpoints_give"],
            cwd=Path(__file__).parents[1], capture_output=True, text=True,
            env={**os.environ, "RESNET_PARITY_FUZZ_CHILD": "1"})
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert re.search(r"\d+ passed", run.stdout), run.stdout[-800:]


# -- inspect and the CLI --------------------------------------------------------------------------
def test_inspect_lists_every_tensor(files, capsys):
    code = cli.main(["inspect", str(files["canonical"])])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "format: canonical (canonical safetensors (common.save_state; the " \
                       "spec in its metadata))"
    assert lines[2] == f"spec: {TINY_TV.to_json()}"
    n = sum(int(np.prod(v.shape)) for v in files["state"].values())
    assert f"values: {n:,} floating point" in out and "BatchNorm running statistics" in out
    for k, v in files["state"].items():
        row = next(line for line in lines if line.startswith(k + " "))
        assert str(tuple(v.shape)) in row and "float32" in row
        assert f"{v.min():.3g}" in row and f"{v.max():.3g}" in row
    assert lines[-1] == "non-finite values: none"
    assert "architecture: tiny-tv (the stored spec; not one of the named architectures)" in lines


def test_inspect_reads_every_format(files):
    for name in FORMATS:
        if name not in files:
            continue
        ins = inspect_checkpoint(files[name], FAMILY.get(name))
        assert ins.checkpoint.format is FORMATS[name]
        assert len(ins.tensors) == 42 + 8 * (name in ("torch", "torchvision"))
        assert (ins.spec == TINY_TV) == FORMATS[name].carries_spec


@pytest.mark.parametrize("argv, message", [
    (["convert", "{d}/missing.pt", "{d}/o.safetensors", "--arch", "resnet18", "-q"],
     "{d}/missing.pt: no such file"),
    (["convert", "{d}/empty.pt", "{d}/o.safetensors", "--arch", "resnet18", "-q"],
     "{d}/empty.pt: file is empty"),
    (["convert", "{d}/junk.pt", "{d}/o.safetensors", "--arch", "resnet18", "-q"],
     "{d}/junk.pt: not a readable PyTorch file"),
    (["convert", "{d}/junk.pt", "{d}/o.bin", "--arch", "resnet18"],
     "{d}/o.bin: cannot tell the format from the file name; pass --from/--to with one of: "
     "canonical (.safetensors), torch"),
    (["convert", "{d}/junk.pt", "{d}/o.pt", "--to", "tf"],
     "{d}/o.pt: tf needs a file name ending in .weights.h5 or .keras"),
    (["convert", "{d}/junk.pt", "{d}/nowhere/o.pt", "-q"],
     "{d}/nowhere/o.pt: no such directory {d}/nowhere"),
    (["inspect", "{d}/junk.params"], "{d}/junk.params: not a readable MXNet parameters file "
                                     "(bad magic number"),
    (["inspect", "{d}/junk.weights.h5"], "{d}/junk.weights.h5: not a readable Keras weights"),
    (["inspect", "{d}/junk.keras"], "{d}/junk.keras: not a readable Keras .keras archive"),
    (["inspect", "{d}/junk-symbol.json"], "{d}/junk-symbol.json: its parameters file "
                                          "junk-0000.params is missing"),
])
def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys, argv, message):
    need("torch")
    (tmp_path / "empty.pt").write_bytes(b"")
    for junk in ("junk.pt", "junk.params", "junk.weights.h5", "junk.keras", "junk-symbol.json"):
        (tmp_path / junk).write_bytes(b"this is not a checkpoint" * 10)
    code = cli.main([a.format(d=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("resnet-parity: error: " + message.format(d=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_format_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "a.pt", "b.keras", "--from", "caffe"])
    assert e.value.code == 2 and "unknown format 'caffe'" in capsys.readouterr().err


def test_help_text():
    out = subprocess.run([sys.executable, "-m", "common.tools.cli", "convert", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for words in ("usage: resnet-parity convert", "--allow-nonfinite", "--no-verify", "--force",
                  "--arch NAME", "resnext50_32x4d", "wide_resnet101_2", "PREFIX-symbol.json",
                  "weights_only=True", "Exit status"):
        assert words in out
    out = subprocess.run([sys.executable, "-m", "common.tools.cli", "inspect", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "usage: resnet-parity inspect" in out and "NaN" in out


def test_common_imports_no_framework():
    code = ("import sys, common.tools.formats, common.tools.convert, common.tools.cli; "
            "common.tools.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'tensorflow', 'keras', 'mxnet', 'h5py'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def teardown_module(module) -> None:
    if FUZZ:
        print("\nfuzzed cases (format, mutation, outcome):")
        for key, n in sorted(FUZZ.items()):
            print(f"  {n:4d}  {key}")


def test_a_pytorch_file_names_its_architecture(tmp_path, capsys, monkeypatch):
    """Where keys and shapes decide the architecture, --arch is not needed; where several named
    architectures fit, the error lists them; Keras and Gluon files still need --spec or --arch."""
    need("torch")
    import torch

    import common.tools.convert as convert_module
    tv = torchvision_bottleneck_resnet(groups=32, width_per_group=4, num_classes=4)
    src = tmp_path / "resnext.pth"
    torch.save(tv.state_dict(), src)
    code = cli.main(["convert", str(src), str(tmp_path / "r.safetensors"), "-q", "--size", "32"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "recognised as resnext50_32x4d from its keys and shapes" in out
    assert "num_classes=4 inferred from fc.weight" in out
    assert cli.main(["inspect", str(src)]) == 0
    assert ("architecture: resnext50_32x4d, from its keys and shapes (in_channels=3, "
            "num_classes=4)") in capsys.readouterr().out.splitlines()
    assert cli.main(["inspect", str(tmp_path / "r.safetensors")]) == 0
    assert "architecture: resnext50_32x4d (the stored spec)" in capsys.readouterr().out
    arches = dict(convert_module.ARCHES, **{"my-resnext": convert_module.ARCHES["resnext50_32x4d"]})
    monkeypatch.setattr(convert_module, "ARCHES", arches)
    with pytest.raises(ValueError, match=r"fit several architectures \(resnext50_32x4d, "
                                         r"my-resnext\); name one with --arch"):
        convert(src, tmp_path / "s.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors", "resnext.pth"]


def test_keras_and_gluon_weights_are_recognised_from_their_shapes(files, tmp_path):
    """A ``.weights.h5`` or ``.params`` file stores no spec: a named architecture is recognised
    from its shapes (Keras's layouts as a multiset; Gluon's attribute paths exactly), and a file
    that is no named architecture needs --spec."""
    need("tf")
    need("mxnet")
    with pytest.raises(ValueError, match=r"w\.weights\.h5: no known architecture fits its keys "
                                         r"and shapes .*; pass --spec FILE"):
        convert(files["keras-weights"], tmp_path / "x.safetensors")
    spec = architecture("resnet18_v2", num_classes=3)
    state = random_state(spec, seed=5)
    for name, fw in (("v2.weights.h5", "tf"), ("v2.params", "mxnet")):
        be = get_backend(fw)
        model = be.build(spec)
        be.load_state(model, state)
        (model.save_weights if fw == "tf" else model.save_parameters)(str(tmp_path / name))
        assert inspect_checkpoint(tmp_path / name).architecture.startswith(
            "resnet18_v2, from its keys and shapes (in_channels=1, num_classes=3)")
        r = convert(tmp_path / name, tmp_path / f"{name}.safetensors")
        assert r.ok and r.spec == spec and "recognised as resnet18_v2" in r.spec_source
        back, _ = load_state_file(tmp_path / f"{name}.safetensors")
        assert all(np.array_equal(back[k], state[k]) for k in state)
