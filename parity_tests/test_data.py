"""The data sets: Fashion-MNIST's IDX files and CIFAR-10's binary records, written (and broken)
here byte by byte, image folders written with Pillow, what ``load`` recognises and ``--classes``;
colour through the batches; the downloads against a local HTTP server on loopback. No framework
and no internet needed (torch only as a resize reference)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import tarfile
import threading

import numpy as np
import pytest

from common.core.data import (
    FASHION_MNIST_FILES,
    DataError,
    Dataset,
    ImageData,
    Split,
    fetch_cifar10,
    fetch_fashion_mnist,
    load,
    load_cifar10,
    load_fashion_mnist,
    load_image_folder,
    parse_classes,
    read_idx,
    recognise,
    resize_bilinear,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the format defines it (magic 0x0000 0x08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(directory, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    blobs = {}
    for name, a in arrays.items():
        blobs[name] = gzip.compress(idx_bytes(a))
        (directory / name).write_bytes(blobs[name])
    return arrays, blobs


def test_reads_what_the_format_says(tmp_path):
    arrays, _ = write_fashion(tmp_path)
    data = load_fashion_mnist(tmp_path)
    assert np.array_equal(data.train.images, arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(data.test.labels, arrays["t10k-labels-idx1-ubyte.gz"])
    assert data.train.labels.dtype == np.int64 and len(data.classes) == 10
    raw = tmp_path / "plain.idx"  # an uncompressed IDX file reads too
    raw.write_bytes(idx_bytes(np.arange(6).reshape(2, 3)))
    assert read_idx(raw).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("damage, message", [
    (lambda b: None, "missing"),
    (lambda b: b[: len(b) // 2], "corrupt gzip"),
    (lambda b: gzip.compress(gzip.decompress(b)[:-7]), "bytes of data, the header promises"),
    (lambda b: gzip.compress(b"\x00\x00\x99\x03" + gzip.decompress(b)[4:]), "bad magic"),
    (lambda b: gzip.compress(gzip.decompress(b)[:6]), "truncated IDX header"),
    (lambda b: b"", "not an IDX file"),
])
def test_a_broken_file_is_named_with_the_fetch_command(tmp_path, damage, message):
    _, blobs = write_fashion(tmp_path)
    name = "t10k-images-idx3-ubyte.gz"
    broken = damage(blobs[name])
    if broken is None:
        (tmp_path / name).unlink()
    else:
        (tmp_path / name).write_bytes(broken)
    with pytest.raises(DataError) as e:
        load_fashion_mnist(tmp_path)
    assert name in str(e.value) and message in str(e.value)
    assert f"resnet-parity data fashion-mnist {tmp_path}" in str(e.value)


def test_images_and_labels_must_pair_up(tmp_path):
    _, blobs = write_fashion(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3))))
    with pytest.raises(DataError, match="do not pair up"):
        load_fashion_mnist(tmp_path)


class _Server:
    """Serves fixture files on 127.0.0.1 and counts the requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fixtures(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _, blobs = write_fashion(src)
    server = _Server(blobs)
    yield blobs, {n: hashlib.md5(b).hexdigest() for n, b in blobs.items()}, server
    server.close()


def test_download_verifies_and_writes_atomically(tmp_path, fixtures):
    blobs, md5s, server = fixtures
    out = tmp_path / "data"
    seen = []
    paths = fetch_fashion_mnist(out, server.url, md5s, timeout=10,
                                progress=lambda name, done, total: seen.append((name, done, total)))
    assert sorted(p.name for p in paths) == sorted(blobs)
    assert all((out / n).read_bytes() == b for n, b in blobs.items())
    assert sorted(p.name for p in out.iterdir()) == sorted(blobs)  # no .part files left
    assert seen[-1][1] == seen[-1][2]
    assert len(load_fashion_mnist(out).train) == 12
    fetch_fashion_mnist(out, server.url, md5s, timeout=10)  # intact files are kept
    assert len(server.requests) == 4


def test_a_bad_checksum_or_a_missing_file_writes_nothing(tmp_path, fixtures):
    blobs, md5s, server = fixtures
    out = tmp_path / "data"
    wrong = dict(md5s)
    wrong["train-labels-idx1-ubyte.gz"] = "0" * 32
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: md5 .*expected 0{32}"):
        fetch_fashion_mnist(out, server.url, wrong, timeout=10)
    assert "train-labels-idx1-ubyte.gz" not in {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    del server.files["t10k-images-idx3-ubyte.gz"]
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: download failed"):
        fetch_fashion_mnist(tmp_path / "other", server.url, md5s, timeout=10)


def test_the_data_command_refuses_a_mirror_with_other_files(tmp_path, fixtures, capsys):
    from common.tools.cli import main
    _, _, server = fixtures
    code = main(["data", "fashion-mnist", str(tmp_path / "d"), "--url", server.url, "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "md5" in err and "nothing was written" in err
    assert not [p for p in (tmp_path / "d").iterdir() if p.suffix == ".gz"]
    assert set(FASHION_MNIST_FILES) == {p for p in server.files}


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8)).astype(np.uint8)
    ref = torch.nn.functional.interpolate(torch.from_numpy(images[:, None].astype(np.float32)),
                                          size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_bilinear(images, 32), ref[:, 0].numpy(), atol=1e-4)


def test_batches_are_the_same_for_everyone():
    data = ImageData(Split(np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2) * 6,
                           np.arange(10)), 2)
    a, b = data.order(4, epoch=1, seed=7), data.order(4, epoch=1, seed=7)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in data.order(4, epoch=2, seed=7)]
    assert sorted(np.concatenate(a).tolist()) == list(range(10)) and [len(x) for x in a] == [4, 4, 2]
    x, y = data.batch(a[0])
    assert x.shape == (4, 1, 2, 2) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.tolist() == a[0].tolist()


# -- colour through the batches -------------------------------------------------------------------

def test_colour_resize_matches_torch_bilinear_per_channel():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(1).integers(0, 256, (2, 7, 9, 3)).astype(np.uint8)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)), size=(12, 12),
        mode="bilinear", align_corners=False).numpy()
    out = resize_bilinear(images, 12)
    assert out.shape == (2, 12, 12, 3)
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref, atol=1e-4)
    x, _ = ImageData(Split(images, np.zeros(2)), 12).batch([1, 0])
    assert x.shape == (2, 3, 12, 12) and x.dtype == np.float32
    np.testing.assert_allclose(x * 255, ref[[1, 0]], atol=1e-3)


def test_rgb_batches_keep_the_planes_apart():
    """R, G, B planes that differ come out as channels 0, 1, 2, unchanged at the native size."""
    r, g, b = np.full((3, 3), 10), np.full((3, 3), 120), np.arange(9).reshape(3, 3) * 20
    images = np.stack([np.stack([r, g, b], axis=-1)] * 2).astype(np.uint8)  # (2, 3, 3, 3)
    images[1] = 255 - images[1]
    split = Split(images, np.array([4, 7]))
    data = ImageData(split, 3)
    assert data.shape == (3, 3, 3) and split.channels == 3 and len(split) == 2
    x, y = data.batch([0, 1])
    assert y.tolist() == [4, 7] and x.shape == (2, 3, 3, 3)
    assert np.array_equal(np.rint(x[0] * 255), np.stack([r, g, b]))
    assert np.array_equal(np.rint(x[1] * 255), 255 - np.stack([r, g, b]))
    assert np.array_equal(split.image(1), images[1]) and split.image(0).shape == (3, 3, 3)


def test_images_of_different_sizes_are_resized_one_by_one():
    small = np.full((2, 2), 200, np.uint8)
    tall = np.tile(np.array([[0], [100], [200]], np.uint8), (1, 5))  # rows 0, 100, 200; (3, 5)
    split = Split([small, tall], [1, 0])
    assert isinstance(split.images, tuple) and split.image(1).shape == (3, 5)
    x, y = ImageData(split, 3).batch([0, 1])
    assert x.shape == (2, 1, 3, 3) and y.tolist() == [1, 0]
    assert np.allclose(x[0] * 255, 200, atol=1e-3)
    assert np.allclose(x[1, 0] * 255, [[0] * 3, [100] * 3, [200] * 3], atol=1e-3)
    colour = Split((np.zeros((4, 4, 3), np.uint8), np.full((2, 6, 3), 255, np.uint8)), [0, 0])
    x, _ = ImageData(colour, 4).batch([1])
    assert x.shape == (1, 3, 4, 4) and np.allclose(x, 1.0)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 3, 3), np.float32), [0, 1], "uint8"),
    (np.zeros((2, 3), np.uint8), [0, 1], "uint8"),
    (np.zeros((2, 3, 3), np.uint8), [0], "2 images and 1 labels"),
    ([np.zeros((3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)], [0, 1], "same number of channels"),
])
def test_a_split_refuses_what_it_cannot_hold(images, labels, message):
    with pytest.raises(ValueError, match=message):
        Split(images, np.asarray(labels))


# -- CIFAR-10, binary version -----------------------------------------------------------------------

CIFAR_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
CIFAR_META = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"


def cifar_image(label: int, k: int) -> np.ndarray:
    """A 32x32 RGB image whose planes differ and whose rows differ from its columns."""
    y, x = np.mgrid[:32, :32]
    r = (7 * y + 3 * x + label) % 256
    g = np.full((32, 32), 10 * label + k)
    b = (255 - 5 * y) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def cifar_record(label: int, image: np.ndarray) -> bytes:
    """One record as the CIFAR page describes it: the label byte, then 1,024 red bytes, 1,024
    green and 1,024 blue, each plane row by row."""
    return (bytes([label]) + image[:, :, 0].tobytes() + image[:, :, 1].tobytes()
            + image[:, :, 2].tobytes())


def write_cifar(directory, per_class=(1, 1, 1, 1, 1, 1), classes=range(10)):
    """The six batches (``per_class[i]`` images of each class in file i) and the meta file in
    ``directory``; returns {file: [(label, image), ...]}."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {}
    for name, n in zip(CIFAR_NAMES, per_class):
        records = [(c, cifar_image(c, k)) for k in range(n) for c in classes]
        content[name] = records
        (directory / name).write_bytes(b"".join(cifar_record(c, im) for c, im in records))
    (directory / "batches.meta.txt").write_bytes(CIFAR_META)
    return content


def cifar_archive(source, target):
    """``cifar-10-binary.tar.gz`` as the CIFAR page ships it: one folder cifar-10-batches-bin."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(source.iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-bin/{path.name}")
    return target


def test_cifar10_reads_the_binary_records(tmp_path):
    content = write_cifar(tmp_path / "cifar-10-batches-bin", per_class=(2, 1, 1, 1, 1, 3))
    for where in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        data = load_cifar10(where)
        train = [r for name in CIFAR_NAMES[:5] for r in content[name]]
        assert data.train.images.shape == (len(train), 32, 32, 3) == (60, 32, 32, 3)
        assert data.train.labels.tolist() == [c for c, _ in train]
        assert all(np.array_equal(data.train.image(i), im) for i, (_, im) in enumerate(train))
        assert data.test.images.shape == (30, 32, 32, 3) and data.channels == 3
        assert data.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                "horse", "ship", "truck")
    first = data.train.image(0)  # label 0, k 0: R = 7y + 3x, G = 0, B = 255 - 5y
    assert first[0, 1].tolist() == [3, 0, 255] and first[1, 0].tolist() == [7, 0, 250]
    x, y = ImageData(data.test, 32).batch([0])
    assert x.shape == (1, 3, 32, 32) and np.array_equal(np.rint(x[0, 0] * 255), first[:, :, 0])


def test_cifar10_reads_the_archive_as_it_is(tmp_path):
    content = write_cifar(tmp_path / "src")
    (tmp_path / "dl").mkdir()
    archive = cifar_archive(tmp_path / "src", tmp_path / "dl" / "cifar-10-binary.tar.gz")
    for where in (archive, tmp_path / "dl"):
        data = load_cifar10(where)
        assert data.train.labels.tolist() == list(range(10)) * 5
        assert np.array_equal(data.test.image(9), content["test_batch.bin"][9][1])
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["cifar-10-binary.tar.gz"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "data_batch_4.bin").unlink(), "data_batch_4.bin: missing"),
    (lambda d: (d / "batches.meta.txt").unlink(), "batches.meta.txt: missing"),
    (lambda d: (d / "data_batch_2.bin").write_bytes((d / "data_batch_2.bin").read_bytes()[:-1]),
     "data_batch_2.bin: 30729 bytes, not a whole number of 3073-byte CIFAR-10 records"),
    (lambda d: (d / "test_batch.bin").write_bytes(b""), "test_batch.bin: 0 bytes"),
    (lambda d: (d / "test_batch.bin").write_bytes(cifar_record(3, cifar_image(0, 0))
                                                   + cifar_record(10, cifar_image(0, 0))),
     "test_batch.bin: label 10 in record 1, outside 0..9"),
    (lambda d: (d / "batches.meta.txt").write_bytes(b"cat\ndog\n"), "batches.meta.txt: 2 class names"),
])
def test_a_broken_cifar_file_is_named(tmp_path, damage, message):
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar(d)
    damage(d)
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(d / message.split(":")[0]))
    assert str(e.value).endswith(f"; fetch it with: resnet-parity data cifar10 {tmp_path}")


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "corrupt gzip or tar archive"),
    (lambda b: b"\x1f\x8b" + b"\x00" * 40, "corrupt gzip or tar archive"),
    (lambda b: b"not a tar file at all", "corrupt gzip or tar archive"),
    (None, "no cifar-10-batches-bin/test_batch.bin in the archive"),
])
def test_a_broken_cifar_archive_is_named(tmp_path, damage, message):
    write_cifar(tmp_path / "src")
    if damage is None:
        (tmp_path / "src" / "test_batch.bin").unlink()
    archive = cifar_archive(tmp_path / "src", tmp_path / "cifar-10-binary.tar.gz")
    if damage is not None:
        archive.write_bytes(damage(archive.read_bytes()))
    with pytest.raises(DataError) as e:
        load_cifar10(archive)
    assert str(e.value).startswith(f"{archive}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture
def cifar_server(tmp_path):
    write_cifar(tmp_path / "src")
    blob = cifar_archive(tmp_path / "src", tmp_path / "served.tar.gz").read_bytes()
    server = _Server({"cifar-10-binary.tar.gz": blob})
    yield blob, hashlib.md5(blob).hexdigest(), server
    server.close()


def test_cifar_download_verifies_and_writes_atomically(tmp_path, cifar_server):
    blob, md5, server = cifar_server
    out = tmp_path / "data"
    seen = []
    path = fetch_cifar10(out, server.url, md5, timeout=10,
                         progress=lambda name, done, total: seen.append((name, done, total)))
    assert path == out / "cifar-10-binary.tar.gz" and path.read_bytes() == blob
    assert [p.name for p in out.iterdir()] == ["cifar-10-binary.tar.gz"]  # no .part file
    assert seen[-1] == ("cifar-10-binary.tar.gz", len(blob), len(blob))
    assert len(load_cifar10(out).train) == 50
    fetch_cifar10(out, server.url, md5, timeout=10)  # an intact file is kept
    assert len(server.requests) == 1
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz: md5 .*expected 0{32}; nothing"):
        fetch_cifar10(tmp_path / "other", server.url, "0" * 32, timeout=10)
    assert not list((tmp_path / "other").iterdir())
    del server.files["cifar-10-binary.tar.gz"]
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: download failed"):
        fetch_cifar10(tmp_path / "other", server.url, md5, timeout=10)
    assert not list((tmp_path / "other").iterdir())


def test_the_data_command_fetches_cifar10(tmp_path, cifar_server, capsys, monkeypatch):
    from common.core import data as data_module
    from common.tools.cli import main
    blob, md5, server = cifar_server
    code = main(["data", "cifar10", str(tmp_path / "d"), "--url", server.url, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "md5" in err and "nothing was written" in err
    assert data_module.CIFAR10_MD5 == "c32a1d4ab5d03f1284b67883e8d87530"  # the CIFAR page's
    assert not list((tmp_path / "d").iterdir())
    monkeypatch.setattr(data_module, "CIFAR10_MD5", md5)  # our archive's, for the command
    code = main(["data", "cifar10", str(tmp_path / "d"), "--url", server.url, "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "cifar10: 50 train and 10 test images, md5 verified" in out
    assert (tmp_path / "d" / "cifar-10-binary.tar.gz").read_bytes() == blob


# -- image folders --------------------------------------------------------------------------------

def save(path, array, mode=None, **options):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.frombytes(
        mode, array.shape[::-1], array.tobytes())
    image.save(path, **options)
    return image


def test_an_image_folder_reads_every_kind_of_image(tmp_path):
    """RGB, RGBA (alpha dropped), palette, 16-bit grey and plain grey images, by extension in any
    case, nested folders included, other files skipped; classes sorted as Python sorts."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    rgba = rng.integers(0, 256, (5, 6, 4)).astype(np.uint8)
    grey = rng.integers(0, 256, (5, 6)).astype(np.uint8)
    wide = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 257)  # 16-bit grey k * 257
    wide[0, 0] = 65535
    index = (np.arange(30).reshape(5, 6) % 3).astype(np.uint8)
    palette = [10, 20, 30, 200, 100, 0, 0, 255, 128]
    root = tmp_path / "photos" / "train"
    save(tmp_path / "photos" / "test" / "a" / "0.png", grey)
    save(root / "b" / "1.png", rgb)
    save(root / "b" / "deeper" / "2.PNG", rgba)
    save(root / "a" / "3.bmp", grey)
    save(root / "a" / "4.png", wide)
    p = Image.frombytes("P", (6, 5), index.tobytes())
    p.putpalette(palette)
    for name in ("5.gif", "6.png"):
        (root / "B").mkdir(parents=True, exist_ok=True)
        p.save(root / "B" / name)
    save(root / "B" / "7.webp", rgb, lossless=True)
    (root / "B" / "notes.txt").write_text("not an image, and not named like one")
    data = load_image_folder(root.parent)
    assert data.classes == ("B", "a", "b") and data.channels == 3
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2] and data.test.labels.tolist() == [1]
    assert np.array_equal(data.test.image(0), np.stack([grey] * 3, -1))  # grey made RGB
    coloured = np.array(palette, np.uint8).reshape(3, 3)[index]
    expected = [coloured, coloured, rgb, np.stack([grey] * 3, -1),
                np.stack([wide // 257] * 3, -1).astype(np.uint8), rgb, rgba[:, :, :3]]
    for i, want in enumerate(expected):
        assert np.array_equal(data.train.image(i), want), i
    assert data.train.image(4)[0, 0].tolist() == [255, 255, 255]


def test_a_grey_image_folder_stays_grey_and_splits_by_class(tmp_path):
    root = tmp_path / "digits"
    for c in ("zero", "one"):
        for k in range(10):
            save(root / c / f"{k}.png", np.full((4, 4), 10 * k + (c == "one"), np.uint8))
    save(root / "one" / "big.png", np.full((8, 6), 7, np.uint8))
    data = load_image_folder(root)
    assert data.channels == 1 and data.classes == ("one", "zero")
    assert (len(data.train), len(data.test)) == (17, 4)  # round(0.2 * 11) + round(0.2 * 10)
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1]
    seen = [data.train.image(i).tobytes() for i in range(17)] + [
        data.test.image(i).tobytes() for i in range(4)]
    assert len(set(seen)) == 21  # every image once, in train or in test
    assert isinstance(data.train.images, tuple) or isinstance(data.test.images, tuple)
    again = load_image_folder(root)
    assert [a.tobytes() for a in again.test.images] == [a.tobytes() for a in data.test.images]
    x, _ = ImageData(data.train, 4).batch(range(17))
    assert x.shape == (17, 1, 4, 4)


def test_an_image_folder_with_train_and_test_folders(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            for k in range(n):
                save(tmp_path / split / c / f"{k}.jpg", np.full((6, 6, 3), 40 * k, np.uint8))
    save(tmp_path / "val" / "dog" / "grey.png", np.zeros((6, 6), np.uint8))
    data = load(tmp_path)
    assert data.classes == ("cat", "dog") and data.channels == 3
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test.labels.tolist() == [0, 1, 1] and data.test.images.shape == (3, 6, 6, 3)
    save(tmp_path / "val" / "bird" / "0.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataError, match=r"val: class folder\(s\) bird not in .*train"):
        load(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda r: (r / "cat" / "a.png").write_bytes(b"\x89PNG but not really"),
     "cat/a.png: not an image Pillow can read"),
    (lambda r: (r / "cat" / "a.png").write_bytes(  # cut inside the image data
        (r / "dog" / "0.png").read_bytes()[:45]), "cat/a.png: a damaged or truncated image"),
    (lambda r: (r / "bird").mkdir(), "no images in the class folder(s) bird"),
    (lambda r: [p.unlink() for p in r.rglob("*.png")], "no images in the class folder(s) cat, dog"),
])
def test_a_broken_image_folder_is_named(tmp_path, make, message):
    root = tmp_path / "pets"
    for k in range(5):
        save(root / "dog" / f"{k}.png", np.full((16, 16, 3), k, np.uint8))
    (root / "cat").mkdir()
    (root / "cat" / "b.png").write_bytes((root / "dog" / "0.png").read_bytes())
    make(root)
    with pytest.raises(DataError) as e:
        load(root)
    assert message in str(e.value) and "\n" not in str(e.value)


# -- load: what it recognises, and classes ------------------------------------------------------

def test_load_recognises_each_data_set_from_what_is_there(tmp_path):
    (tmp_path / "fashion").mkdir()
    write_fashion(tmp_path / "fashion")
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-bin")
    cifar_archive(tmp_path / "cifar" / "cifar-10-batches-bin", tmp_path / "c.tar.gz")
    save(tmp_path / "folder" / "x" / "0.png", np.zeros((3, 3), np.uint8))
    save(tmp_path / "folder" / "x" / "1.png", np.zeros((3, 3), np.uint8))
    save(tmp_path / "folder" / "x" / "2.png", np.zeros((3, 3), np.uint8))
    assert recognise("builtin") == ("builtin", None)
    assert recognise(tmp_path / "fashion") == ("fashion-mnist", tmp_path / "fashion")
    assert recognise(tmp_path / "cifar") == ("cifar10", tmp_path / "cifar")
    assert recognise(str(tmp_path / "c.tar.gz")) == ("cifar10", tmp_path / "c.tar.gz")
    assert recognise(tmp_path / "folder") == ("images", tmp_path / "folder")
    assert load(tmp_path / "fashion").name == "fashion-mnist"
    assert load(tmp_path / "c.tar.gz").name == "cifar-10"
    assert load(tmp_path / "folder").classes == ("x",)
    # both in one directory: a prefix says which
    write_fashion(tmp_path / "cifar")
    with pytest.raises(DataError, match="both Fashion-MNIST and CIFAR-10.*cifar10:"):
        load(tmp_path / "cifar")
    assert load(f"cifar10:{tmp_path / 'cifar'}").name == "cifar-10"
    assert load(f"fashion-mnist:{tmp_path / 'cifar'}").name == "fashion-mnist"
    with pytest.raises(DataError, match="no class folders"):
        load(f"images:{tmp_path / 'fashion'}")
    (tmp_path / "empty").mkdir()
    for where, why in ((tmp_path / "empty", "nothing recognised in it"), (tmp_path / "nowhere",
                                                                    "no such directory")):
        with pytest.raises(DataError) as e:
            load(where)
        text = str(e.value)
        assert text.startswith(f"{where}: not a data set ({why})") and "\n" not in text
        assert "resnet-parity data fashion-mnist" in text and "resnet-parity data cifar10" in text
    with pytest.raises(DataError, match="only data set that is one file"):
        load(tmp_path / "fashion" / "train-images-idx3-ubyte.gz")


def test_classes_are_selected_in_the_order_given(tmp_path):
    write_cifar(tmp_path, per_class=(2, 1, 1, 1, 1, 1))
    data = load(tmp_path, classes=["airplane", "automobile", "ship", "truck"])
    assert data.classes == ("airplane", "automobile", "ship", "truck")
    # six train images of each class, in file order; the label is the position in the list
    assert data.train.labels.tolist() == ([0, 1, 2, 3] * 6)
    assert [int(data.train.image(i)[0, 0, 1]) for i in range(4)] == [0, 10, 80, 90]  # G = 10 c
    assert data.test.labels.tolist() == [0, 1, 2, 3] and data.channels == 3
    again = load(tmp_path, classes="truck, airplane")
    assert again.classes == ("truck", "airplane") and again.test.labels.tolist() == [1, 0]
    assert [int(again.test.image(i)[0, 0, 1]) for i in range(2)] == [0, 90]
    with pytest.raises(DataError) as e:
        load(tmp_path, classes=["airplane", "plane"])
    assert "no class 'plane'" in str(e.value) and "airplane, automobile, bird, cat" in str(e.value)
    with pytest.raises(DataError, match="'ship' selected twice"):
        load(tmp_path, classes=["ship", "ship"])
    digits = Dataset("d", Split(np.zeros((3, 2, 2), np.uint8), [0, 1, 2]),
                     Split(np.zeros((1, 2, 2), np.uint8), [0]), ("0", "1", "2"))
    with pytest.raises(DataError, match="no test images of 2"):
        digits.select(["2"])
    assert parse_classes(" a, b ,,c ") == ("a", "b", "c")
