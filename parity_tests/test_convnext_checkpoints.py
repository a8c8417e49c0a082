"""ConvNeXt checkpoints in and out: Hugging Face directories (against transformers' own
``ConvNextForImageClassification``, built from seed 001's config, no download), torchvision
state_dicts (hand-built under torchvision's documented names: its wheel does not import beside
the CPU torch here), a Hub id from an offline cache, and every native format, through
``convert``, ``inspect`` and the CLI.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import common.tools.cli as cli
from common import (
    EVAL_RTOL_CPU,
    ConvNeXtSpec,
    compare,
    format_rows,
    get_backend,
    load_state_file,
    random_state,
    save_state,
)
from common.tools.convert import convert, inspect_checkpoint
from common.tools.formats import FORMATS
from common.tools.formats.huggingface import config_to_spec, spec_to_config

from .conftest import backend_or_skip, make_input

transformers = pytest.importorskip("transformers", reason="pip install 'resnet-parity[test]'")
torch = pytest.importorskip("torch", reason="transformers' ConvNeXt needs PyTorch")

# Seed 001: the config of the Hub model Denis1976/autotrain-training-cifar-10-81128141663, a
# ConvNeXt-T fine-tuned on four CIFAR-10 classes, as printed there (its architecture fields;
# label2id's ids are strings there, as autotrain wrote them). Its head LayerNorm eps is 1e-12.
SEED_001 = {
    "architectures": ["ConvNextForImageClassification"], "model_type": "convnext",
    "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768], "drop_path_rate": 0.0,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "layer_scale_init_value": 1e-6,
    "num_channels": 3, "num_stages": 4, "patch_size": 4, "image_size": 224,
    "id2label": {"0": "airplane", "1": "automobile", "2": "ship", "3": "truck"},
    "label2id": {"airplane": "0", "automobile": "1", "ship": "2", "truck": "3"},
}
LABELS = ("airplane", "automobile", "ship", "truck")
X_SHAPE = (2, 3, 67, 45)  # batch 2, odd, not square, not a multiple of the patch size


def hf_model(config: dict, seed: int = 0):
    """transformers' ConvNeXt for ``config`` with random weights, and LayerNorm weights and
    layer scales drawn away from their defaults (1, 0 and 1e-6 would hide eps and scale
    mistakes, and a 1e-6 layer scale hides every block's branch), eval mode."""
    torch.manual_seed(seed)
    model = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(**config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale_parameter"):
                p.uniform_(0.2, 0.6)
            elif p.dim() == 1 and ("layernorm" in name or "downsampling_layer.0" in name):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.2)
    return model.eval()


def hf_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """transformers' forward: the embeddings' and each stage's output under our names (its
    ``hidden_states``), and the logits."""
    with torch.no_grad():
        out = model(torch.from_numpy(x), output_hidden_states=True)
    names = ["stem.norm"] + [f"stages.{i}.blocks.{d - 1}" for i, d in enumerate(model.config.depths)]
    return {**{n: h.numpy() for n, h in zip(names, out.hidden_states)},
            "head.fc": out.logits.numpy()}


@pytest.fixture(scope="module")
def seed001(tmp_path_factory):
    d = tmp_path_factory.mktemp("seed001")
    model = hf_model(SEED_001)
    model.save_pretrained(d / "hf")
    r = convert(d / "hf", d / "w.safetensors", size=32)
    assert r.ok and r.written, r.verification
    x = make_input(X_SHAPE, seed=1)
    return {"dir": d / "hf", "model": model, "file": d / "w.safetensors", "x": x,
            "want": hf_outputs(model, x)}


def test_seed_001_config_is_convnext_tiny_with_its_head_eps_and_labels():
    spec = config_to_spec(SEED_001)
    assert isinstance(spec, ConvNeXtSpec)
    assert (spec.depths, spec.widths, spec.patch_size) == ((3, 3, 9, 3), (96, 192, 384, 768), 4)
    # transformers applies layer_norm_eps to the head alone; every other LayerNorm is 1e-6
    assert (spec.head_ln_eps, spec.ln_eps, spec.gelu) == (1e-12, 1e-6, "exact")
    assert spec.labels == LABELS and spec.num_classes == 4


@pytest.mark.parametrize("framework", ["torch", "tf", "mxnet"])
def test_seed_001_every_framework_computes_what_transformers_computes(seed001, framework):
    """Per stage (transformers' hidden_states) and at the logits, CPU float32, bound 1e-5."""
    backend_or_skip(framework)
    state, spec = load_state_file(seed001["file"])
    be = get_backend(framework)
    model = be.build(spec)
    be.load_state(model, state)
    got = be.activations(model, seed001["x"])
    rows = compare({k: got[k] for k in seed001["want"]}, seed001["want"], EVAL_RTOL_CPU)
    print(format_rows(rows, f"\n{framework} vs transformers' ConvNextForImageClassification"))
    assert all(r.ok for r in rows)
    assert len(rows) == 6  # the stem, four stages, the logits


def test_the_head_eps_is_where_transformers_puts_it(seed001):
    """Reading the seed's 1e-12 as every LayerNorm's eps, or the 1e-6 as the head's, moves the
    logits: both are measured, and the spec that transformers' placement gives matches."""
    state, spec = load_state_file(seed001["file"])
    x, want = seed001["x"], seed001["want"]["head.fc"]
    be = get_backend("torch")

    def logits(s):
        model = be.build(s)
        be.load_state(model, state)
        return be.forward(model, x)
    right = np.abs(logits(spec) - want).max() / np.abs(want).max()
    every = dataclasses.replace(spec, ln_eps=1e-12)
    wrong = np.abs(logits(every) - want).max() / np.abs(want).max()
    print(f"\nlogits rel: spec {right:.1e}; 1e-12 in every LayerNorm {wrong:.1e}")
    assert right < 1e-6 < wrong


def test_written_hf_directory_is_what_from_pretrained_loads(seed001, tmp_path):
    """canonical -> hf: config.json and model.safetensors that transformers loads with no
    missing or unexpected key, the labels as id2label, the same logits."""
    assert cli.main(["convert", str(seed001["file"]), str(tmp_path / "out"), "--to", "hf", "-q",
                     "--size", "32"]) == 0
    loaded, info = transformers.ConvNextForImageClassification.from_pretrained(
        tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    assert loaded.config.id2label == dict(enumerate(LABELS))
    assert loaded.config.layer_norm_eps == 1e-12
    got = hf_outputs(loaded.eval(), seed001["x"])
    assert np.array_equal(got["head.fc"], seed001["want"]["head.fc"])


def test_inspect_names_convnext_and_its_labels(seed001, capsys):
    assert cli.main(["inspect", str(seed001["dir"])]) == 0
    out = capsys.readouterr().out
    assert "format: hf" in out and '"unit": "ConvNeXtSpec"' in out
    assert '"labels": ["airplane", "automobile", "ship", "truck"]' in out
    assert re.search(r"parameters: 27,823,204 trainable \(from the spec\)", out)


# -- torchvision ------------------------------------------------------------------------------------
def torchvision_state_dict(hf_state: dict) -> dict:
    """transformers' ConvNeXt state_dict under torchvision's names, as torchvision's
    ``convnext.py`` builds them: ``features`` alternates the stem or a downsampling
    ``Sequential(norm, conv)`` (even indices) and the stages' ``CNBlock``s (odd indices), a
    block's ``block`` is ``Sequential(dwconv, Permute, LayerNorm, Linear, GELU, Linear,
    Permute)`` and its ``layer_scale`` a ``(C, 1, 1)`` parameter; ``classifier`` is
    ``Sequential(LayerNorm2d, Flatten, Linear)``. Written here from that description, apart
    from the suite's own name tables."""
    out = {}
    for k, v in hf_state.items():
        k2 = (k.replace("convnext.embeddings.patch_embeddings", "features.0.0")
               .replace("convnext.embeddings.layernorm", "features.0.1")
               .replace("convnext.layernorm", "classifier.0")
               .replace("classifier.weight", "classifier.2.weight")
               .replace("classifier.bias", "classifier.2.bias"))
        m = re.match(r"convnext\.encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.(\w+)$", k2)
        if m:
            k2 = f"features.{2 * int(m[1])}.{m[2]}.{m[3]}"
        m = re.match(r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(\w+)(?:\.(\w+))?$", k2)
        if m:
            sub = {"dwconv": "block.0", "layernorm": "block.2", "pwconv1": "block.3",
                   "pwconv2": "block.5"}
            base = f"features.{2 * int(m[1]) + 1}.{m[2]}"
            if m[3] == "layer_scale_parameter":
                k2, v = f"{base}.layer_scale", v.reshape(-1, 1, 1)
            else:
                k2 = f"{base}.{sub[m[3]]}.{m[4]}"
        out[k2] = v.clone()
    return out


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A torchvision convnext_tiny state_dict with four classes; its reference is transformers'
    model with every LayerNorm's eps 1e-6 (torchvision's)."""
    d = tmp_path_factory.mktemp("tv")
    model = hf_model({**SEED_001, "layer_norm_eps": 1e-6}, seed=2)
    sd = torchvision_state_dict(model.state_dict())
    torch.save(sd, d / "convnext_tiny.pth")
    return {"path": d / "convnext_tiny.pth", "model": model, "sd": sd}


def test_torchvision_file_is_recognised_and_computes_what_transformers_computes(tv_file,
                                                                                tmp_path):
    """No --arch: the keys and shapes say convnext_tiny, 4 classes; every framework then
    computes transformers' logits for the same weights."""
    assert set(tv_file["sd"]) == set(FORMATS["torchvision"]._expected(
        dataclasses.replace(config_to_spec(SEED_001), head_ln_eps=1e-6, labels=()))[1])
    ins = inspect_checkpoint(tv_file["path"])
    assert ins.architecture.startswith("convnext_tiny, from its keys and shapes (in_channels=3, "
                                       "num_classes=4)")
    r = convert(tv_file["path"], tmp_path / "w.safetensors", size=32)
    assert r.ok and "recognised as convnext_tiny" in r.spec_source
    state, spec = load_state_file(tmp_path / "w.safetensors")
    assert spec.head_ln_eps == spec.ln_eps == 1e-6
    x = make_input(X_SHAPE, seed=3)
    want = hf_outputs(tv_file["model"], x)["head.fc"]
    for framework in ("torch", "tf", "mxnet"):
        backend_or_skip(framework)
        be = get_backend(framework)
        model = be.build(spec)
        be.load_state(model, state)
        rows = compare({"head.fc": be.forward(model, x)}, {"head.fc": want}, EVAL_RTOL_CPU)
        print(format_rows(rows, f"\n{framework} from torchvision vs transformers"))
        assert all(r.ok for r in rows)


def test_torchvision_layer_scale_must_be_c11(tv_file, tmp_path):
    """torchvision stores layer scale as (C, 1, 1): a (C,) one (Hugging Face's shape) under
    torchvision's name is refused, naming the key and both shapes."""
    sd = dict(tv_file["sd"])
    sd["features.1.0.layer_scale"] = sd["features.1.0.layer_scale"].reshape(-1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"shape mismatch for features\.1\.0\.layer_scale: "
                                         r"expected \(96, 1, 1\), got \(96,\)"):
        convert(tmp_path / "bad.pth", tmp_path / "w.safetensors", arch="convnext_tiny")
    assert not (tmp_path / "w.safetensors").exists()


def test_writing_torchvision_keeps_its_layout_and_refuses_a_function_change(seed001, tmp_path,
                                                                             capsys):
    """torchvision's code has eps 1e-6 in the head: the seed's 1e-12 head would change the
    logits (measured, printed), so nothing is written unless asked; asked, the file has
    torchvision's keys and (C, 1, 1) layer scales."""
    dst = tmp_path / "tv.pth"
    assert cli.main(["convert", str(seed001["file"]), str(dst), "--to", "torchvision",
                     "-q"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "head_ln_eps" in out and not dst.exists()
    assert cli.main(["convert", str(seed001["file"]), str(dst), "--to", "torchvision", "-q",
                     "--allow-function-change"]) == 0
    sd = torch.load(dst, weights_only=True)
    assert sd["features.7.2.layer_scale"].shape == (768, 1, 1)
    assert sd["classifier.2.weight"].shape == (4, 768) and "features.6.1.weight" in sd


# -- every native format -----------------------------------------------------------------------------
SMALL = ConvNeXtSpec(name="small", in_channels=3, num_classes=5, depths=(1, 2), widths=(8, 16),
                     head_ln_eps=1e-3, gelu="tanh")


@pytest.mark.parametrize("dst", ["w.pt", "w.weights.h5", "w.keras", "w.params", "w-symbol.json",
                                 "hf"])
def test_every_native_format_round_trips_a_convnext_bit_exactly(tmp_path, dst):
    """canonical -> DST -> canonical, each conversion verified layer by layer (and, for the
    whole-model formats, ``.keras`` and Gluon's hybridized export, through the graph the file
    stores); the state that comes back is the one that went in, bit for bit."""
    fmt = {"w.pt": "torch", "w.weights.h5": "tf", "w.keras": "tf", "w.params": "mxnet",
           "w-symbol.json": "mxnet"}.get(dst)
    if fmt:
        backend_or_skip(fmt)
    state = random_state(SMALL, seed=4)
    save_state(tmp_path / "src.safetensors", state, SMALL)
    to = ["--to", "hf"] if dst == "hf" else []
    assert cli.main(["convert", str(tmp_path / "src.safetensors"), str(tmp_path / dst), "-q",
                     "--size", "32"] + to) == 0
    extra = [] if dst in ("w.keras", "hf") else ["--spec", str(tmp_path / "spec.json")]
    (tmp_path / "spec.json").write_text(SMALL.to_json())
    assert cli.main(["convert", str(tmp_path / dst), str(tmp_path / "back.safetensors"), "-q",
                     "--size", "32"] + extra) == 0
    back, spec = load_state_file(tmp_path / "back.safetensors")
    assert spec == SMALL or (dst == "hf" and dataclasses.replace(spec, name="small") == SMALL)
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_a_hub_id_reads_a_convnext_from_the_cache_offline(seed001, tmp_path):
    pytest.importorskip("huggingface_hub")
    from .test_huggingface import hub_cache
    cache = hub_cache(tmp_path / "hub", "acme/tiny-convnext", seed001["dir"])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "common.tools.cli", "inspect", "acme/tiny-convnext"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"unit": "ConvNeXtSpec"' in out.stdout and '"head_ln_eps": 1e-12' in out.stdout


@pytest.mark.parametrize("change, field", [
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"num_stages": 3}, "num_stages"),
    ({"depths": [3, 3], "num_stages": 2}, "depths and widths"),
    ({"patch_size": 0}, "patch_size"),
    ({"layer_norm_eps": "small"}, "layer_norm_eps"),
])
def test_convnext_configs_the_suite_cannot_represent_are_refused_by_field(change, field):
    with pytest.raises(ValueError, match=field):
        config_to_spec({**SEED_001, **change})


def test_specs_transformers_cannot_represent_are_refused_by_field():
    """transformers hard-codes the blocks' eps (1e-6), the depthwise kernel (7), the MLP
    ratio (4): a spec with another is refused, every such field named."""
    spec = dataclasses.replace(SMALL, ln_eps=1e-5, kernel_size=5, mlp_ratio=3)
    with pytest.raises(ValueError) as e:
        spec_to_config(spec)
    assert all(f in str(e.value) for f in ("ln_eps=1e-05", "kernel_size=5", "mlp_ratio=3"))


def test_convnext_tanh_gelu_round_trips_through_the_config():
    spec = dataclasses.replace(SMALL, gelu="tanh")
    config = spec_to_config(spec)
    assert config["hidden_act"] == "gelu_pytorch_tanh"
    assert dataclasses.replace(config_to_spec(config), name=spec.name) == spec
    assert config_to_spec({**config, "hidden_act": "gelu_new"}).gelu == "tanh"

