"""pxd.imageio: reading user images (every format and every rejection) and atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from pxd.errors import PxdError
from pxd.storage import imageio

RNG = np.random.default_rng(0)


def rand_images(n=3, h=8, w=6, c=3) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def save_png(path, img: np.ndarray, mode: str | None = None) -> None:
    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    (im.convert(mode) if mode else im).save(path)


def raises_one_line(path, match: str | None = None) -> str:
    with pytest.raises(PxdError) as e:
        imageio.read_images(str(path))
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    if match:
        assert match.lower() in msg.lower(), msg
    return msg


# --------------------------------------------------------------------------- round trips


def test_npz_roundtrip(tmp_path):
    x, y = rand_images(), np.array([1, 0, 7])
    p = tmp_path / "a.npz"
    imageio.write_npz(str(p), x=x, y=y)
    x2, y2 = imageio.read_images(str(p))
    assert x2.dtype == np.uint8 and np.array_equal(x2, x)
    assert y2.dtype == np.int32 and y2.tolist() == [1, 0, 7]
    # Alternative key names, no labels, (N,H,W) grey.
    np.savez(tmp_path / "b.npz", images=x[..., 0])
    x3, y3 = imageio.read_images(str(tmp_path / "b.npz"))
    assert x3.shape == (3, 8, 6, 1) and y3 is None and np.array_equal(x3[..., 0], x[..., 0])
    np.savez(tmp_path / "c.npz", x=x, labels=np.array([4, 5, 6], np.uint8))
    assert imageio.read_images(str(tmp_path / "c.npz"))[1].tolist() == [4, 5, 6]


def test_npy_roundtrip_and_integral_floats(tmp_path):
    x = rand_images(c=1)
    np.save(tmp_path / "a.npy", x)
    assert np.array_equal(imageio.read_images(str(tmp_path / "a.npy"))[0], x)
    np.save(tmp_path / "f.npy", x.astype(np.float32))  # whole-number floats are accepted
    xf, _ = imageio.read_images(str(tmp_path / "f.npy"))
    assert xf.dtype == np.uint8 and np.array_equal(xf, x)
    np.save(tmp_path / "i.npy", x.astype(np.int64))
    assert np.array_equal(imageio.read_images(str(tmp_path / "i.npy"))[0], x)


def test_png_modes(tmp_path):
    rgb, grey = rand_images(1)[0], rand_images(1, c=1)[0]
    save_png(tmp_path / "rgb.png", rgb)
    save_png(tmp_path / "grey.png", grey)
    save_png(tmp_path / "rgba.png", rgb, "RGBA")
    save_png(tmp_path / "pal.png", rgb, "P")
    x, y = imageio.read_images(str(tmp_path / "rgb.png"))
    assert x.shape == (1, 8, 6, 3) and y is None and np.array_equal(x[0], rgb)
    x, _ = imageio.read_images(str(tmp_path / "grey.png"))
    assert x.shape == (1, 8, 6, 1) and np.array_equal(x[0], grey)
    x, _ = imageio.read_images(str(tmp_path / "rgba.png"))
    assert x.shape == (1, 8, 6, 3) and np.array_equal(x[0], rgb)
    assert imageio.read_images(str(tmp_path / "pal.png"))[0].shape == (1, 8, 6, 3)
    Image.fromarray(rgb).save(tmp_path / "a.JPG", quality=95)
    assert imageio.read_images(str(tmp_path / "a.JPG"))[0].shape == (1, 8, 6, 3)


def test_folder_roundtrip(tmp_path):
    x = rand_images(12)
    paths = imageio.write_image_folder(str(tmp_path / "imgs"), x)
    assert len(paths) == 12 and all(p.endswith(".png") for p in paths)
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    x2, y2 = imageio.read_images(str(tmp_path / "imgs"))
    assert y2 is None and np.array_equal(x2, x)  # name order == index order past 10
    # Grey and colour mixed: grey is promoted to RGB.
    d = tmp_path / "mixed"
    d.mkdir()
    save_png(d / "0.png", x[0])
    save_png(d / "1.png", x[1, ..., :1])
    xm, _ = imageio.read_images(str(d))
    assert xm.shape == (2, 8, 6, 3) and np.array_equal(xm[1], np.repeat(x[1, ..., :1], 3, -1))


# --------------------------------------------------------------------------- rejections


def test_missing_and_unsupported(tmp_path):
    raises_one_line(tmp_path / "nope.npz", "no such file")
    (tmp_path / "a.txt").write_text("hi")
    raises_one_line(tmp_path / "a.txt", "unsupported")


def test_truncated_and_corrupt_files(tmp_path):
    save_png(tmp_path / "ok.png", rand_images(1, 64, 64)[0])
    blob = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(blob[: len(blob) // 2])
    raises_one_line(tmp_path / "trunc.png", "trunc.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    raises_one_line(tmp_path / "junk.png", "corrupt")
    imageio.write_npz(str(tmp_path / "ok.npz"), x=rand_images())
    blob = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(blob[: len(blob) // 2])
    raises_one_line(tmp_path / "trunc.npz", "trunc.npz")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY nonsense")
    raises_one_line(tmp_path / "junk.npy", "junk.npy")


def test_bad_values(tmp_path):
    x = rand_images().astype(np.float64)
    x[0, 0, 0, 0] = 0.5
    np.save(tmp_path / "half.npy", x)
    raises_one_line(tmp_path / "half.npy", "0.5")
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    raises_one_line(tmp_path / "nan.npy", "nan")
    x[0, 0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", x)
    raises_one_line(tmp_path / "inf.npy", "inf")
    np.save(tmp_path / "big.npy", np.full((2, 4, 4), 256, np.int16))
    raises_one_line(tmp_path / "big.npy", "256")
    np.save(tmp_path / "neg.npy", np.full((2, 4, 4), -1, np.int16))
    raises_one_line(tmp_path / "neg.npy", "-1")
    np.save(tmp_path / "cplx.npy", np.zeros((2, 4, 4), np.complex64))
    raises_one_line(tmp_path / "cplx.npy", "dtype")


def test_bad_shapes(tmp_path):
    np.save(tmp_path / "r2.npy", np.zeros((4, 4), np.uint8))
    raises_one_line(tmp_path / "r2.npy", "shape")
    np.save(tmp_path / "c5.npy", np.zeros((2, 4, 4, 5), np.uint8))
    raises_one_line(tmp_path / "c5.npy", "5 channels")
    np.save(tmp_path / "n0.npy", np.zeros((0, 4, 4, 3), np.uint8))
    raises_one_line(tmp_path / "n0.npy", "no images")


def test_object_arrays_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    raises_one_line(tmp_path / "obj.npy", "pickle")
    np.savez(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object))
    raises_one_line(tmp_path / "obj.npz", "pickle")


def test_npz_keys_and_labels(tmp_path):
    np.savez(tmp_path / "k.npz", pics=rand_images())
    raises_one_line(tmp_path / "k.npz", "pics")
    np.savez(tmp_path / "n.npz", x=rand_images(), y=np.arange(2))
    raises_one_line(tmp_path / "n.npz", "2 labels for 3 images")
    np.savez(tmp_path / "f.npz", x=rand_images(), y=np.array([0.0, 1.5, 2.0]))
    raises_one_line(tmp_path / "f.npz", "whole numbers")


def test_folder_rejections(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    raises_one_line(empty, "no png/jpeg")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    save_png(mixed / "a.png", rand_images(1, 8, 8)[0])
    save_png(mixed / "b.png", rand_images(1, 8, 9)[0])
    raises_one_line(mixed, "b.png")
    bad = tmp_path / "bad"
    bad.mkdir()
    save_png(bad / "a.png", rand_images(1)[0])
    (bad / "b.png").write_bytes(b"not a png")
    raises_one_line(bad, "b.png")


# --------------------------------------------------------------------------- writing


def no_temp_files(d) -> bool:
    return not [n for n in os.listdir(d) if n.startswith(".")]


def test_atomic_writes_leave_no_temp_files(tmp_path):
    imageio.write_npz(str(tmp_path / "a.npz"), x=rand_images())
    imageio.write_json(str(tmp_path / "m.json"), {"acc": np.float32(0.5), "n": np.int64(3)})
    with imageio.atomic_write(str(tmp_path / "t.txt"), mode="w") as f:
        f.write("hello")
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "m.json", "t.txt"]
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 0.5, "n": 3}
    assert (tmp_path / "t.txt").read_text() == "hello"
    # Permissions as a plain open() would give, not mkstemp's 0600.
    assert os.stat(tmp_path / "a.npz").st_mode & 0o777 == 0o666 & ~imageio._UMASK


def test_failed_write_leaves_nothing(tmp_path):
    def boom(f):
        f.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        imageio.atomic_write(str(tmp_path / "out.bin"), boom)
    assert os.listdir(tmp_path) == []
    # An existing file survives a failed overwrite untouched.
    (tmp_path / "keep.npz").write_bytes(b"old")
    with pytest.raises(TypeError):
        imageio.write_npz(str(tmp_path / "keep.npz"), x=object())  # would need pickle
    assert (tmp_path / "keep.npz").read_bytes() == b"old" and no_temp_files(tmp_path)

    def half_npz(f):
        f.write(b"PK\x03\x04")
        raise KeyboardInterrupt  # an interrupt mid-write is cleaned up too

    with pytest.raises(KeyboardInterrupt):
        imageio.atomic_write(str(tmp_path / "keep.npz"), half_npz)
    assert (tmp_path / "keep.npz").read_bytes() == b"old" and no_temp_files(tmp_path)
    with pytest.raises(RuntimeError), imageio.atomic_write(str(tmp_path / "c.json"), mode="w"):
        raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["keep.npz"]


def test_write_grid(tmp_path):
    a, b = rand_images(20, 8, 6, 3), rand_images(5, 8, 6, 1)
    p = tmp_path / "grid.png"
    imageio.write_grid(str(p), [a, b], pad=2, scale=2, max_cols=16)
    g = np.asarray(Image.open(p))
    assert g.shape == (2 * (16 + 2) + 2, 16 * (12 + 2) + 2, 3)  # 20 images cut to 16 columns
    assert np.array_equal(g[2:18:2, 2:14:2], a[0])  # top-left cell, un-scaled
    assert np.array_equal(g[20:36:2, 16:28:2], np.repeat(b[1], 3, -1))  # grey row as RGB
    assert (g[20:, 2 + 5 * 14 :] == 255).all()  # missing cells of the short row are blank
    imageio.write_grid(str(tmp_path / "grey.png"), [b[..., 0]], pad=0, scale=1)
    g = np.asarray(Image.open(tmp_path / "grey.png"))
    assert g.shape == (8, 30) and np.array_equal(g[:, 6:12], b[1, ..., 0])
    assert no_temp_files(tmp_path)
    with pytest.raises(PxdError):
        imageio.write_grid(str(tmp_path / "x.png"), [a, rand_images(2, 9, 6)])


def test_write_png_roundtrip(tmp_path):
    img = rand_images(1, c=1)[0]
    imageio.write_png(str(tmp_path / "sub" / "one.png"), img)  # parent folder is created
    x, _ = imageio.read_images(str(tmp_path / "sub" / "one.png"))
    assert np.array_equal(x[0], img)
