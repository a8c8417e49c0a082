"""``resnet-parity predict``: the seeds' score lines and verdicts, every framework side by side.

Images are real ones made offline: scikit-learn's digits written as PNG files, its two bundled
photographs, a Pillow drawing, and 16-bit and RGBA files. The external reference is
transformers' own pipeline (its image processor and ``ResNetForImageClassification``, built
from seed 000's config): the suite must give its scores, in every framework.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

import common.tools.cli as cli
from common import architecture, random_state, save_state
from common.core.preprocess import Preprocessing
from common.tools.predict import MISSED, score_line, softmax

from .conftest import backend_or_skip

DIGITS = tuple("zero one two three four five six seven eight nine".split())


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real images of every kind a user has: grey PNG digits, JPEG photos, a drawing, a 16-bit
    grey PNG and an RGBA PNG."""
    from sklearn.datasets import load_digits, load_sample_images

    d = tmp_path_factory.mktemp("images")
    digits = load_digits()
    paths = []
    for i in (0, 1, 7):
        p = d / f"digit{i}.png"
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8)).save(p)
        paths.append(p)
    for name, a in zip(("china", "flower"), load_sample_images().images):
        p = d / f"{name}.jpg"
        Image.fromarray(a).save(p, quality=92)
        paths.append(p)
    car = Image.new("RGB", (70, 50), (0, 0, 0))
    ImageDraw.Draw(car).rectangle((10, 20, 60, 35), fill=(250, 250, 250))
    car.save(d / "car.png")
    Image.fromarray((np.arange(40 * 30).reshape(40, 30) * 50).astype(np.uint16)).save(d / "g16.png")
    rgba = np.zeros((30, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 220, 90
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    return paths + [d / "car.png", d / "g16.png", d / "rgba.png"]


def spread_state(spec, seed=0):
    """Random weights and BatchNorm statistics with a small classifier, so that the scores
    spread over the classes instead of one saturating at 1."""
    state = random_state(spec, seed)
    state["head.fc.weight"] = state["head.fc.weight"] * np.float32(0.03)
    return state


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    spec = architecture("resnet18", labels=DIGITS)
    path = tmp_path_factory.mktemp("model") / "digits.safetensors"
    save_state(path, spread_state(spec), spec, Preprocessing(size=(40, 40), channels="L"))
    return path


def test_seed_score_lines():
    # the seeds print Python's round(score, 4): score:0.5376 ship, score:1.0 automobile, 0.069
    assert score_line("ship", 0.53764) == "score:0.5376 ship"
    assert score_line("automobile", 0.99999) == "score:1.0 automobile"
    assert score_line("truck", 0.06899) == "score:0.069 truck"
    assert score_line("airplane", 0.0) == "score:0.0 airplane"


def test_softmax_is_stable_and_sums_to_one():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]]))
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0], [0.5, 0.5, 0.0]) and np.allclose(p[1], [0.2, 0.6, 0.2])


def test_frameworks_agree_and_scores_are_probabilities(capsys, installed, images, digit_model,
                                                        tmp_path):
    if len(installed) < 2:
        pytest.skip("needs two installed frameworks")
    out_json = tmp_path / "p.json"
    code, out, err = run(capsys, "predict", *images, "--model", digit_model,
                         "--frameworks", ",".join(installed), "--json", out_json)
    assert code == 0, err
    assert "preprocessing L 40x40" in err
    data = json.loads(out_json.read_text())
    assert [r["path"] for r in data["images"]] == [str(p) for p in images]
    for r in data["images"]:
        fws = r["frameworks"]
        assert list(fws) == list(installed)
        by_label = {}
        for fw, ranked in fws.items():
            scores = [s["score"] for s in ranked]
            assert sorted(s["label"] for s in ranked) == sorted(DIGITS)
            assert scores == sorted(scores, reverse=True)
            assert abs(sum(scores) - 1.0) < 1e-6
            assert max(scores) < 0.999  # spread, so agreement is a real test
            by_label[fw] = {s["label"]: s["score"] for s in ranked}
        diff = max(abs(by_label[a][k] - by_label[b][k]) for a in by_label for b in by_label
                   for k in DIGITS)
        assert diff < 1e-5
        assert r["max_score_diff"] == pytest.approx(diff, abs=1e-12)
        same = all([s["label"] for s in v] == [s["label"] for s in fws[installed[0]]]
                   for v in fws.values())
        assert r["agree"] == same
    # the seeds' lines, in the order of the scores
    first = data["images"][0]["frameworks"][installed[0]]
    printed = [line.strip() for line in out.splitlines() if line.strip().startswith("score:")]
    assert printed[:len(first)] == [score_line(s["label"], s["score"]) for s in first]
    assert "agreement: same ranking" in out


def test_verdicts_follow_expect_and_min_score(capsys, images, digit_model, tmp_path):
    backend_or_skip("torch")
    base = ["predict", images[0], "--model", digit_model, "--frameworks", "torch"]

    def verdict(*extra):
        j = tmp_path / "v.json"
        code, out, err = run(capsys, *base, "--json", j, *extra)
        assert code == 0, err
        (r,) = json.loads(j.read_text())["images"]
        return r["frameworks"]["torch"], r["verdict"], out

    ranked, v, _ = verdict()
    top, score = ranked[0]["label"], ranked[0]["score"]
    other = next(d for d in DIGITS if d != top)
    assert v == f"classified: {top}"
    assert verdict("--expect", top)[1] == f"classified: {top}"
    _, v, out = verdict("--expect", other)
    assert v.startswith(MISSED) and f"expected {other}" in v and MISSED in out
    assert verdict("--min-score", f"{score - 1e-3:.6f}")[1] == f"classified: {top}"
    assert verdict("--min-score", f"{min(1.0, score + 1e-3):.6f}")[1].startswith(MISSED)
    ranked_k, _, out = verdict("--top-k", "3")
    assert [s["label"] for s in ranked_k] == [s["label"] for s in ranked[:3]]
    assert sum(line.strip().startswith("score:") for line in out.splitlines()) == 3


def test_matches_transformers_pipeline(installed, images, tmp_path, capsys):
    """Seed 000's Hugging Face ResNet-50 (built from its config, random weights), saved with
    its image processor: every framework gives the scores transformers' own pipeline gives."""
    transformers = pytest.importorskip("transformers", reason="pip install 'resnet-parity[test]'")
    torch = pytest.importorskip("torch")
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    from .conftest import randomize_batch_norms
    from .test_huggingface import SEED_000, SEED_LABELS

    torch.manual_seed(0)
    config = transformers.ResNetConfig(**{k: v for k, v in SEED_000.items()
                                          if k not in ("architectures", "model_type")})
    model = randomize_batch_norms(transformers.ResNetForImageClassification(config).eval())
    hf_dir = tmp_path / "seed000"
    model.save_pretrained(hf_dir)
    proc = ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875, resample=2,
                                     image_mean=[0.485, 0.456, 0.406],
                                     image_std=[0.229, 0.224, 0.225])
    proc.save_pretrained(hf_dir)
    photos = [p for p in images if p.suffix == ".jpg"] + [p for p in images if p.name == "car.png"]
    with torch.no_grad():
        ref = {str(p): torch.softmax(model(torch.from_numpy(proc(Image.open(p).convert("RGB"),
                                                                 return_tensors="np")
                                                            ["pixel_values"])).logits, -1)[0]
               .double().numpy() for p in photos}
    j = tmp_path / "hf.json"
    code, out, err = run(capsys, "predict", *photos, "--model", hf_dir,
                         "--frameworks", ",".join(installed), "--json", j)
    assert code == 0, err
    assert "RGB 64x64: shortest edge 73, centre crop, bilinear" in err
    for r in json.loads(j.read_text())["images"]:
        for fw, ranked in r["frameworks"].items():
            got = {s["label"]: s["score"] for s in ranked}
            want = dict(zip(SEED_LABELS, ref[r["path"]]))
            assert max(abs(got[k] - want[k]) for k in SEED_LABELS) < 1e-5, fw


def test_errors_are_one_line(capsys, images, digit_model, tmp_path):
    backend_or_skip("torch")
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    code, _, err = run(capsys, "predict", images[0], bad, "--model", digit_model)
    assert code == 2 and f"{bad}: not an image" in err and len(err.strip().splitlines()) == 1

    spec = architecture("resnet18")  # no labels
    unnamed = tmp_path / "unnamed.safetensors"
    save_state(unnamed, spread_state(spec), spec)
    code, _, err = run(capsys, "predict", images[0], "--model", unnamed)
    assert code == 2 and "have no names" in err and "--labels" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "predict", images[0], "--model", unnamed, "--frameworks", "torch",
                         "--labels", ",".join(f"c{i}" for i in range(10)))
    assert code == 0 and "score:" in out and "assumed: the d2l recipe" in err
    code, _, err = run(capsys, "predict", images[0], "--model", unnamed, "--labels", "a,b")
    assert code == 2 and "names 2 classes, the model has 10" in err
    code, _, err = run(capsys, "predict", images[0], "--model", digit_model, "--frameworks",
                       "torch", "--expect", "ship")
    assert code == 2 and "'ship' is not one of the model's classes" in err
    code, _, err = run(capsys, "predict", tmp_path / "missing.png", "--model", digit_model)
    assert code == 2 and "no such file" in err
