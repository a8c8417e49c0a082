"""How image files become a model's input: ``common/core/preprocess.py``.

The reference is transformers' own Pillow image processors (ConvNeXt's, which Hugging Face's
ResNets use too, ViT's and BiT's), run on scikit-learn's bundled photographs and on images
drawn here; the suite must give the same ``pixel_values``. The rest checks the conversions
transformers does not do (16-bit, RGBA, palette, BGR) against direct numpy computations, the
stored forms (canonical metadata, ``preprocessor_config.json``) and the one-line errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from common import random_state, resnet18_spec, save_state
from common.core.preprocess import (
    CAFFE_MEAN_BGR,
    ImageError,
    Preprocessing,
    caffe_preprocessing,
    default_preprocessing,
    image_files,
    open_image,
    preprocessing_file,
    shortest_edge_size,
)
from common.core.state import read_preprocessing


@pytest.fixture(scope="module")
def photos():
    """scikit-learn's two bundled photographs (427x640 RGB) and a drawing of a car."""
    from sklearn.datasets import load_sample_images

    out = [Image.fromarray(a) for a in load_sample_images().images]
    car = Image.new("RGB", (90, 61), (0, 0, 0))
    d = ImageDraw.Draw(car)
    d.rectangle((15, 25, 75, 45), fill=(240, 240, 240))
    d.ellipse((20, 40, 32, 52), fill=(90, 90, 200))
    d.ellipse((58, 40, 70, 52), fill=(200, 90, 90))
    return out + [car]


def _processors():
    transformers = pytest.importorskip("transformers", reason="pip install 'resnet-parity[test]'")
    del transformers
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return {
        # microsoft/resnet-50's: shortest edge 224 / crop_pct 0.875 -> 256, then crop 224
        "convnext-crop": ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875,
                                                   resample=2, **imagenet),
        "convnext-odd": ConvNextImageProcessorPil(size={"shortest_edge": 97}, crop_pct=0.9),
        "convnext-warp": ConvNextImageProcessorPil(size={"shortest_edge": 384}),  # >= 384: warp
        "vit-non-square": ViTImageProcessorPil(size={"height": 61, "width": 47}),
        "bit": BitImageProcessorPil(),
    }


@pytest.mark.parametrize("kind", ["convnext-crop", "convnext-odd", "convnext-warp",
                                  "vit-non-square", "bit"])
def test_pixel_values_equal_transformers(photos, kind):
    proc = _processors()[kind]
    config = json.loads(json.dumps(proc.to_dict()))  # what preprocessor_config.json holds
    pre = Preprocessing.from_hf(config)
    for image in photos:
        ref = proc(image, return_tensors="np")["pixel_values"]
        ours = pre(image)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        assert np.abs(ours - ref).max() < 2e-6, kind
    # written back, transformers' processor of the written file computes the same
    again = Preprocessing.from_hf(pre.to_hf())
    assert again == pre


def test_written_config_loads_in_transformers(photos, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoImageProcessor

    for pre in (Preprocessing(size=(56, 56), resize="shortest_edge", shortest_edge=64,
                              mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)),   # ConvNeXt's crop_pct
                Preprocessing(size=(40, 30), resize="shortest_edge", shortest_edge=47,
                              resample="bicubic"),                          # BiT's crop
                Preprocessing(size=(33, 45), resample="nearest")):          # ViT's warp
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre.to_hf()))
        proc = AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
        for image in photos:
            ref = proc(image, return_tensors="np")["pixel_values"]
            assert np.abs(pre(image) - ref).max() < 2e-6, pre.describe()


def test_shortest_edge_follows_torchvision():
    # torchvision's Resize(256) on a 640x480 (W x H) image gives 341x256: int(256 * 640 / 480)
    assert shortest_edge_size(480, 640, 256) == (256, 341)
    assert shortest_edge_size(640, 480, 256) == (341, 256)
    assert shortest_edge_size(100, 100, 7) == (7, 7)


def test_pixels_then_normalize(photos):
    pre = Preprocessing(size=(20, 30), mean=(0.5, 0.25, 0.125), std=(0.5, 2.0, 4.0))
    px = pre.pixels(photos[0])
    assert px.shape == (20, 30, 3) and px.dtype == np.uint8
    resized = np.asarray(photos[0].resize((30, 20), Image.BILINEAR))
    assert np.array_equal(px, resized)
    x = pre.normalize(px)
    want = ((resized / 255.0 - [0.5, 0.25, 0.125]) / [0.5, 2.0, 4.0]).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, 20, 30)
    assert np.abs(x - want).max() < 1e-6
    batch = pre.normalize(np.stack([px, px]))
    assert batch.shape == (2, 3, 20, 30) and np.array_equal(batch[1], x[0])


def test_bgr_is_keras_applications_caffe(photos):
    """keras.applications.resnet's preprocess_input (mode caffe): RGB -> BGR, minus the BGR
    means on the 0..255 scale."""
    pre = caffe_preprocessing()
    x = pre(photos[2])
    rgb = np.asarray(photos[2].resize((224, 224), Image.NEAREST), np.float64)
    want = (rgb[..., ::-1] - np.array(CAFFE_MEAN_BGR)).transpose(2, 0, 1)[None]
    assert np.abs(x - want).max() < 1e-4
    assert default_preprocessing("keras-resnet50", 3) == pre


def test_grey_rgba_palette_and_16_bit(tmp_path):
    grey = Preprocessing(size=(8, 8), channels="L")
    rgb = Preprocessing(size=(8, 8), channels="RGB")
    # 16-bit grey: v * 255 / 65535, rounded (Pillow's own conversion would clip to 255)
    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    im = open_image(tmp_path / "g16.png")
    assert np.array_equal(grey.pixels(im), np.rint(a16 * (255 / 65535)).astype(np.uint8))
    assert np.array_equal(rgb.pixels(im)[..., 1], grey.pixels(im))
    # RGBA: the alpha channel is dropped, the colour kept
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(rgb.pixels(open_image(tmp_path / "a.png")), rgba[..., :3])
    # a palette image reads as its colours
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.save(tmp_path / "p.png")
    assert np.array_equal(rgb.pixels(open_image(tmp_path / "p.png")),
                          np.asarray(pal.convert("RGB")))
    # a grey JPEG through an RGB model: three equal channels
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "g.jpg")
    px = rgb.pixels(open_image(tmp_path / "g.jpg"))
    assert px.shape == (8, 8, 3) and (px[..., 0] == px[..., 2]).all()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not an image"), "not an image"),
    (lambda p: p.write_bytes(b""), "not an image"),
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "not a regular file"),
])
def test_bad_image_files_are_named(tmp_path, make, message):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageError, match=message) as e:
        open_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_image_is_named(tmp_path, photos):
    photos[0].save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    with pytest.raises(ImageError, match="cut.jpg: a damaged or truncated image"):
        open_image(tmp_path / "cut.jpg")


def test_image_files_expands_directories(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in image_files([tmp_path])] == ["a.JPG", "b.png"]


@pytest.mark.parametrize("fields, message", [
    ({"size": [0, 4]}, "size"),
    ({"size": [4, 4], "resize": "stretch"}, "resize"),
    ({"size": [4, 4], "resample": "cubic"}, "resample"),
    ({"size": [4, 4], "channels": "CMYK"}, "channels"),
    ({"size": [4, 4], "mean": [0.1, 0.2]}, "mean"),
    ({"size": [8, 8], "resize": "shortest_edge", "shortest_edge": 4}, "shortest_edge"),
    ({"size": [4, 4], "colour": 1}, "unknown preprocessing field"),
    ({"resize": "exact"}, "no 'size'"),
])
def test_bad_preprocessing_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(fields)


@pytest.mark.parametrize("config, message", [
    ({"image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 8}}, "centre crop"),
    ({"size": {"height": 8, "width": 8}, "resample": 9}, "resample"),
    ({"size": {"longest_edge": 8}}, "size"),
    ({"size": {"height": 8, "width": 8}, "do_pad": True}, "do_pad"),
    ({"size": {"height": 8, "width": 8}, "do_resize": False}, "do_resize"),
])
def test_hf_configs_the_suite_cannot_follow_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_hf(config)


def test_canonical_file_carries_preprocessing(tmp_path):
    spec = resnet18_spec()
    pre = Preprocessing(size=(32, 32), channels="L", resample="bicubic")
    save_state(tmp_path / "with.safetensors", random_state(spec), spec, pre)
    save_state(tmp_path / "without.safetensors", random_state(spec), spec)
    assert read_preprocessing(tmp_path / "with.safetensors") == pre
    assert read_preprocessing(tmp_path / "without.safetensors") is None
    (tmp_path / "p.json").write_text(pre.to_json())
    assert preprocessing_file(tmp_path / "p.json") == pre


def test_defaults_say_they_are_assumed():
    assert default_preprocessing("resnet18", 1).size == (96, 96)
    three = default_preprocessing("resnet50", 3)
    assert (three.size, three.shortest_edge, three.resize) == ((224, 224), 256, "shortest_edge")
    assert all(p.source.startswith("assumed") for p in (three, default_preprocessing("x", 1)))
    with pytest.raises(ValueError, match="4 input channels"):
        default_preprocessing("resnet18", 4)


def test_convert_carries_preprocessing(tmp_path):
    """canonical -> Hugging Face directory -> canonical keeps it; a format with no place for it
    says so; --preprocess attaches one."""
    pytest.importorskip("torch", reason="convert verifies in a framework: pip install "
                                        "'resnet-parity[torch]'")
    from common import architecture
    from common.tools.convert import convert

    spec = architecture("torchvision-resnet18", num_classes=10, labels=tuple("abcdefghij"))
    pre = Preprocessing(size=(48, 48), resize="shortest_edge", shortest_edge=56,
                        mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), resample="bicubic")
    save_state(tmp_path / "a.safetensors", random_state(spec), spec, pre)
    r = convert(tmp_path / "a.safetensors", tmp_path / "hf", dst_format="hf", size=32)
    assert r.ok and (tmp_path / "hf" / "preprocessor_config.json").is_file()
    r = convert(tmp_path / "hf", tmp_path / "b.safetensors", size=32)
    assert r.ok and read_preprocessing(tmp_path / "b.safetensors") == pre
    r = convert(tmp_path / "b.safetensors", tmp_path / "b.pt", size=32)
    assert r.ok and any("preprocessing" in n and "no place" in n for n in r.notes)
    other = Preprocessing(size=(30, 30))
    (tmp_path / "p.json").write_text(other.to_json())
    r = convert(tmp_path / "b.pt", tmp_path / "c.safetensors",
                preprocess_file=tmp_path / "p.json", size=32)
    assert r.ok and read_preprocessing(tmp_path / "c.safetensors") == other
