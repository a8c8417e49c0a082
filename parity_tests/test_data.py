"""Fashion-MNIST files: the IDX reader on files written (and broken) here, and the download
against a local HTTP server on loopback. No framework and no internet needed."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

from common.core.data import (
    FASHION_MNIST_FILES,
    DataError,
    ImageData,
    Split,
    fetch_fashion_mnist,
    load_fashion_mnist,
    read_idx,
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
