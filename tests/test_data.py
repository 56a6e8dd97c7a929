"""pxd.data: spec parsing, local CIFAR-10 / Fashion-MNIST decoding against known digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pxd.errors import PxdError
from pxd.storage import data

CIFAR_DIGESTS = {
    "x_train": "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
    "y_train": "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
    "x_test": "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
    "y_test": "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
}
# Of the arrays without the channel axis.
FASHION_DIGESTS = {
    "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def assert_one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- specs


def test_is_dataset_spec():
    for s in ["cifar10", "cifar10:test", "fashion_mnist:train[10%:]", "fashion-mnist:test"]:
        assert data.is_dataset_spec(s), s
    for s in ["cifar10.npz", "images/", "cifar100:test", "mnist:test", "x.png", "cifar10x:test"]:
        assert not data.is_dataset_spec(s), s


def test_parse_spec_forms():
    assert data.parse_spec("cifar10:test") == ("cifar10", "test", data.SplitSlice())
    assert data.parse_spec("fashion-mnist:train[10%:]") == (
        "fashion_mnist",
        "train",
        data.SplitSlice(10, None, percent=True),
    )
    assert data.parse_spec("cifar10:test[-50:]")[2] == data.SplitSlice(-50, None)
    assert data.parse_spec("cifar10:train[100:200]")[2].to_slice(50000) == slice(100, 200)


@pytest.mark.parametrize(
    "sel, n, expect",
    [
        ("[:500]", 10000, (0, 500)),
        ("[10%:]", 60000, (6000, 60000)),
        ("[-50:]", 10000, (9950, 10000)),
        ("[:-10%]", 10000, (0, 9000)),
        ("[33%:67%]", 1001, (330, 671)),  # closest rounding, like tfds
        ("[5:100000]", 10, (5, 10)),  # clipped
        ("[-100000:3]", 10, (0, 3)),
    ],
)
def test_slice_resolution(sel, n, expect):
    assert data.parse_spec("cifar10:test" + sel)[2].resolve(n) == expect


@pytest.mark.parametrize(
    "spec",
    [
        "cifar10",  # no split
        "cifar10:",
        "cifar10:val",
        "mnist:test",
        "cifar10:test[1:2:3]",
        "cifar10:test[5]",
        "cifar10:test[abc:]",
        "cifar10:test[5%:10]",
        "cifar10:test[:101%]",
        "cifar10:test[:5",
    ],
)
def test_bad_specs(spec):
    with pytest.raises(PxdError) as e:
        data.load(spec, data_dir="/nonexistent")
    msg = assert_one_line(e)
    assert spec.split(":")[0] in msg


def test_datasets_metadata():
    c = data.DATASETS["cifar10"]
    assert c.shape == (32, 32, 3) and c["num_classes"] == 10
    assert c.class_names[0] == "airplane" and c.class_names[9] == "truck"
    f = data.DATASETS["fashion_mnist"]
    assert f["shape"] == (28, 28, 1) and f.class_names[0] == "T-shirt/top"
    assert f.class_names[9] == "Ankle boot" and len(f.class_names) == 10


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_decodes_both_splits_from_the_archive(cifar):
    data._CACHE.clear()  # decode from the tarball, not the in-process cache
    x, y = data.load("cifar10:train", cifar)
    xt, yt = data.load("cifar10:test", cifar)
    assert x.shape == (50000, 32, 32, 3) and xt.shape == (10000, 32, 32, 3)
    assert y.shape == (50000,) and yt.shape == (10000,)


def test_cifar_test_digests(cifar):
    x, y = data.load("cifar10:test", cifar)
    assert x.dtype == np.uint8 and x.shape == (10000, 32, 32, 3) and x.flags.c_contiguous
    assert y.dtype == np.int32 and y.shape == (10000,)
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert sha(x) == CIFAR_DIGESTS["x_test"]
    assert sha(y.astype(np.uint8)) == CIFAR_DIGESTS["y_test"]
    assert np.bincount(y).tolist() == [1000] * 10


def test_cifar_train_digests(cifar):
    x, y = data.load("cifar10:train", cifar)
    assert y[:4].tolist() == [6, 9, 9, 4]
    assert sha(x) == CIFAR_DIGESTS["x_train"]
    assert sha(y.astype(np.uint8)) == CIFAR_DIGESTS["y_train"]


def test_cifar_slices_and_env(monkeypatch, cifar):
    d = cifar
    monkeypatch.setenv("PXD_DATA_DIR", d)  # the default source when no data_dir is given
    x, y = data.load("cifar10:test")
    xs, ys = data.load("cifar10:test[:500]")
    assert xs.shape == (500, 32, 32, 3) and np.array_equal(xs, x[:500])
    assert np.array_equal(ys, y[:500])
    xs, ys = data.load("cifar10:test[-50:]")
    assert np.array_equal(xs, x[-50:]) and np.array_equal(ys, y[-50:])
    xs, _ = data.load("cifar10:train[100:200]")
    assert np.array_equal(xs, data.load("cifar10:train")[0][100:200])
    xs[:] = 0  # results are copies: the cache stays intact
    assert data.load("cifar10:train[100:101]")[0].any()
    with pytest.raises(PxdError, match="selects no examples"):
        data.load("cifar10:test[500:100]")


def test_cifar_extracted_folder(tmp_path, cifar):
    """An extracted cifar-10-batches-bin/ works too (batch rebuilt from the decoded arrays)."""
    x, y = data.load("cifar10:test", cifar)
    rec = np.concatenate(
        [y[:, None].astype(np.uint8), x.transpose(0, 3, 1, 2).reshape(-1, 3072)], 1
    )
    folder = tmp_path / data.CIFAR_FOLDER
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(rec.tobytes())
    x2, y2 = data.load("cifar10:test[:20]", str(tmp_path))
    assert np.array_equal(x2, x[:20]) and np.array_equal(y2, y[:20])
    with pytest.raises(PxdError, match="incomplete.*data_batch_1.bin"):
        data.load("cifar10:train", str(folder))  # test batch alone: train is incomplete


def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def test_cifar_corrupt_archives(tmp_path):
    (tmp_path / data.CIFAR_TARBALL).write_bytes(b"not a gzip file at all")
    with pytest.raises(PxdError, match="cannot read") as e:
        data.load("cifar10:test", str(tmp_path))
    assert_one_line(e)
    _tar_gz(tmp_path / data.CIFAR_TARBALL, {"test_batch.bin": b"\x00" * 3073 * 3})
    with pytest.raises(PxdError, match="expected 10000") as e:
        data.load("cifar10:test", str(tmp_path))
    assert_one_line(e)
    _tar_gz(tmp_path / data.CIFAR_TARBALL, {"test_batch.bin": b"\x00" * 3000})
    with pytest.raises(PxdError, match="whole number"):
        data.load("cifar10:test", str(tmp_path))
    _tar_gz(tmp_path / data.CIFAR_TARBALL, {"batches.meta.txt": b"airplane\n"})
    with pytest.raises(PxdError, match="lacks test_batch.bin"):
        data.load("cifar10:test", str(tmp_path))


# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_digests_and_slices(fashion):
    d = fashion
    x, y = data.load("fashion_mnist:test", d)
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    assert sha(x[..., 0]) == FASHION_DIGESTS["x_test"]
    assert sha(y.astype(np.uint8)) == FASHION_DIGESTS["y_test"]
    x, y = data.load("fashion_mnist:train", d)
    assert x.shape == (60000, 28, 28, 1)
    assert sha(x[..., 0]) == FASHION_DIGESTS["x_train"]
    assert sha(y.astype(np.uint8)) == FASHION_DIGESTS["y_train"]
    xs, ys = data.load("fashion_mnist:train[10%:]", d)
    assert xs.shape == (54000, 28, 28, 1) and np.array_equal(ys, y[6000:])


def _idx(path: Path, magic: int, arr: np.ndarray) -> None:
    head = struct.pack(f">{1 + arr.ndim}I", magic, *arr.shape)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))


def test_fashion_bad_idx(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "missing"))
    monkeypatch.delenv(data.ENV_FASHION_DIR, raising=False)
    img, lbl = (tmp_path / n for n in data._FASHION_FILES["test"])
    _idx(img, 2049, np.zeros((10000, 28, 28)))  # labels' magic on an images file
    _idx(lbl, 2049, np.zeros(10000))
    with pytest.raises(PxdError, match="magic") as e:
        data.load("fashion_mnist:test", str(tmp_path))
    assert_one_line(e)
    _idx(img, 2051, np.zeros((9, 28, 28)))
    with pytest.raises(PxdError, match="expected"):
        data.load("fashion_mnist:test", str(tmp_path))
    img.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 50)[:-9])  # truncated gzip
    with pytest.raises(PxdError, match="cannot read"):
        data.load("fashion_mnist:test", str(tmp_path))
    lbl.unlink()
    with pytest.raises(PxdError, match="missing"):
        data.load("fashion_mnist:test", str(tmp_path))


# --------------------------------------------------------------------------- no source


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_missing_source_message(name, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PXD_DATA_DIR", str(empty))
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    monkeypatch.delenv(data.ENV_FASHION_DIR, raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("offline: no network\n(details)")

    monkeypatch.setattr(data, "_load_tfds", offline)
    with pytest.raises(PxdError) as e:
        data.load(f"{name}:test[:10]")
    msg = assert_one_line(e)
    assert str(empty) in msg and "PXD_DATA_DIR" in msg and "offline" in msg
    assert "tensorflow-datasets" in msg
    if name == "cifar10":
        assert "cifar-10-binary.tar.gz" in msg
    else:
        assert str(tmp_path / "no-system-dir") in msg
        assert "apt-get install dataset-fashion-mnist" in msg


def test_tfds_records_conversion():
    """The tfds fallback's record -> array conversion (tfds itself needs the network)."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    source = [{"image": imgs[i], "label": np.int64(i % 10)} for i in range(7)]
    x, y = data._from_tfds_records(source, "fashion_mnist", data.SplitSlice(-3, None))
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28, 1) and np.array_equal(x, imgs[4:])
    assert y.dtype == np.int32 and y.tolist() == [4, 5, 6]
