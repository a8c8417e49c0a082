"""Image classification data for ``resnet-parity train``, framework-neutral.

* :func:`load_fashion_mnist` reads the four standard IDX ``.gz`` files (the ones torchvision
  and Keras download) from a directory; :func:`fetch_fashion_mnist` downloads and verifies them.
* :func:`load_builtin` needs no download: scikit-learn's 8x8 handwritten digits (1,797 real
  images, 10 classes), shipped inside the scikit-learn package.

Every framework gets the same batches in the same order from :class:`ImageData`: the epoch
order comes from one seeded permutation and the resize to ``--resize`` is done here, once, so
the three frameworks train on identical arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

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


class DataError(ValueError):
    """A data file is missing or unreadable; the message names it and how to fetch it."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, H, W) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    classes: Sequence[str]


# -- reading ------------------------------------------------------------------------------------

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
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[:int(round(len(idx) * test_fraction))]] = True
    return Dataset("digits (scikit-learn)", Split(images[~test], labels[~test]),
                   Split(images[test], labels[test]), tuple(str(c) for c in range(10)))


def load(source: str) -> Dataset:
    """``"builtin"`` or a directory holding Fashion-MNIST."""
    return load_builtin() if source == "builtin" else load_fashion_mnist(source)


# -- batches ------------------------------------------------------------------------------------

def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size) float32, bilinear with half-pixel centres (like
    torchvision's ``Resize`` on tensors without antialiasing)."""
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


class ImageData:
    """One split as NCHW float32 batches in [0, 1], resized; the same in every framework."""

    def __init__(self, split: Split, resize: int) -> None:
        self.split, self.resize = split, resize

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as :meth:`batch` yields it (grey images: one channel)."""
        return (1, self.resize, self.resize)

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(n, C, H, W)`` float32 in [0, 1] and their int64 labels."""
        idx = np.asarray(indices, dtype=np.int64)
        x = resize_bilinear(self.split.images[idx], self.resize) / np.float32(255.0)
        return x[:, None], self.split.labels[idx]

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

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_fashion_mnist(directory: os.PathLike | str, base_url: str = FASHION_MNIST_URL,
                        checksums: Optional[dict[str, str]] = None, timeout: float = 60.0,
                        progress: Optional[Callable[[str, int, Optional[int]], None]] = None
                        ) -> list[Path]:
    """Download the four files into ``directory``, verify their md5, write each atomically.

    A file already present with the right checksum is kept. A download that fails or does not
    match leaves nothing behind under the final name. ``progress(name, done, total)`` is
    called as bytes arrive.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    checksums = checksums or FASHION_MNIST_FILES
    out = []
    for name, md5 in checksums.items():
        target = d / name
        if target.is_file() and _md5(target) == md5:
            out.append(target)
            continue
        url = base_url.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=d)
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
        out.append(target)
    return out
