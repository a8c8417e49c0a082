"""Hugging Face ResNet checkpoints in and out: ``common/tools/formats/huggingface.py``, through
``convert``, ``inspect`` and the CLI.

The reference is transformers' own code: ``ResNetForImageClassification`` built here from
configs, with random weights *and* random BatchNorm running statistics, saved with
``save_pretrained``, and run for its ``hidden_states`` (the embedder's output is our
``stem.pool``, stage i's our ``stages.i.{n-1}``) and logits. Nothing is downloaded: the Hub is
a cache laid out on disk, read with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import common.tools.cli as cli
from common import (
    EVAL_RTOL_CPU,
    ResNetSpec,
    architecture,
    compare,
    format_rows,
    get_backend,
    load_state_file,
    random_state,
    resnet18_spec,
    save_state,
    worst,
)
from common.tools.convert import convert, inspect_checkpoint
from common.tools.formats import FORMATS, HF
from common.tools.formats.huggingface import config_to_spec, spec_to_config

from .conftest import backend_or_skip, make_input, randomize_batch_norms

transformers = pytest.importorskip("transformers", reason="pip install 'resnet-parity[test]'")
pytest.importorskip("torch", reason="transformers' ResNet needs PyTorch: "
                                    "pip install 'resnet-parity[torch]'")

# Seed 000 (/work/shared/seeds/000_25db250dedd139f8.txt): the config of the Hub model
# Denis1976/autotrain-training-cifar-10-81128141659, a ResNet-50 fine-tuned on four CIFAR-10
# classes, as printed there: its architecture fields and labels (label2id's ids are strings
# there, as autotrain wrote them).
SEED_000 = {
    "architectures": ["ResNetForImageClassification"], "model_type": "resnet",
    "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64,
    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
    "num_channels": 3,
    "id2label": {"0": "airplane", "1": "automobile", "2": "ship", "3": "truck"},
    "label2id": {"airplane": "0", "automobile": "1", "ship": "2", "truck": "3"},
}
SEED_LABELS = ("airplane", "automobile", "ship", "truck")
# small configs for each option transformers' ResNet has
SMALL = {
    "basic": {"layer_type": "basic", "depths": [1, 2], "hidden_sizes": [8, 16]},
    "basic-first-stage": {"layer_type": "basic", "depths": [1, 1, 1], "hidden_sizes": [8, 16, 32],
                          "downsample_in_first_stage": True},
    "downsample-in-bottleneck": {"depths": [1, 2], "hidden_sizes": [16, 32],
                                 "downsample_in_bottleneck": True},
    "downsample-in-first-stage": {"depths": [2, 1], "hidden_sizes": [16, 32],
                                  "downsample_in_first_stage": True},
}
FRAMEWORKS = ("torch", "tf", "mxnet")
X_SHAPE = (2, 3, 61, 47)  # batch 2, odd and not square


def need(*names: str) -> None:
    for n in names:
        backend_or_skip(n)


def have(name: str) -> bool:
    """Whether the framework ``name`` is installed (its tests skip otherwise)."""
    try:
        backend_or_skip(name)
    except pytest.skip.Exception:
        return False
    return True


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def hf_model(config: dict, seed: int = 0, cls: str = "ResNetForImageClassification"):
    """transformers' model for ``config``, random weights and BatchNorm statistics, eval mode."""
    import torch
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(transformers.ResNetConfig(**config))
    return randomize_batch_norms(model).eval()


def hf_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """transformers' own forward: the hidden states under our names, and the logits."""
    import torch
    with torch.no_grad():
        out = model(torch.from_numpy(x), output_hidden_states=True)
    depths = model.config.depths
    names = ["stem.pool"] + [f"stages.{i}.{n - 1}" for i, n in enumerate(depths)]
    return {**{n: h.numpy() for n, h in zip(names, out.hidden_states)},
            "head.fc": out.logits.numpy()}


def framework_rows(framework: str, spec: ResNetSpec, state: dict, x: np.ndarray,
                   want: dict[str, np.ndarray]):
    be = get_backend(framework)
    model = be.build(spec)
    be.load_state(model, state)
    got = be.activations(model, x)
    return compare({k: got[k] for k in want}, want, EVAL_RTOL_CPU)


# -- seed 000: a ResNet-50 with four named classes ---------------------------------------------------
@pytest.fixture(scope="module")
def seed50(tmp_path_factory):
    """Seed 000's ResNet-50 saved by transformers, converted by the suite into canonical, torch
    and Gluon (the convert API) and Keras (the CLI), each conversion verified."""
    need("torch")
    d = tmp_path_factory.mktemp("seed50")
    model = hf_model(SEED_000, seed=0)
    model.save_pretrained(d / "hf")
    x = make_input(X_SHAPE, seed=1)
    out = {"dir": d / "hf", "model": model, "x": x, "want": hf_outputs(model, x)}
    for name, dst in (("canonical", "w.safetensors"), ("torch", "w.pt"), ("mxnet", "w.params")):
        if name in ("canonical", "torch") or have(name):
            r = convert(d / "hf", d / dst, size=32)
            assert r.ok and r.written, r.verification
            out[name] = d / dst
    if have("tf"):
        out["tf"] = d / "w.weights.h5"
        out["cli"] = cli.main(["convert", str(d / "hf"), str(out["tf"]), "-q", "--size", "32"])
    return out


def test_seed_000_config_is_resnet50_with_its_labels(seed50):
    """config.json -> spec: torchvision's ResNet-50 (as the spec's own constructor builds it)
    with 4 classes named as the Hub model names them; the file keeps them in id order."""
    want = architecture("resnet50", num_classes=4, labels=SEED_LABELS)
    assert config_to_spec(SEED_000) == want
    assert HF.spec(seed50["dir"]) == want
    assert load_state_file(seed50["canonical"])[1].labels == SEED_LABELS


def test_seed_000_tensors_land_on_their_layers(seed50):
    """Spot checks, through transformers' module attributes: the stem, a grouped-free 3x3 in
    the middle, a shortcut BatchNorm's statistics and the classifier inside its Sequential."""
    m, state = seed50["model"], load_state_file(seed50["canonical"])[0]
    block = m.resnet.encoder.stages[2].layers[0]
    for key, tensor in (("stem.conv.weight", m.resnet.embedder.embedder.convolution.weight),
                        ("stages.2.0.conv2.weight", block.layer[1].convolution.weight),
                        ("stages.2.0.bn3.gamma", block.layer[2].normalization.weight),
                        ("stages.2.0.shortcut_bn.running_var", block.shortcut.normalization.running_var),
                        ("stages.3.2.bn1.running_mean",
                         m.resnet.encoder.stages[3].layers[2].layer[0].normalization.running_mean),
                        ("head.fc.weight", m.classifier[1].weight)):
        assert np.array_equal(state[key], tensor.detach().numpy()), key


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_seed_000_every_framework_computes_what_transformers_computes(seed50, framework):
    """Each framework, loaded from the file the conversion wrote for it, against
    transformers' hidden states and logits, per stage, on a batch of 2 odd-sized images."""
    need(framework)
    if framework == "tf":
        assert seed50["cli"] == 0
    fmt = {"torch": FORMATS["torch"], "tf": FORMATS["keras-weights"],
           "mxnet": FORMATS["gluon-params"]}[framework]
    spec = HF.spec(seed50["dir"])
    state = fmt.read(seed50[framework], spec)
    rows = framework_rows(framework, spec, state, seed50["x"], seed50["want"])
    print("\n" + format_rows(rows, f"{framework} vs transformers, seed 000's ResNet-50, "
                                   f"input {X_SHAPE}"))
    w = worst(rows)
    print(f"worst: {w.layer} max abs {w.max_abs:.2e} max rel {w.max_rel:.2e}")
    assert all(r.ok for r in rows), format_rows(rows)


# -- every option of transformers' ResNet, at small widths ---------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Each SMALL config saved by transformers and converted to a canonical file (verified)."""
    need("torch")
    out = {}
    for i, (case, config) in enumerate(SMALL.items()):
        d = tmp_path_factory.mktemp(case)
        model = hf_model({**config, "embedding_size": 8, "num_labels": 3}, seed=10 + i)
        model.save_pretrained(d / "hf")
        r = convert(d / "hf", d / "w.safetensors", size=32)
        assert r.ok, r.verification
        x = make_input(X_SHAPE, seed=i)
        out[case] = {"dir": d / "hf", "canonical": d / "w.safetensors", "model": model, "x": x,
                     "want": hf_outputs(model, x)}
    return out


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", SMALL)
def test_every_option_matches_transformers(small, case, framework):
    need(framework)
    c = small[case]
    state, spec = load_state_file(c["canonical"])
    rows = framework_rows(framework, spec, state, c["x"], c["want"])
    print("\n" + format_rows(rows, f"{framework} vs transformers, {case}"))
    assert all(r.ok for r in rows), format_rows(rows)


def test_options_map_onto_the_spec():
    basic = config_to_spec({"model_type": "resnet", **SMALL["basic"], "embedding_size": 8})
    assert (basic.block, basic.stage_channels, basic.stem_channels, basic.labels,
            basic.num_classes) == ("basic", (8, 16), 8, (), 2)  # transformers' default 2 labels
    v1 = config_to_spec({"model_type": "resnet", "downsample_in_bottleneck": True})
    assert v1 == dataclasses.replace(architecture("resnet50", num_classes=2, stride_at="1x1"),
                                     name="hf-resnet")
    first = config_to_spec({"model_type": "resnet", "downsample_in_first_stage": True})
    assert first.downsample_in_first_stage and first.stride_at == "3x3"
    r18 = config_to_spec({"model_type": "resnet", "layer_type": "basic", "depths": [2, 2, 2, 2],
                          "hidden_sizes": [64, 128, 256, 512], "num_labels": 1000})
    assert r18 == architecture("torchvision-resnet18")
    ordered = config_to_spec({"model_type": "resnet", "id2label": {"1": "zebra", "0": "yak"}})
    assert ordered.labels == ("yak", "zebra")  # by id, not by the file's order or by name


@pytest.mark.parametrize("change, field", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"layer_type": "preactivation"}, "layer_type"),
    ({"model_type": "vit"}, "model_type"),
    ({"depths": [3, 4, 6]}, "depths"),
    ({"hidden_sizes": [256, 512, 1024, 2050]}, "stage_channels"),
    ({"downsample_in_first_stage": "yes"}, "downsample_in_first_stage"),
    ({"id2label": {"0": "a", "2": "b"}}, "id2label"),
    ({"id2label": {"0": "a", "1": "a"}}, "id2label"),
])
def test_configs_the_suite_cannot_represent_are_refused_by_field(change, field):
    with pytest.raises(ValueError, match=field):
        config_to_spec({**SEED_000, **change})


@pytest.mark.parametrize("spec, fields", [
    (resnet18_spec(), ["conv_bias=True", "shortcut_bn=False"]),
    (architecture("resnext50_32x4d"), ["groups=32", "width_per_group=4"]),
    (architecture("wide_resnet50_2"), ["width_per_group=128"]),
    (architecture("resnet50", bn_eps=1e-3), ["bn_eps=0.001"]),
    (architecture("keras-resnet50"), ["conv_bias=True", "bn_eps=1.001e-05", "bn_momentum=0.01"]),
    (architecture("resnet34", stem_kernel=3, stem_stride=1, stem_pool=False),
     ["stem_kernel=3", "stem_stride=1", "stem_pool=False"]),
])
def test_specs_transformers_cannot_represent_are_refused_by_field(spec, fields):
    with pytest.raises(ValueError, match="cannot be written as a Hugging Face ResNet") as e:
        spec_to_config(spec)
    assert all(f in str(e.value) for f in fields), str(e.value)


# -- writing ---------------------------------------------------------------------------------------
TINY_HF = ResNetSpec(name="tiny-hf", in_channels=3, num_classes=3, stem_channels=8,
                     stage_channels=(16, 32), stage_blocks=(1, 2), block="bottleneck",
                     conv_bias=False, shortcut_bn=True, labels=("dog", "emu", "cat"))  # unsorted


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A canonical file (random weights and statistics, named classes) written as an HF
    directory by the CLI."""
    need("torch")
    d = tmp_path_factory.mktemp("written")
    state = random_state(TINY_HF, seed=5)
    save_state(d / "src.safetensors", state, TINY_HF)
    code = cli.main(["convert", str(d / "src.safetensors"), str(d / "hf"), "--to", "hf", "-q",
                     "--size", "32"])
    assert code == 0
    return {"dir": d / "hf", "state": state, "root": d}


def test_written_directory_is_what_from_pretrained_loads(written):
    """transformers loads it with no missing, unexpected or mis-sized key, keeps the labels, and
    computes the suite's PyTorch model's logits."""
    model, info = transformers.ResNetForImageClassification.from_pretrained(
        written["dir"], output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.id2label == {0: "dog", 1: "emu", 2: "cat"}
    assert sorted(os.listdir(written["dir"])) == ["config.json", "model.safetensors"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in written["dir"].iterdir()} == {0o666 & ~umask}
    x = make_input(X_SHAPE, seed=3)
    want = hf_outputs(model.eval(), x)["head.fc"]
    be = get_backend("torch")
    ours = be.build(TINY_HF)
    be.load_state(ours, written["state"])
    rows = compare({"head.fc": be.forward(ours, x)}, {"head.fc": want})
    print("\n" + format_rows(rows, "suite's torch vs from_pretrained, logits"))
    assert rows[0].ok


def test_labels_and_weights_survive_the_round_trip(written, tmp_path):
    r = convert(written["dir"], tmp_path / "back.safetensors", size=32)
    assert r.ok
    state, spec = load_state_file(tmp_path / "back.safetensors")
    assert spec.labels == TINY_HF.labels
    assert dataclasses.replace(spec, name=TINY_HF.name) == TINY_HF
    assert all(np.array_equal(state[k], written["state"][k]) for k in written["state"])


def test_inspect_names_the_architecture_and_labels(written, seed50, capsys):
    assert cli.main(["inspect", str(written["dir"])]) == 0
    out = capsys.readouterr().out
    assert "format: hf" in out and "labels: dog, emu, cat" in out
    assert "architecture: hf-resnet (the stored spec; not one of the named" in out
    assert cli.main(["inspect", str(seed50["dir"] / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "architecture: resnet50 (the stored spec)" in out
    assert "labels: airplane, automobile, ship, truck" in out
    assert "classifier.1.weight" in out and "(4, 2048)" in out


def test_a_spec_transformers_cannot_hold_is_refused_and_nothing_written(tmp_path, capsys):
    save_state(tmp_path / "d2l.safetensors", random_state(resnet18_spec(), seed=0), resnet18_spec())
    code = cli.main(["convert", str(tmp_path / "d2l.safetensors"), str(tmp_path / "out"),
                     "--to", "huggingface", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "conv_bias=True" in err and "shortcut_bn=False" in err, err
    assert listing(tmp_path) == ["d2l.safetensors"]


def test_existing_dst_needs_force_and_only_a_checkpoint_is_replaced(written, tmp_path, capsys):
    src = written["root"] / "src.safetensors"
    dst = tmp_path / "hf"
    shutil.copytree(written["dir"], dst)
    (dst / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"hf: already exists; pass --force"):
        convert(src, dst, dst_format="hf", verify_output=False)
    r = convert(src, dst, dst_format="hf", force=True, verify_output=False)
    assert r.written and json.loads((dst / "config.json").read_text())["model_type"] == "resnet"
    assert listing(tmp_path) == ["hf"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sub").mkdir()
    with pytest.raises(ValueError, match=r"other: a directory that holds other things"):
        convert(src, tmp_path / "other", dst_format="hf", force=True, verify_output=False)
    (tmp_path / "f").write_bytes(b"file")
    with pytest.raises(ValueError, match=r"f: is a file, not a directory name"):
        convert(src, tmp_path / "f", dst_format="hf", force=True, verify_output=False)
    assert listing(tmp_path) == ["f", "hf", "other"] and listing(tmp_path / "other") == ["sub"]


def test_an_interrupted_write_leaves_nothing(written, tmp_path, monkeypatch):
    def half_then_interrupt(path, state, spec):
        path.mkdir(exist_ok=True)
        (path / "config.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(HF, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(written["root"] / "src.safetensors", tmp_path / "hf", dst_format="hf")
    assert listing(tmp_path) == []


# -- other ways in: pytorch_model.bin, a weights file, a Hub id ------------------------------------------
def test_pytorch_model_bin_reads_as_the_safetensors_does(small, tmp_path):
    import torch
    c = small["basic"]
    d = tmp_path / "bin"
    d.mkdir()
    torch.save(c["model"].state_dict(), d / "pytorch_model.bin")
    shutil.copy(c["dir"] / "config.json", d)
    r = convert(d, tmp_path / "w.safetensors", size=32)
    assert r.ok and r.src.format is HF and r.src.files[-1].name == "pytorch_model.bin"
    got, want = load_state_file(tmp_path / "w.safetensors")[0], load_state_file(c["canonical"])[0]
    assert all(np.array_equal(got[k], want[k]) for k in want)


def hub_cache(root: Path, repo: str, snapshot: Path) -> Path:
    """A huggingface_hub cache holding ``snapshot`` as ``repo``'s main revision."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(snapshot, folder / "snapshots" / commit)
    return root


def test_a_hub_id_is_read_from_the_hub_cache_offline(small, tmp_path):
    """``inspect acme/tiny-resnet`` and ``convert`` from it with HF_HUB_OFFLINE=1 and the cache
    in a temporary directory: no network; an id not in the cache is a one-line error."""
    pytest.importorskip("huggingface_hub")
    cache = hub_cache(tmp_path / "hub", "acme/tiny-resnet", small["basic"]["dir"])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "common.tools.cli"]
    out = subprocess.run(run + ["inspect", "acme/tiny-resnet"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "format: hf" in out.stdout and "snapshots/0123456789abcdef" in out.stdout
    out = subprocess.run(run + ["convert", "acme/missing", "w.safetensors", "-q"], env=env,
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "acme/missing: no such file, and not downloadable" in out.stderr
    assert out.stderr.count("\n") == 1 and listing(tmp_path) == ["hub"]


def test_without_huggingface_hub_a_hub_id_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    from common import BackendUnavailable
    with pytest.raises(BackendUnavailable, match=r"pip install 'resnet-parity\[hf\]'"):
        inspect_checkpoint("acme/tiny-resnet")


# -- bad input ---------------------------------------------------------------------------------------
def _drop_key(d: Path) -> None:
    from safetensors.numpy import load_file, save_file
    t = load_file(d / "model.safetensors")
    del t["resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var"]
    save_file(t, d / "model.safetensors")


def _reshape_classifier(d: Path) -> None:
    from safetensors.numpy import load_file, save_file
    t = load_file(d / "model.safetensors")
    t["classifier.1.weight"] = t["classifier.1.weight"][:, :-1].copy()
    save_file(t, d / "model.safetensors")


def _truncate(d: Path) -> None:
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _set_config(**change):
    def edit(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **change}))
    return edit


def _backbone_only(d: Path) -> None:
    shutil.rmtree(d)
    hf_model({**SMALL["basic"], "embedding_size": 8}, cls="ResNetModel").save_pretrained(d)


BAD = {
    "no config.json": (lambda d: (d / "config.json").unlink(), "hf", r"config\.json: no such file"),
    "no config.json, no --from": (lambda d: (d / "config.json").unlink(), None,
                                  r"a directory, but not a Hugging Face checkpoint"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), None,
                   r"no weights file \(model\.safetensors or pytorch_model\.bin\)"),
    "truncated": (_truncate, None, r"model\.safetensors: not a readable safetensors file"),
    "missing key": (_drop_key, None, r"model\.safetensors: .*missing key\(s\): resnet\.encoder\."
                                     r"stages\.1\.layers\.0\.shortcut\.normalization\.running_var"),
    "mis-shaped key": (_reshape_classifier, None, r"shape mismatch for classifier\.1\.weight: "
                                                  r"expected \(3, 16\), got \(3, 15\)"),
    "hidden_act": (_set_config(hidden_act="gelu"), None, r"config\.json: hidden_act is 'gelu'"),
    "backbone only": (_backbone_only, None, r"a backbone-only checkpoint \(ResNetModel"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_file_and_writes_nothing(small, tmp_path, case):
    mutate, family, message = BAD[case]
    src = tmp_path / "src" / "hf"
    shutil.copytree(small["basic"]["dir"], src)
    mutate(src)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=message) as e:
        convert(src, out / "w.weights.h5", src_format=family)
    assert str(src) in str(e.value)
    assert listing(out) == []
