"""The spec, the activation names and the canonical state file: no framework needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common import (
    ARCHITECTURES,
    BottleneckSpec,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    activation_names,
    architecture,
    load_state_file,
    param_shapes,
    random_state,
    resnet18_spec,
    save_state,
    spec_from_dict,
    spec_from_json,
    validate_state,
)

# The shapes d2l's chapter prints for a (1, 1, 224, 224) input, layer by layer.
D2L_SHAPES_224 = [(1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14),
                  (1, 512, 7, 7), (1, 512, 1, 1), (1, 512), (1, 10)]


def test_resnet18_is_d2l():
    s = resnet18_spec()
    assert (s.in_channels, s.num_classes) == (1, 10)
    assert (s.stem_channels, s.stem_kernel, s.stem_stride, s.stem_padding) == (64, 7, 2, 3)
    assert s.stage_channels == (64, 128, 256, 512) and s.stage_blocks == (2, 2, 2, 2)
    assert s.conv_bias and not s.shortcut_bn and s.bn_eps == 1e-5 and s.bn_momentum == 0.1
    shapes = param_shapes(s)
    assert shapes["stem.conv.weight"] == (64, 1, 7, 7) and shapes["stem.conv.bias"] == (64,)
    # only the first Residual of stages 1..3 has a 1x1 shortcut, with bias and no BatchNorm
    shortcuts = sorted(k for k in shapes if "shortcut" in k)
    assert shortcuts == [f"stages.{i}.0.shortcut.{p}" for i in (1, 2, 3) for p in ("bias", "weight")]
    assert shapes["stages.2.0.shortcut.weight"] == (256, 128, 1, 1)
    assert shapes["head.fc.weight"] == (10, 512)
    # 11,178,378 trainable parameters + 2 * 3,904 BatchNorm statistics (d2l's ResNet-18)
    n_stats = sum(int(np.prod(v)) for k, v in shapes.items() if k.endswith(("running_mean", "running_var")))
    assert sum(int(np.prod(v)) for v in shapes.values()) - n_stats == 11_178_378


def test_top_level_shapes_are_the_chapters():
    s = resnet18_spec()
    assert list(s.output_shapes(1, 224, 224).values()) == D2L_SHAPES_224


def test_activation_names():
    names = activation_names(resnet18_spec())
    assert names[:4] == ["stem.conv", "stem.bn", "stem.relu", "stem.pool"]
    assert names[-3:] == ["head.pool", "head.flatten", "head.fc"]
    assert "stages.1.0.shortcut" in names and "stages.0.0.shortcut" not in names
    assert len(names) == len(set(names)) == 4 + 8 * 6 + 3 + 3
    assert activation_names(ResidualSpec(3, 6, use_1x1conv=True, strides=2)) == [
        "conv1", "bn1", "relu1", "conv2", "bn2", "shortcut", "out"]
    tv = ResidualSpec(3, 6, use_1x1conv=True, strides=2, shortcut_bn=True)
    assert activation_names(tv)[-2:] == ["shortcut_bn", "out"]


@pytest.mark.parametrize("unit", [resnet18_spec(in_channels=3, num_classes=7, bn_eps=1e-3),
                                  ResidualSpec(3, 6, use_1x1conv=True, strides=2),
                                  ResnetBlockSpec(input_channels=4, num_channels=8)])
def test_spec_json_round_trip(unit):
    assert spec_from_json(unit.to_json()) == unit
    assert hash(spec_from_json(unit.to_json())) == hash(unit)


@pytest.mark.parametrize("bad, message", [
    (dict(stage_channels=(64, 128), stage_blocks=(2,)), "equal length"),
    (dict(stem_kernel=4), "odd"),
    (dict(in_channels=0), "in_channels"),
    (dict(bn_eps=0.0), "bn_eps"),
    (dict(bn_momentum=1.5), "bn_momentum"),
    (dict(block="bottleneck", stage_channels=(256, 512, 1026, 2048)), r"stage_channels\[2\]=1026"),
    (dict(block="resnext"), "block must be one of"),
    (dict(groups=32), "basic blocks take groups=1"),
    (dict(block="bottleneck", stage_channels=(256, 512, 1024, 2048), stride_at="2x2"), "stride_at"),
    (dict(labels=("cat", "dog")), "labels names 2 classes, num_classes is 10"),
    (dict(num_classes=2, labels=("cat", "cat")), "labels must be distinct"),
    (dict(width_per_group=0), "width_per_group"),
])
def test_bad_spec_names_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        ResNetSpec(**bad)


def test_bad_spec_dicts():
    with pytest.raises(ValueError, match="unknown ResNetSpec field.*depth"):
        spec_from_dict({"unit": "ResNetSpec", "depth": 18})
    with pytest.raises(ValueError, match="unknown spec unit"):
        spec_from_dict({"unit": "VGG"})
    with pytest.raises(ValueError, match="not valid JSON"):
        spec_from_json("{")
    with pytest.raises(ValueError, match="use_1x1conv"):
        ResidualSpec(3, 6)


def test_random_state_is_seeded_and_bn_stats_are_not_defaults(r18):
    a, b, c = random_state(r18, 0), random_state(r18, 0), random_state(r18, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.conv.weight"], c["stem.conv.weight"])
    assert all(v.dtype == np.float32 for v in a.values())
    assert not np.allclose(a["stem.bn.running_mean"], 0) and not np.allclose(a["stem.bn.running_var"], 1)
    assert (a["stem.bn.running_var"] > 0).all()


def test_validate_state_names_every_problem(r18, r18_state):
    bad = dict(r18_state)
    del bad["stem.bn.gamma"]
    bad["stem.bn.extra"] = np.zeros(3, np.float32)
    bad["head.fc.weight"] = np.zeros((10, 256), np.float32)
    bad["stages.0.0.conv1.bias"] = np.full(64, np.nan, np.float32)
    with pytest.raises(ValueError) as e:
        validate_state(bad, r18)
    msg = str(e.value)
    assert "missing key(s): stem.bn.gamma" in msg
    assert "unexpected key(s): stem.bn.extra" in msg
    assert "head.fc.weight: expected (10, 512), got (10, 256)" in msg
    assert "non-finite values in stages.0.0.conv1.bias: 64 of 64" in msg
    ok = validate_state({**r18_state, "stages.0.0.conv1.bias": np.full(64, np.inf)}, r18,
                        allow_nonfinite=True)
    assert np.isinf(ok["stages.0.0.conv1.bias"]).all()


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_every_kind_of_nonfinite_value_is_refused(r18, r18_state, value):
    """Infinity alone, with no NaN beside it, is refused too."""
    bad = {**r18_state, "head.fc.bias": np.array([0, 0, value, 0, 0, 0, 0, 0, 0, 0], np.float32)}
    with pytest.raises(ValueError, match="non-finite values in head.fc.bias: 1 of 10"):
        validate_state(bad, r18)


def test_validated_state_is_a_copy(r18, r18_state):
    """validate_state (and so load_state and save_state) never aliases the caller's arrays:
    changing what it returned leaves the caller's state as it was."""
    before = r18_state["stem.conv.weight"].copy()
    out = validate_state(r18_state, r18)
    out["stem.conv.weight"][...] = 0
    assert np.array_equal(r18_state["stem.conv.weight"], before)
    assert not np.shares_memory(out["head.fc.bias"], r18_state["head.fc.bias"])


def test_state_file_round_trip(tmp_path, tiny):
    state = random_state(tiny, 3)
    path = save_state(tmp_path / "w.safetensors", state, tiny)
    loaded, spec = load_state_file(path)
    assert spec == tiny
    assert list(loaded) == list(state)
    assert all(np.array_equal(loaded[k], state[k]) for k in state)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind


def test_state_file_errors_name_the_file(tmp_path, tiny):
    good = save_state(tmp_path / "good.safetensors", random_state(tiny), tiny)
    raw = good.read_bytes()
    cases = {
        "missing.safetensors": None,
        "empty.safetensors": b"",
        "truncated.safetensors": raw[: len(raw) // 2],
        "garbage.safetensors": b"\x00" * 64,
        "header.safetensors": raw[:12],
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(ValueError, match=name):
            load_state_file(path)


def test_state_file_without_spec_or_with_wrong_tensors(tmp_path, tiny):
    from safetensors.numpy import save_file
    state = random_state(tiny)
    save_file(state, str(tmp_path / "nospec.safetensors"))
    with pytest.raises(ValueError, match="no 'spec' metadata"):
        load_state_file(tmp_path / "nospec.safetensors")
    bad = dict(state)
    bad["head.fc.bias"] = np.zeros(3, np.float32)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata={"spec": tiny.to_json()})
    with pytest.raises(ValueError, match=r"shape\.safetensors.*head\.fc\.bias: expected \(5,\), got \(3,\)"):
        load_state_file(tmp_path / "shape.safetensors")


def test_failed_save_leaves_old_file_and_no_temporary(tmp_path, tiny):
    path = save_state(tmp_path / "w.safetensors", random_state(tiny, 0), tiny)
    before = path.read_bytes()
    bad = random_state(tiny, 1)
    del bad["head.fc.bias"]
    with pytest.raises(ValueError, match="head.fc.bias"):
        save_state(path, bad, tiny)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_interrupted_save_keeps_the_old_file(tmp_path, tiny, monkeypatch):
    """The writer dies half-way (disk full, Ctrl-C): the file at the target keeps its old
    bytes, since save_state writes a temporary file and renames it, and no temporary is left."""
    import safetensors.numpy
    path = save_state(tmp_path / "w.safetensors", random_state(tiny, 0), tiny)
    before = path.read_bytes()
    written = []

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        written.append(Path(filename))
        raise OSError("No space left on device")
    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_state(path, random_state(tiny, 1), tiny)
    assert len(written) == 1 and written[0] != path      # it wrote somewhere else ...
    assert path.read_bytes() == before                   # ... so the old file is intact
    assert os.listdir(tmp_path) == ["w.safetensors"]     # and the partial file is gone
    assert load_state_file(path)[1] == tiny


def test_saved_files_get_a_new_files_mode(tmp_path, tiny):
    """Atomic writes go through a private temporary file; the result must not stay private."""
    old = os.umask(0o022)
    try:
        path = save_state(tmp_path / "w.safetensors", random_state(tiny), tiny)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# -- the family -----------------------------------------------------------------------------------

# Trainable parameters torchvision publishes for its models (torchvision.models documentation).
TORCHVISION_PARAMETERS = {
    "torchvision-resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}


def trainable(spec) -> int:
    return sum(int(np.prod(s)) for k, s in param_shapes(spec).items()
               if not k.endswith(("running_mean", "running_var")))


@pytest.mark.parametrize("name", TORCHVISION_PARAMETERS)
def test_family_members_have_torchvisions_parameter_counts(name):
    assert trainable(architecture(name)) == TORCHVISION_PARAMETERS[name]


def test_every_named_member_builds_and_round_trips_through_json():
    for name, make in ARCHITECTURES.items():
        spec = make()
        assert spec == architecture(name) and spec_from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown architecture 'resnet51'"):
        architecture("resnet51")
    assert architecture("resnet50", num_classes=4).num_classes == 4


def test_bottleneck_widths_follow_torchvision():
    """3x3 width = stage_channels // 4 * width_per_group // 64 * groups."""
    assert [architecture("resnet50").bottleneck_channels(i) for i in range(4)] == [64, 128, 256, 512]
    assert [architecture("resnext50_32x4d").bottleneck_channels(i) for i in range(4)] == [
        128, 256, 512, 1024]
    assert architecture("wide_resnet50_2").bottleneck_channels(0) == 128
    shapes = param_shapes(architecture("resnext50_32x4d"))
    assert shapes["stages.0.0.conv2.weight"] == (128, 4, 3, 3)          # 32 groups of 4 channels
    assert shapes["stages.0.0.conv3.weight"] == (256, 128, 1, 1)
    assert shapes["stages.0.0.shortcut.weight"] == (256, 64, 1, 1)      # stage 0 projects, stride 1
    assert "stages.0.1.shortcut.weight" not in shapes


def test_where_a_bottleneck_downsamples():
    """The first block of every stage but the first halves the size, with the stride on the 3x3
    conv (v1.5) or the first 1x1 (v1); Hugging Face's downsample_in_first_stage moves stage 0 too."""
    v15, v1 = architecture("resnet50"), architecture("resnet50_v1")
    first = [stage.residuals()[0] for stage in v15.stages()]
    assert [(b.strides, b.use_1x1conv) for b in first] == [(1, True), (2, True), (2, True), (2, True)]
    assert {b.stride_at for b in first} == {"3x3"}
    assert {b.stride_at for stage in v1.stages() for b in stage.residuals()} == {"1x1"}
    moved = architecture("resnet50", downsample_in_first_stage=True)
    assert moved.stages()[0].residuals()[0].strides == 2
    assert list(moved.output_shapes(1, 64, 64).values())[1] == (1, 256, 8, 8)
    assert list(v15.output_shapes(1, 224, 224).values())[1:5] == [
        (1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]


def test_a_bottleneck_block_is_refused_when_it_makes_no_sense():
    with pytest.raises(ValueError, match="bottleneck_channels \\(30\\) must be divisible by groups \\(4\\)"):
        BottleneckSpec(bottleneck_channels=30, groups=4)
    with pytest.raises(ValueError, match="must keep the shape"):
        BottleneckSpec(input_channels=64, num_channels=256)
    with pytest.raises(ValueError, match="bottleneck_channels is for bottleneck blocks"):
        ResnetBlockSpec(bottleneck_channels=16)


def test_labels_travel_with_the_spec():
    spec = architecture("resnet50", num_classes=4, labels=["airplane", "automobile", "ship", "truck"])
    assert spec.labels == ("airplane", "automobile", "ship", "truck")
    assert spec_from_json(spec.to_json()).labels[2] == "ship"


def test_d2l_resnet18_keeps_d2ls_blocks():
    """The general rule (a 1x1 conv shortcut where a block changes the shape) gives d2l's
    ResNet-18 exactly d2l's blocks: only the first block of stages 1-3 has one, at stride 2."""
    blocks = [(b.strides, b.use_1x1conv) for stage in resnet18_spec().stages()
              for b in stage.residuals()]
    assert blocks == [(1, False), (1, False), (2, True), (1, False), (2, True), (1, False),
                      (2, True), (1, False)]


def test_a_preactivation_block_normalises_its_input_and_has_no_shortcut_batchnorm():
    """v2 (He et al., Identity Mappings): each bn<k> sits before conv<k>, so bn1 has the
    block's input channels; the shortcut is a bare 1x1 conv; the network adds head.bn."""
    r = ResidualSpec(3, 6, use_1x1conv=True, strides=2, preact=True)
    assert [(layer.name, layer.kind) for layer in r.layers()] == [
        ("bn1", "bn"), ("conv1", "conv"), ("bn2", "bn"), ("conv2", "conv"), ("shortcut", "conv")]
    assert param_shapes(r)["bn1.gamma"] == (3,) and param_shapes(r)["bn2.gamma"] == (6,)
    b = BottleneckSpec(16, 32, 8, use_1x1conv=True, preact=True)
    assert [layer.name for layer in b.layers()] == ["bn1", "conv1", "bn2", "conv2", "bn3", "conv3",
                                                    "shortcut"]
    assert param_shapes(b)["bn3.gamma"] == (8,)            # conv3's input, not its output
    v2 = architecture("resnet18_v2")
    assert param_shapes(v2)["head.bn.running_var"] == (512,)
    assert "head.bn.gamma" not in param_shapes(resnet18_spec())
    assert spec_from_json(v2.to_json()) == v2
    with pytest.raises(ValueError, match="shortcut_bn is for post-activation blocks"):
        ResNetSpec(preact=True, shortcut_bn=True)
    with pytest.raises(ValueError, match="shortcut_bn is for post-activation blocks"):
        architecture("resnet50", preact=True)   # torchvision's layout has shortcut BatchNorms


def test_conv_bias_is_on_or_off_per_kind_of_conv():
    """True (d2l, keras.applications), False (torchvision, Hugging Face) or the kinds that have
    one: GluonCV's v1 bottleneck keeps a bias on its two 1x1 convs only."""
    spec = architecture("resnet50", conv_bias=["1x1"])
    biases = [k for k in param_shapes(spec) if k.endswith(".bias") and ".bn" not in k
              and "shortcut_bn" not in k]
    assert "stages.0.0.conv1.bias" in biases and "stages.0.0.conv3.bias" in biases
    assert not any(k.endswith(("conv2.bias", "shortcut.bias")) or k.startswith("stem.")
                   for k in biases)
    assert spec.conv_bias == ("1x1",) and spec_from_json(spec.to_json()) == spec
    assert [layer.name for layer in ResidualSpec(3, 6, use_1x1conv=True, strides=2,
                                                 conv_bias=("shortcut",)).layers()
            if "bias" in layer.shapes] == ["shortcut"]
    assert param_shapes(ResNetSpec(conv_bias=("stem",)))["stem.conv.bias"] == (64,)
    # one spelling per meaning: every kind is True, none is False, order does not matter
    assert ResNetSpec(conv_bias=["shortcut", "3x3", "1x1", "stem"]).conv_bias is True
    assert ResNetSpec(conv_bias=[]).conv_bias is False
    assert ResNetSpec(conv_bias=["shortcut", "stem"]) == ResNetSpec(conv_bias=("stem", "shortcut"))
    with pytest.raises(ValueError, match=r"conv_bias names unknown conv kind\(s\) \['5x5'\]"):
        ResNetSpec(conv_bias=["5x5"])
    with pytest.raises(ValueError, match="conv_bias must be True, False or a list"):
        ResNetSpec(conv_bias="stem")
