"""Image classification data for ``resnet-parity train`` (and every command that evaluates on
the same data), framework-neutral.

* :func:`load_fashion_mnist` reads the four standard IDX ``.gz`` files (the ones torchvision
  and Keras download) from a directory; :func:`fetch_fashion_mnist` downloads and verifies them.
* :func:`load_cifar10` reads CIFAR-10's binary version (``cifar-10-binary.tar.gz`` as it is, or
  its extracted ``cifar-10-batches-bin/``), never the pickled Python version;
  :func:`fetch_cifar10` downloads and verifies the archive.
* :func:`load_image_folder` reads any folder of images in class subfolders (torchvision's
  ``ImageFolder`` layout), with Pillow.
* :func:`load_builtin` needs no download: scikit-learn's 8x8 handwritten digits (1,797 real
  images, 10 classes), shipped inside the scikit-learn package.
* :func:`load` takes any of them, recognised from what is there (or named by a prefix), and
  :meth:`Dataset.select` keeps some classes, in a given order.

Every framework gets the same batches in the same order from :class:`ImageData`: the epoch
order comes from one seeded permutation and the resize to ``--resize`` is done here, once, so
the three frameworks train on identical arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .preprocess import IMAGE_SUFFIXES, ImageError, open_image
from .state import publish

FETCH_HINT = "resnet-parity data fashion-mnist {dir}"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# name -> (md5, what it holds); the checksums torchvision verifies against.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# CIFAR-10's binary version, as https://www.cs.toronto.edu/~kriz/cifar.html publishes it (162 MB,
# the md5 the page lists; tensorflow_datasets reads the same archive). Each file is a run of
# 3,073-byte records: a label byte 0-9, then the 32x32 image as 1,024 red, 1,024 green and 1,024
# blue bytes, each plane row-major. batches.meta.txt names the classes, one a line.
CIFAR10_FETCH_HINT = "resnet-parity data cifar10 {dir}"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_DIR = "cifar-10-batches-bin"  # the archive's one folder
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_META_FILE = "batches.meta.txt"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
_CIFAR_SIDE = 32
_CIFAR_RECORD = 1 + 3 * _CIFAR_SIDE * _CIFAR_SIDE

# Image files of an image folder, by extension (case-insensitive): torchvision's IMG_EXTENSIONS,
# .gif (its first frame) and .webp.
IMAGE_EXTENSIONS = IMAGE_SUFFIXES
# Pillow modes read as grey (one channel); every other mode is read as RGB.
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
IMAGE_FOLDER_LAYOUT = "ROOT/<class>/<image>, or ROOT/train/<class>/<image> with ROOT/test (or val)"

Images = Union[np.ndarray, tuple[np.ndarray, ...]]


class DataError(ValueError):
    """A data file is missing or unreadable; the message names it and how to fetch it."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 and int64 labels, one per image.

    ``images`` is one array, (N, H, W) grey or (N, H, W, C) colour, or, where the images differ
    in size (a folder of photos), a tuple of N arrays (H, W) or (H, W, C), all with one channel
    count. :meth:`image` gives one image as stored, at its own size.
    """

    images: Images
    labels: np.ndarray

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        object.__setattr__(self, "labels", labels)
        images = self.images
        if isinstance(images, np.ndarray):
            if images.ndim not in (3, 4) or images.dtype != np.uint8:
                raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, C), got "
                                 f"{images.dtype} {images.shape}")
        else:
            images = tuple(images)
            if not all(isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim in (2, 3)
                       for a in images):
                raise ValueError("images must be uint8 arrays (H, W) or (H, W, C)")
            if len({a.shape[2:] for a in images}) > 1:
                raise ValueError("images must all have the same number of channels")
            object.__setattr__(self, "images", images)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images and {len(labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        """1 for grey images, C for (H, W, C) ones."""
        if isinstance(self.images, np.ndarray):
            return 1 if self.images.ndim == 3 else self.images.shape[3]
        return 1 if not self.images or self.images[0].ndim == 2 else self.images[0].shape[2]

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as stored: uint8 (H, W) grey or (H, W, C), at its own size."""
        return self.images[i]

    def take(self, indices: Sequence[int]) -> Split:
        """The images at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            return Split(self.images[idx], self.labels[idx])
        return Split(tuple(self.images[i] for i in idx), self.labels[idx])


@dataclass(frozen=True)
class Dataset:
    """A train and a test split of one data set; ``classes[i]`` names label ``i``."""

    name: str
    train: Split
    test: Split
    classes: Sequence[str]

    @property
    def channels(self) -> int:
        """Channels of every image (1: grey, 3: RGB), what a network's ``in_channels`` must be."""
        return self.train.channels

    def select(self, classes: Sequence[str]) -> Dataset:
        """The images of ``classes`` alone, relabelled 0..k-1 in the order given (so
        ``select(["airplane", "automobile", "ship", "truck"])`` of CIFAR-10 labels a ship 2)."""
        names = list(classes)
        known = list(self.classes)
        if not names:
            raise DataError(f"{self.name}: no classes selected; its classes are: {', '.join(known)}")
        unknown = [c for c in names if c not in known]
        if unknown:
            raise DataError(f"{self.name}: no class {', '.join(map(repr, unknown))}; its classes "
                            f"are: {', '.join(known)}")
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice:
            raise DataError(f"{self.name}: class {', '.join(map(repr, twice))} selected twice")
        new = np.full(len(known), -1, np.int64)
        new[[known.index(c) for c in names]] = np.arange(len(names))

        def keep(split: Split, which: str) -> Split:
            idx = np.flatnonzero(new[split.labels] >= 0)
            if not len(idx):
                raise DataError(f"{self.name}: no {which} images of {', '.join(names)}")
            kept = split.take(idx)
            return Split(kept.images, new[kept.labels])

        name = f"{self.name} ({', '.join(names)})"
        return Dataset(name, keep(self.train, "train"), keep(self.test, "test"), tuple(names))


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (tarfile's and Pillow's can span several)."""
    return " ".join(str(e).split())


def parse_classes(text: str) -> tuple[str, ...]:
    """``"airplane, automobile,ship"`` -> ``("airplane", "automobile", "ship")``."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


# -- Fashion-MNIST ------------------------------------------------------------------------------

def read_idx(path: Path, hint_dir: Optional[Path] = None) -> np.ndarray:
    """One IDX file (gzip-compressed or not) as a numpy array, checked against its header."""
    hint = f"; fetch the files with: {FETCH_HINT.format(dir=hint_dir or path.parent)}"
    if not path.is_file():
        raise DataError(f"{path}: missing{hint}")
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt gzip ({e}){hint}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number){hint}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header{hint}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim:]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise DataError(f"{path}: {len(body)} bytes of data, the header promises {expected} "
                        f"(shape {shape}){hint}")
    return np.frombuffer(body, dtype).reshape(shape)


def load_fashion_mnist(directory: os.PathLike | str) -> Dataset:
    """Fashion-MNIST from the four ``*-ubyte.gz`` files in ``directory``."""
    d = Path(directory)
    arrays = {name: read_idx(d / name, d) for name in FASHION_MNIST_FILES}

    def split(prefix: str) -> Split:
        images = arrays[f"{prefix}-images-idx3-ubyte.gz"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte.gz"].astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{d}: {prefix} images {images.shape} and labels {labels.shape} "
                            "do not pair up")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{d / (prefix + '-labels-idx1-ubyte.gz')}: labels outside 0..9")
        return Split(np.ascontiguousarray(images, np.uint8), labels)

    return Dataset("fashion-mnist", split("train"), split("t10k"), FASHION_MNIST_CLASSES)


# -- CIFAR-10 -----------------------------------------------------------------------------------

def _cifar_names() -> tuple[str, ...]:
    return (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE)


def cifar10_source(path: os.PathLike | str) -> Optional[Path]:
    """Where CIFAR-10's files are under ``path``: the folder holding the ``.bin`` files (``path``
    or its ``cifar-10-batches-bin/``), or the archive (``path`` or its
    ``cifar-10-binary.tar.gz``); None if there is none of them."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        return None
    if any((p / name).exists() for name in _cifar_names()):
        return p
    if (p / CIFAR10_DIR).is_dir():
        return p / CIFAR10_DIR
    if (p / CIFAR10_ARCHIVE).is_file():
        return p / CIFAR10_ARCHIVE
    return None


def _cifar_files(source: Path, hint: str) -> dict[str, tuple[bytes, str]]:
    """name -> (contents, where it was read: a path or ``archive: member``)."""
    names = _cifar_names()
    if source.is_dir():
        out = {}
        for name in names:
            path = source / name
            if not path.is_file():
                raise DataError(f"{path}: missing{hint}")
            out[name] = (path.read_bytes(), str(path))
        return out
    found: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and base not in found:
                    f = archive.extractfile(member)
                    assert f is not None  # a regular file
                    found[base] = (f.read(), f"{source}: {member.name}")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise DataError(f"{source}: corrupt gzip or tar archive ({_one_line(e)}){hint}") from None
    for name in names:
        if name not in found:
            raise DataError(f"{source}: no {CIFAR10_DIR}/{name} in the archive{hint}")
    return found


def read_cifar10_batch(data: bytes, where: str, hint: str = "") -> Split:
    """One CIFAR-10 binary batch: (N, 32, 32, 3) uint8 RGB images and their labels; an error
    names ``where`` the bytes came from and ends with ``hint``."""
    if not data or len(data) % _CIFAR_RECORD:
        raise DataError(f"{where}: {len(data)} bytes, not a whole number of {_CIFAR_RECORD}-byte "
                        f"CIFAR-10 records (truncated?){hint}")
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= len(CIFAR10_CLASSES))
    if len(bad):
        raise DataError(f"{where}: label {labels[bad[0]]} in record {bad[0]}, outside "
                        f"0..{len(CIFAR10_CLASSES) - 1}{hint}")
    planes = records[:, 1:].reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)  # R, G, B, each row-major
    return Split(np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), labels)


def load_cifar10(path: os.PathLike | str) -> Dataset:
    """CIFAR-10 from its binary version: ``path`` is ``cifar-10-binary.tar.gz`` (read as it is,
    nothing extracted), the ``cifar-10-batches-bin`` folder, or a folder holding either."""
    p = Path(path)
    hint = f"; fetch it with: {CIFAR10_FETCH_HINT.format(dir=p.parent if p.is_file() else p)}"
    source = cifar10_source(p)
    if source is None:
        raise DataError(f"{p}: no CIFAR-10 binary files ({', '.join(_cifar_names())}), no "
                        f"{CIFAR10_DIR}/ and no {CIFAR10_ARCHIVE}{hint}")
    files = _cifar_files(source, hint)
    meta, where = files[CIFAR10_META_FILE]
    try:
        classes = tuple(line.strip() for line in meta.decode("utf-8").splitlines() if line.strip())
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not text ({e}){hint}") from None
    if len(classes) != 10 or len(set(classes)) != 10:
        raise DataError(f"{where}: {len(classes)} class names ({len(set(classes))} distinct), "
                        f"CIFAR-10 has 10{hint}")
    train = [read_cifar10_batch(*files[name], hint) for name in CIFAR10_TRAIN_FILES]
    test = read_cifar10_batch(*files[CIFAR10_TEST_FILE], hint)
    return Dataset("cifar-10", Split(np.concatenate([s.images for s in train]),
                                     np.concatenate([s.labels for s in train])), test, classes)


# -- image folders ------------------------------------------------------------------------------

def decode_image(path: os.PathLike | str) -> np.ndarray:
    """One image file as uint8: (H, W) if Pillow reads it as grey (modes 1, L, LA, and 16-bit
    grey, which :func:`common.core.preprocess.open_image` scales to 8 bits), else (H, W, 3) RGB.
    Alpha is dropped, as torchvision's loader (``convert("RGB")``) drops it; a palette image is
    its palette's colours; an animation gives its first frame."""
    try:
        img = open_image(path)
    except ImageError as e:
        raise DataError(str(e)) from None
    return np.asarray(img.convert("L" if img.mode in _GREY_MODES else "RGB"), dtype=np.uint8)


def find_images(root: os.PathLike | str) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The classes (sorted, as torchvision's ``find_classes`` sorts them) and the image files of
    ``root/<class>/`` with their labels, in torchvision's ``make_dataset`` order (a class's
    folder walked in sorted order, subfolders included). Files of other extensions are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (an image folder is {IMAGE_FOLDER_LAYOUT})")
    classes = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))
    if not classes:
        raise DataError(f"{root}: no class folders (an image folder is {IMAGE_FOLDER_LAYOUT})")
    samples: list[tuple[Path, int]] = []
    empty = []
    for label, name in enumerate(classes):
        before = len(samples)
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            samples += [(Path(folder) / f, label) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
        if len(samples) == before:
            empty.append(name)
    if empty:
        raise DataError(f"{root}: no images in the class folder(s) {', '.join(empty)} (image files "
                        f"end in {' '.join(IMAGE_EXTENSIONS)}, any case)")
    return classes, samples


def _stratified_test(labels: np.ndarray, num_classes: int, test_fraction: float,
                     seed: int) -> np.ndarray:
    """A fixed, seeded, class-stratified test mask: round(fraction * n) of each class's n."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[:int(round(len(idx) * test_fraction))]] = True
    return test


def _image_split(images: list[np.ndarray], labels: Sequence[int], rgb: bool) -> Split:
    """One array where the images share a size, else a tuple; grey ones made RGB if ``rgb``."""
    if rgb:
        images = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in images]
    same = len({a.shape for a in images}) == 1
    return Split(np.stack(images) if same else tuple(images), np.asarray(labels, np.int64))


def load_image_folder(root: os.PathLike | str, test_fraction: float = 0.2, seed: int = 0
                      ) -> Dataset:
    """Images in class subfolders (torchvision's ``ImageFolder`` layout), decoded with Pillow
    (:func:`decode_image`): grey if every image is grey, else RGB.

    If ``root`` has ``train/`` and ``test/`` (or ``val/``) folders of class folders, those are
    the splits (the test classes must be train classes; labels follow the train classes);
    otherwise ``root``'s images are split as :func:`load_builtin` splits the digits (a fixed,
    seeded, class-stratified ``test_fraction``). Every image is decoded here, once.
    """
    root = Path(root)
    layout = split_folders(root)
    if layout:
        classes, train = find_images(layout[0])
        test_classes, test = find_images(layout[1])
        extra = [c for c in test_classes if c not in classes]
        if extra:
            raise DataError(f"{layout[1]}: class folder(s) {', '.join(extra)} not in {layout[0]}")
        test = [(path, classes.index(test_classes[label])) for path, label in test]
    else:
        classes, samples = find_images(root)
        labels = np.array([label for _, label in samples], np.int64)
        mask = _stratified_test(labels, len(classes), test_fraction, seed)
        train = [s for s, t in zip(samples, mask) if not t]
        test = [s for s, t in zip(samples, mask) if t]
        if not test:
            raise DataError(f"{root}: {len(samples)} images are too few to hold out a test split "
                            f"of {test_fraction:g} per class; give it train/ and test/ folders")
    decoded = [[decode_image(path) for path, _ in part] for part in (train, test)]
    rgb = any(a.ndim == 3 for part in decoded for a in part)
    return Dataset(f"images in {root}", _image_split(decoded[0], [lab for _, lab in train], rgb),
                   _image_split(decoded[1], [lab for _, lab in test], rgb), classes)


def split_folders(root: Path) -> Optional[tuple[Path, Path]]:
    """``(root/train, root/test)`` (or ``root/val``) where ``root`` is split that way: both are
    folders and ``train/`` holds class folders; else None (``root`` is one image folder)."""
    train = root / "train"
    test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if test is None or not train.is_dir() or not any(e.is_dir() for e in os.scandir(train)):
        return None
    return train, test


# -- the built-in digits ------------------------------------------------------------------------

def load_builtin(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's digits: 1,797 real 8x8 grey images of handwritten 0-9, split
    1,438 / 359 (a fixed, seeded, class-stratified split)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in data set is scikit-learn's digits: "
                        "pip install scikit-learn") from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    test = _stratified_test(labels, 10, test_fraction, seed)
    return Dataset("digits (scikit-learn)", Split(images[~test], labels[~test]),
                   Split(images[test], labels[test]), tuple(str(c) for c in range(10)))


# -- any of them --------------------------------------------------------------------------------

LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "images": load_image_folder,
}
SOURCES_HELP = (
    "builtin (scikit-learn's 8x8 digits, no download); a directory with the four Fashion-MNIST "
    ".gz files; CIFAR-10's binary version (cifar-10-binary.tar.gz, its cifar-10-batches-bin/, or "
    "a directory holding either); or an image folder, " + IMAGE_FOLDER_LAYOUT + ". Recognised "
    "from what is there; a prefix fashion-mnist:, cifar10: or images: says which")


def recognise(source: os.PathLike | str) -> tuple[str, Optional[Path]]:
    """What :func:`load` reads ``source`` as: ``("builtin", None)``, or a kind of
    :data:`LOADERS` and its path. An explicit prefix (``cifar10:DIR``) wins; otherwise a file is
    a CIFAR-10 archive, and a directory is Fashion-MNIST if it has one of its four files,
    CIFAR-10 if it has one of its files (see :func:`cifar10_source`; both at once is an error
    that asks for the prefix), else an image folder if it has subfolders."""
    text = os.fspath(source)
    if text == "builtin":
        return "builtin", None
    kind, sep, rest = text.partition(":")
    if sep and kind in LOADERS:
        return kind, Path(rest)
    p = Path(text)
    if p.is_file():
        if p.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
            return "cifar10", p
        raise DataError(f"{p}: a file, and the only data set that is one file is CIFAR-10's "
                        f"{CIFAR10_ARCHIVE}; --data takes {SOURCES_HELP}")
    if p.is_dir():
        kinds = [kind for kind, there in (
            ("fashion-mnist", any((p / name).exists() for name in FASHION_MNIST_FILES)),
            ("cifar10", cifar10_source(p) is not None)) if there]
        if len(kinds) > 1:
            raise DataError(f"{p}: holds both Fashion-MNIST and CIFAR-10 files; say which with "
                            f"fashion-mnist:{p} or cifar10:{p}")
        if kinds:
            return kinds[0], p
        if any(e.is_dir() for e in os.scandir(p)):
            return "images", p
    why = "nothing recognised in it" if p.is_dir() else "no such directory"
    raise DataError(
        f"{p}: not a data set ({why}): as Fashion-MNIST, {p / 'train-images-idx3-ubyte.gz'}: "
        f"missing (fetch the files with: {FETCH_HINT.format(dir=p)}); as CIFAR-10, no "
        f"{CIFAR10_ARCHIVE} (fetch it with: {CIFAR10_FETCH_HINT.format(dir=p)}); as an image "
        f"folder, no class folders ({IMAGE_FOLDER_LAYOUT})")


def load(source: os.PathLike | str, classes: Optional[Sequence[str] | str] = None) -> Dataset:
    """The data set ``source`` names (see :func:`recognise` and :data:`SOURCES_HELP`), with only
    ``classes`` (names, or one comma-separated string) in that order if given."""
    kind, path = recognise(source)
    data = load_builtin() if path is None else LOADERS[kind](path)
    if isinstance(classes, str):
        classes = parse_classes(classes)
    return data.select(classes) if classes is not None else data


# -- batches ------------------------------------------------------------------------------------

def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size) float32, or (N, H, W, C) -> (N, size, size, C), bilinear
    with half-pixel centres (like torchvision's ``Resize`` on tensors without antialiasing);
    every channel as a grey image alone."""
    if images.ndim == 4:
        n, h, w, c = images.shape
        planes = resize_bilinear(images.transpose(0, 3, 1, 2).reshape(n * c, h, w), size)
        return planes.reshape(n, c, size, size).transpose(0, 2, 3, 1)
    n, h, w = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32)

    def axis(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * (src / size) - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    (y0, y1, wy), (x0, x1, wx) = axis(h), axis(w)
    img = images.astype(np.float32)
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bottom = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def _planes(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (1, H, W); (H, W, C) -> (C, H, W)."""
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


class ImageData:
    """One split as NCHW float32 batches in [0, 1], resized to ``resize`` x ``resize`` (aspect
    ratio not kept); the same in every framework."""

    def __init__(self, split: Split, resize: int) -> None:
        self.split, self.resize = split, resize

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as :meth:`batch` yields it (grey images: one channel)."""
        return (self.split.channels, self.resize, self.resize)

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(n, C, H, W)`` float32 in [0, 1] and their int64 labels."""
        idx = np.asarray(indices, dtype=np.int64)
        images, s = self.split.images, self.resize
        if isinstance(images, np.ndarray):
            x = resize_bilinear(images[idx], s)
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        else:
            x = np.stack([resize_bilinear(_planes(images[i]), s) for i in idx]) if len(idx) else \
                np.zeros((0, *self.shape), np.float32)
        return x / np.float32(255.0), self.split.labels[idx]

    def order(self, batch_size: int, epoch: int, seed: int, shuffle: bool = True
              ) -> list[np.ndarray]:
        """Index batches of one epoch; the permutation depends on (seed, epoch) alone."""
        n = len(self)
        perm = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n))
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]

    def batches(self, batch_size: int, epoch: int = 0, seed: int = 0, shuffle: bool = True
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for idx in self.order(batch_size, epoch, seed, shuffle):
            yield self.batch(idx)


# -- downloading --------------------------------------------------------------------------------

Progress = Callable[[str, int, Optional[int]], None]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, target: Path, md5: str, timeout: float,
              progress: Optional[Progress]) -> Path:
    """``url`` to ``target``, md5-verified, written atomically; an intact ``target`` is kept.
    A download that fails or does not match leaves nothing behind under the final name."""
    if target.is_file() and _md5(target) == md5:
        return target
    name = target.name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            total = r.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            for chunk in iter(lambda: r.read(1 << 16), b""):
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(name, done, total)
        got = _md5(Path(tmp))
        if got != md5:
            raise DataError(f"{url}: md5 {got}, expected {md5}; nothing was written")
        publish(tmp, target)
    except OSError as e:
        raise DataError(f"{url}: download failed ({e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def fetch_fashion_mnist(directory: os.PathLike | str, base_url: str = FASHION_MNIST_URL,
                        checksums: Optional[dict[str, str]] = None, timeout: float = 60.0,
                        progress: Optional[Progress] = None) -> list[Path]:
    """Download the four files into ``directory``, verify their md5, write each atomically.

    A file already present with the right checksum is kept. A download that fails or does not
    match leaves nothing behind under the final name. ``progress(name, done, total)`` is
    called as bytes arrive.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    checksums = checksums or FASHION_MNIST_FILES
    return [_download(base_url.rstrip("/") + "/" + name, d / name, md5, timeout, progress)
            for name, md5 in checksums.items()]


def fetch_cifar10(directory: os.PathLike | str, base_url: str = CIFAR10_URL,
                  md5: Optional[str] = None, timeout: float = 60.0,
                  progress: Optional[Progress] = None) -> Path:
    """Download ``cifar-10-binary.tar.gz`` (162 MB) into ``directory``, verify its md5
    (:data:`CIFAR10_MD5` unless given), write it atomically, and return its path.

    :func:`load_cifar10` reads the archive as it is. An intact file already there is kept; a
    download that fails or does not match leaves nothing behind under the final name.
    ``progress(name, done, total)`` is called as bytes arrive.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return _download(base_url.rstrip("/") + "/" + CIFAR10_ARCHIVE, d / CIFAR10_ARCHIVE,
                     md5 or CIFAR10_MD5, timeout, progress)
