"""How an image file becomes a model's input, framework-neutral.

A :class:`Preprocessing` says what the model was trained to see: the channels (grey, RGB, or
BGR as keras.applications' "caffe" models want), the size, how the image is resized (warped to
the size, or its shortest edge resized and the centre cropped, as ImageNet evaluation does),
Pillow's resampling filter, and the rescale, mean and std that turn pixels into numbers.

It travels with a model: the canonical safetensors file stores it in its metadata (``train``
writes the recipe it trained with), and a Hugging Face directory's ``preprocessor_config.json``
is read (:meth:`Preprocessing.from_hf`) and written (:meth:`Preprocessing.to_hf`) with the
semantics of transformers' Pillow image processors (ConvNeXt's ``crop_pct``, ViT's fixed
height and width, BiT's shortest edge and centre crop), so that the suite and transformers
give the same ``pixel_values`` for the same file. Where a model carries none,
:func:`default_preprocessing` says what is assumed, and the caller prints it.

The two halves are kept apart on purpose: :meth:`Preprocessing.pixels` gives the uint8 image
at the model's size (what ImageNet-C corrupts), :meth:`Preprocessing.normalize` the float32
NCHW array the frameworks get.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

CHANNELS = ("L", "RGB", "BGR")
RESIZES = ("exact", "shortest_edge")
# Pillow's filters by the names transformers' PILImageResampling and torchvision use, and the
# integer codes preprocessor_config.json stores (PIL.Image.Resampling).
RESAMPLES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.applications.resnet's preprocess_input, mode "caffe": RGB -> BGR, minus the ImageNet
# means in BGR order on the 0..255 scale, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# what an image file is named (torchvision's IMG_EXTENSIONS, and .webp), in any case
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                  ".tiff")


class ImageError(ValueError):
    """An image file that cannot be read; the message names it."""


def open_image(path: Union[str, os.PathLike]) -> Any:
    """The image in ``path`` as a decoded Pillow image, 8 bits per channel.

    PNG and JPEG (and whatever else Pillow reads); grey, palette, RGBA and 16-bit images all
    come back in a mode :meth:`Preprocessing.pixels` converts: 16-bit grey (``I;16``, ``I``)
    is scaled to 8 bits (``v * 255 / 65535``, rounded), not clipped as Pillow's own
    conversion would. Raises :class:`ImageError` naming the file for anything else.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: a damaged or truncated image ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return to_8bit(image)


def to_8bit(image: Any) -> Any:
    """A Pillow image with more than 8 bits per channel scaled down to 8 (grey ``L``)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        a = np.asarray(image, np.float64)
        top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    return image


def _pil(pixels: np.ndarray) -> Any:
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (
            pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image array must be uint8 (H, W) or (H, W, 1|3|4), got "
                         f"{pixels.dtype} {pixels.shape}")
    return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)


@dataclass(frozen=True)
class Preprocessing:
    """What the model sees: ``channels`` at ``size`` (height, width), resampled with Pillow's
    ``resample`` filter, times ``rescale``, minus ``mean``, over ``std`` (per channel, in the
    model's channel order).

    ``resize="exact"`` warps the image to ``size``; ``"shortest_edge"`` resizes its shortest
    edge to ``shortest_edge`` (keeping the aspect ratio, the long edge truncated as
    transformers and torchvision compute it) and crops the centre ``size``. ``source`` says
    where it came from; it does not take part in equality.
    """

    size: tuple[int, int]
    resize: str = "exact"
    shortest_edge: int = 0
    resample: str = "bilinear"
    rescale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "RGB"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        object.__setattr__(self, "size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"preprocessing size must be (height, width) >= 1, got {self.size}")
        if self.resize not in RESIZES:
            raise ValueError(f"preprocessing resize must be one of {RESIZES}, got {self.resize!r}")
        if self.resize == "shortest_edge" and self.shortest_edge < max(self.size):
            raise ValueError(f"preprocessing shortest_edge ({self.shortest_edge}) must be at least "
                             f"the crop size {self.size}")
        if self.resample not in RESAMPLES:
            raise ValueError(f"preprocessing resample must be one of {list(RESAMPLES)}, got "
                             f"{self.resample!r}")
        if self.channels not in CHANNELS:
            raise ValueError(f"preprocessing channels must be one of {CHANNELS}, got "
                             f"{self.channels!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.num_channels):
                raise ValueError(f"preprocessing {name} has {len(v)} values; {self.channels} "
                                 f"needs 1 or {self.num_channels}")
        if not all(s > 0 for s in self.std) or not self.rescale > 0:
            raise ValueError("preprocessing std and rescale must be positive")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "L" else 3

    # -- the two halves -------------------------------------------------------------------
    def pixels(self, image: Any) -> np.ndarray:
        """A Pillow image (or a uint8 array, ``(H, W)`` or ``(H, W, C)``) at the model's size
        and channels, still uint8: ``(H, W)`` grey or ``(H, W, 3)`` in the model's order."""

        if isinstance(image, np.ndarray):
            image = _pil(image)
        image = to_8bit(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")  # transparent pixels: drop alpha, keep the colour
        image = image.convert("L" if self.channels == "L" else "RGB")
        h, w = self.size
        if self.resize == "exact":
            out = image.resize((w, h), resample=RESAMPLES[self.resample], reducing_gap=None)
        else:
            new_h, new_w = shortest_edge_size(image.height, image.width, self.shortest_edge)
            out = image.resize((new_w, new_h), resample=RESAMPLES[self.resample], reducing_gap=None)
            top, left = (new_h - h) // 2, (new_w - w) // 2
            out = out.crop((left, top, left + w, top + h))
        a = np.asarray(out, np.uint8)
        return np.ascontiguousarray(a[..., ::-1]) if self.channels == "BGR" else a.copy()

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels ``(H, W)`` / ``(H, W, C)``, or a batch ``(N, H, W[, C])``, as the float32
        ``(N, C, H, W)`` array the model takes: ``(p * rescale - mean) / std``."""
        p = np.asarray(pixels)
        single = p.ndim == (2 if self.channels == "L" else 3)
        if single:
            p = p[None]
        if self.channels == "L":
            p = p[..., None]
        if p.ndim != 4 or p.shape[-1] != self.num_channels:
            raise ValueError(f"pixels of shape {np.shape(pixels)} do not hold {self.channels} images")
        x = p.astype(np.float32) * np.float32(self.rescale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def __call__(self, image: Any) -> np.ndarray:
        """One image as the model's ``(1, C, H, W)`` float32 input."""
        return self.normalize(self.pixels(image))

    def describe(self) -> str:
        """One line: ``RGB 224x224: shortest edge 256, centre crop, bilinear; /255, mean ...``."""
        h, w = self.size
        how = (f"shortest edge {self.shortest_edge}, centre crop" if self.resize == "shortest_edge"
               else "resized")
        scale = "/255" if abs(self.rescale - 1 / 255) < 1e-12 else f"x{self.rescale:g}"
        norm = ("" if all(m == 0 for m in self.mean) and all(s == 1 for s in self.std) else
                f", mean {_floats(self.mean)}, std {_floats(self.std)}")
        return f"{self.channels} {h}x{w}: {how}, {self.resample}; {scale}{norm}"

    # -- storage --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["source"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> "Preprocessing":
        """Read :meth:`to_dict` back, refusing unknown fields by name."""
        if not isinstance(d, Mapping):
            raise ValueError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s): {', '.join(unknown)}")
        if "size" not in d:
            raise ValueError("preprocessing has no 'size'")
        return cls(**d, source=source)

    @classmethod
    def from_json(cls, text: str, source: str = "") -> "Preprocessing":
        try:
            return cls.from_dict(json.loads(text), source)
        except json.JSONDecodeError as e:
            raise ValueError(f"preprocessing is not valid JSON: {e}") from None

    # -- Hugging Face ---------------------------------------------------------------------
    @classmethod
    def from_hf(cls, config: Mapping[str, Any], num_channels: int = 3,
                source: str = "preprocessor_config.json") -> "Preprocessing":
        """A transformers ``preprocessor_config.json`` (a dict) read as its Pillow image
        processor computes it; ``num_channels`` is the model config's.

        ConvNeXt's processor (``ConvNextImageProcessor``, also the one Hugging Face's ResNets
        use) resizes the shortest edge to ``int(shortest_edge / crop_pct)`` and crops the
        centre ``shortest_edge`` below 384, and warps to ``shortest_edge`` square at 384 and
        above; ``{"height", "width"}`` sizes (ViT) warp; other ``{"shortest_edge"}`` sizes
        resize that edge and crop ``crop_size`` when ``do_center_crop``. Fields the file
        omits take that processor's defaults. Raises ``ValueError`` naming a field the suite
        cannot follow.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"a preprocessor config is a JSON object, not {type(config).__name__}")
        kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
        convnext = kind.startswith("ConvNext")
        vit = kind.startswith(("ViT", "DeiT")) and "size" not in config
        defaults = _HF_DEFAULTS["convnext" if convnext else "vit" if vit else "other"]
        c = {**defaults, **{k: v for k, v in config.items() if v is not None}}
        for flag in ("do_pad", "do_reduce_labels"):
            if c.get(flag):
                raise ValueError(f"preprocessor config sets {flag}, which the suite does not follow")
        resample = {v: k for k, v in RESAMPLES.items()}.get(c.get("resample"))
        if resample is None:
            raise ValueError(f"preprocessor config resample is {c.get('resample')!r}, not one of "
                             f"Pillow's filters {sorted(RESAMPLES.values())}")
        channels = "L" if num_channels == 1 else "RGB"
        mean = _hf_floats(c, "image_mean", channels) if c.get("do_normalize", True) else (0.0,)
        std = _hf_floats(c, "image_std", channels) if c.get("do_normalize", True) else (1.0,)
        rescale = float(c["rescale_factor"]) if c.get("do_rescale", True) else 1.0
        size = c.get("size")
        if isinstance(size, int):  # an old feature extractor's bare int
            size = {"shortest_edge": size} if convnext or not c.get("default_to_square", True) else {
                "height": size, "width": size}
        if not c.get("do_resize", True):
            raise ValueError("preprocessor config sets do_resize false: the input size is the "
                             "image's own, which the suite does not follow")
        if not isinstance(size, Mapping):
            raise ValueError(f"preprocessor config size is {size!r}, not an object")
        common = dict(resample=resample, rescale=rescale, mean=mean, std=std, channels=channels,
                      source=source)
        if "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
            crop = _hf_crop(c) if c.get("do_center_crop") else None
            if crop is not None and crop != hw:
                raise ValueError(f"preprocessor config warps to {hw} and then crops {crop}, which "
                                 "the suite does not follow")
            return cls(size=hw, resize="exact", **common)
        if "shortest_edge" not in size or set(size) - {"shortest_edge"}:
            raise ValueError(f"preprocessor config size {dict(size)} is not {{'shortest_edge'}} or "
                             "{'height', 'width'}")
        edge = int(size["shortest_edge"])
        if convnext:
            if edge >= 384:
                return cls(size=(edge, edge), resize="exact", **common)
            return cls(size=(edge, edge), resize="shortest_edge",
                       shortest_edge=int(edge / float(c["crop_pct"])), **common)
        if not c.get("do_center_crop"):
            raise ValueError(f"preprocessor config resizes the shortest edge to {edge} with no "
                             "centre crop: the input size is the image's own, which the suite "
                             "does not follow")
        crop = _hf_crop(c)
        return cls(size=crop, resize="shortest_edge", shortest_edge=edge, **common)

    def to_hf(self) -> dict[str, Any]:
        """A ``preprocessor_config.json`` whose Pillow image processor computes this
        preprocessing: ConvNeXt's where its ``crop_pct`` gives the edge exactly, else BiT's
        (shortest edge + centre crop), or ViT's for an exact resize. BGR has no field there:
        refused."""
        if self.channels == "BGR":
            raise ValueError("a preprocessor_config.json cannot reorder channels (BGR)")
        n = 3 if self.channels == "RGB" else 1
        mean = list(self.mean) * (n // len(self.mean)) if len(self.mean) == 1 else list(self.mean)
        std = list(self.std) * (n // len(self.std)) if len(self.std) == 1 else list(self.std)
        normalize = any(m != 0 for m in mean) or any(s != 1 for s in std)
        out: dict[str, Any] = {
            "do_resize": True, "resample": RESAMPLES[self.resample], "do_rescale": True,
            "rescale_factor": self.rescale, "do_normalize": normalize, "image_mean": mean,
            "image_std": std}
        h, w = self.size
        if self.resize == "exact":
            return {"image_processor_type": "ViTImageProcessor", **out,
                    "size": {"height": h, "width": w}}
        if h == w and h < 384 and int(h / (h / self.shortest_edge)) == self.shortest_edge:
            return {"image_processor_type": "ConvNextImageProcessor", **out,
                    "size": {"shortest_edge": h}, "crop_pct": h / self.shortest_edge}
        return {"image_processor_type": "BitImageProcessor", **out, "do_convert_rgb": n == 3,
                "size": {"shortest_edge": self.shortest_edge}, "do_center_crop": True,
                "crop_size": {"height": h, "width": w}}


# transformers' Pillow processors' class defaults, for fields a preprocessor_config.json omits.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "convnext": {"do_resize": True, "size": {"shortest_edge": 384}, "crop_pct": 224 / 256,
                 "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                 "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    "vit": {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    "other": {"do_resize": True, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
}


def _hf_floats(c: Mapping[str, Any], key: str, channels: str) -> tuple[float, ...]:
    v = c[key]
    v = [v] if isinstance(v, (int, float)) else list(v)
    if channels == "L" and len(v) == 3:
        if len(set(v)) != 1:
            raise ValueError(f"preprocessor config {key} {v} has three channels; the model has one")
        v = v[:1]
    return tuple(float(x) for x in v)


def _hf_crop(c: Mapping[str, Any]) -> tuple[int, int]:
    crop = c.get("crop_size")
    if isinstance(crop, int):
        return (crop, crop)
    if not isinstance(crop, Mapping) or "height" not in crop or "width" not in crop:
        raise ValueError(f"preprocessor config crop_size is {crop!r}, not {{'height', 'width'}}")
    return (int(crop["height"]), int(crop["width"]))


def shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """(height, width) with the shortest side ``edge`` and the long one ``int(edge * long /
    short)``, as transformers' ``get_resize_output_image_size`` and torchvision's ``Resize(int)``
    compute it."""
    if width <= height:
        return int(edge * height / width), edge
    return edge, int(edge * width / height)


def _floats(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"


def d2l_preprocessing(size: int, channels: str = "L") -> Preprocessing:
    """What ``resnet-parity train`` feeds the model: the image resized to ``size`` (bilinear),
    scaled to [0, 1], no normalisation (d2l's ``Resize`` + ``ToTensor``)."""
    return Preprocessing(size=(size, size), channels=channels,
                         source=f"the d2l recipe (resize {size}, [0, 1])")


def imagenet_preprocessing() -> Preprocessing:
    """torchvision's ImageNet evaluation: shortest edge 256, centre crop 224, bilinear, ImageNet
    mean and std."""
    return Preprocessing(size=(224, 224), resize="shortest_edge", shortest_edge=256,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         source="torchvision's ImageNet evaluation (resize 256, crop 224)")


def caffe_preprocessing() -> Preprocessing:
    """keras.applications.resnet's: ``load_img(target_size=(224, 224))`` (nearest) and
    ``preprocess_input`` (mode "caffe": BGR, ImageNet means subtracted on the 0..255 scale)."""
    return Preprocessing(size=(224, 224), resample="nearest", rescale=1.0, mean=CAFFE_MEAN_BGR,
                         std=(1.0,), channels="BGR",
                         source="keras.applications' caffe preprocessing (BGR, means subtracted)")


def default_preprocessing(name: str, in_channels: int) -> Preprocessing:
    """What to assume for a model that carries no preprocessing, by its spec's ``name`` and
    ``in_channels``: the d2l recipe at 96 for a one-channel model (the chapter's and
    ``train``'s), keras.applications' caffe preprocessing for its members (``keras-*``), and
    torchvision's ImageNet evaluation for every other three-channel model."""
    if in_channels == 1:
        return replace(d2l_preprocessing(96), source="assumed: the d2l recipe (resize 96, [0, 1])")
    if in_channels != 3:
        raise ValueError(f"a model with {in_channels} input channels takes no image file")
    pre = caffe_preprocessing() if name.startswith("keras-") else imagenet_preprocessing()
    return replace(pre, source=f"assumed: {pre.source}")


def image_files(paths: Sequence[Union[str, os.PathLike]]) -> list[Path]:
    """``paths`` with each directory replaced by the image files in it (sorted, by suffix)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def preprocessing_file(path: Union[str, os.PathLike], num_channels: int = 3) -> Preprocessing:
    """A ``preprocessor_config.json`` of transformers, or a JSON file of :meth:`to_dict`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None
    try:
        if isinstance(d, dict) and "size" in d and not isinstance(d["size"], Mapping) and (
                set(d) <= {f.name for f in fields(Preprocessing)}):
            return Preprocessing.from_dict(d, source=str(path))
        return Preprocessing.from_hf(d, num_channels, source=str(path))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


__all__ = ["Preprocessing", "ImageError", "open_image", "default_preprocessing",
           "d2l_preprocessing", "imagenet_preprocessing", "caffe_preprocessing",
           "preprocessing_file", "image_files", "shortest_edge_size"]
