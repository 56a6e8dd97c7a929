"""User image files in and out: .npz/.npy arrays, PNG/JPEG files and folders (written
through the atomic writer of files.py).

Everything read comes back as uint8 NHWC with C in {1, 3}; anything else is a PxdError with a
one-line message naming the file and what is wrong.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from pxd.errors import PxdError
from pxd.storage.files import (  # noqa: F401 (imageio.atomic_write etc., as before)
    _UMASK,
    atomic_open,
    atomic_path,
    atomic_write,
    write_json,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_KEYS = ("x", "images")
LABEL_KEYS = ("y", "labels")


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# --------------------------------------------------------------------------- reading


def read_images(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Read images (uint8 (N,H,W,C), C in {1,3}) and labels (int32 (N,) or None) from `path`.

    `path` is a .npz (array `x` or `images`, optional `y` or `labels`), a .npy, one PNG/JPEG,
    or a folder of PNG/JPEG files taken in name order. Rank-3 arrays are (N,H,W) grey.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PxdError(f"no such file or folder: {path}")
    if os.path.isdir(path):
        return _read_folder(path), None
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".npy":
        return _check_array(_np_load(path), path), None
    if suffix in IMAGE_SUFFIXES:
        return _read_picture(path)[None], None
    raise PxdError(
        f"{path}: unsupported file type {suffix or '(none)'}; use .npz, .npy, .png, .jpg "
        "or a folder of PNG/JPEG files"
    )


_PICKLE_MAGIC = (b"\x80",)  # protocol 2+ pickles start with PROTO
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"


def _np_load(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise PxdError(f"{path}: cannot read ({_one_line(e)})") from e
    if not head:
        raise PxdError(f"{path}: empty file; write it with numpy.save or numpy.savez")
    if not (head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGIC)
            or head.startswith(_PICKLE_MAGIC)):
        kind = "text" if _looks_like_text(head) else "data"
        raise PxdError(f"{path}: {kind}, not a numpy .npy/.npz file; write it with "
                       "numpy.save or numpy.savez")
    _check_sizes(path, head)
    try:
        return np.load(path, allow_pickle=False)
    except MemoryError:
        raise PxdError(f"{path}: too large to load into memory") from None
    except ValueError as e:
        if "pickle" in str(e):  # object arrays / pickles are refused, never executed
            raise PxdError(
                f"{path}: holds Python objects (pickled data), not a numeric array; "
                "save a plain uint8 array instead"
            ) from e
        raise PxdError(f"{path}: not a readable numpy file ({_one_line(e)})") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise PxdError(f"{path}: not a readable numpy file ({_one_line(e)})") from e


def _npy_claim(f, available: int) -> tuple[tuple, int] | None:
    """(shape, bytes of data) a .npy header read from `f` claims, if they exceed the
    `available` bytes after it; None when they fit (or the header is one numpy reports)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    except Exception:  # a malformed header: np.load says what is wrong with it
        return None
    if dtype.hasobject:
        return None  # refused as pickled data by np.load
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    return (shape, need) if need > available - f.tell() else None


def _check_sizes(path: str, head: bytes) -> None:
    """Refuse an array whose header claims more data than the file holds (a header can
    claim 10^12 images in a few bytes), before numpy allocates for it."""
    try:
        if head.startswith(_NPY_MAGIC):
            with open(path, "rb") as f:
                bad = [("", _npy_claim(f, os.path.getsize(path)))]
        elif head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as z:
                bad = []
                for info in z.infolist():
                    if info.filename.endswith(".npy"):
                        with z.open(info) as f:
                            bad.append((f"[{info.filename[:-4]}]",
                                        _npy_claim(f, info.file_size)))
        else:
            return
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError):
        return  # unreadable: np.load below gives the one-line error
    for member, claim in bad:
        if claim is not None:
            shape, need = claim
            raise PxdError(f"{path}{member}: header claims shape {tuple(shape)} ({need:,} "
                           "bytes), more than the file holds; the file is truncated or "
                           "damaged, write it again with numpy.save or numpy.savez")


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 32 or b in b"\t\n\r" for b in head)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    z = _np_load(path)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise PxdError(f"{path}: not an .npz archive")
    with z:
        keys = list(z.files)
        xk = next((k for k in ARRAY_KEYS if k in keys), None)
        if xk is None:
            raise PxdError(
                f"{path}: no image array named 'x' or 'images' (found: {', '.join(keys) or 'none'})"
            )
        yk = next((k for k in LABEL_KEYS if k in keys), None)
        # Members are decoded lazily, so corrupt or pickled members surface here.
        try:
            x = z[xk]
            y = z[yk] if yk is not None else None
        except ValueError as e:
            if "pickle" in str(e):
                raise PxdError(
                    f"{path}: array holds Python objects (pickled data), not numbers"
                ) from e
            raise PxdError(f"{path}: corrupt array in archive ({_one_line(e)})") from e
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise PxdError(f"{path}: corrupt archive ({_one_line(e)})") from e
        except MemoryError:
            raise PxdError(f"{path}[{xk}]: too large to load into memory") from None
    x = _check_array(x, f"{path}[{xk}]")
    if y is not None:
        y = _check_labels(y, len(x), f"{path}[{yk}]")
    return x, y


def _check_array(a: Any, where: str) -> np.ndarray:
    """Validate an array of images and return it as C-contiguous uint8 NHWC."""
    if not isinstance(a, np.ndarray):
        raise PxdError(f"{where}: not an array")
    if a.ndim == 3:
        if a.shape[-1] in (1, 3):
            raise PxdError(
                f"{where}: shape {a.shape} looks like one (H,W,C) image; add a batch axis "
                "(e.g. x[None]) to get (1,H,W,C), or give (N,H,W) for grey images"
            )
        a = a[..., None]  # (N,H,W) grey
    if a.ndim != 4:
        raise PxdError(
            f"{where}: array of shape {a.shape}; expected (N,H,W) grey or (N,H,W,C) with C 1 or 3"
        )
    if a.shape[-1] not in (1, 3):
        raise PxdError(f"{where}: {a.shape[-1]} channels in shape {a.shape}; expected 1 or 3")
    if 0 in a.shape:
        raise PxdError(f"{where}: no images (shape {a.shape})")
    return np.ascontiguousarray(to_uint8(a, where))


def to_uint8(a: np.ndarray, where: str = "images") -> np.ndarray:
    """Return `a` as uint8 if every value is an integer in 0..255 (any numeric dtype), else raise.

    Float arrays of whole numbers are accepted; [0,1]-scaled floats are not, since silently
    rescaling would guess wrong half the time.
    """
    if a.dtype == np.uint8:
        return a
    kind = a.dtype.kind
    if kind not in "uif":
        raise PxdError(f"{where}: dtype {a.dtype} is not a numeric pixel type; use uint8")
    if a.size == 0:
        return a.astype(np.uint8)
    if kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            bad = a[~finite].flat[0]
            raise PxdError(f"{where}: contains {bad} (NaN/inf); pixels must be integers 0..255")
        frac = a != np.round(a)
        if frac.any():
            raise PxdError(
                f"{where}: non-integer pixel value {float(a[frac].flat[0]):g}; pixels must be "
                "integers 0..255 (multiply [0,1] floats by 255 and round first)"
            )
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 255:
        bad = lo if lo < 0 else hi
        raise PxdError(f"{where}: pixel value {bad} outside 0..255")
    return a.astype(np.uint8)


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise PxdError(f"{where}: labels of shape {y.shape}; expected one integer per image ({n},)")
    if len(y) != n:
        raise PxdError(f"{where}: {len(y)} labels for {n} images")
    if y.dtype.kind not in "uif":
        raise PxdError(f"{where}: labels of dtype {y.dtype}; expected integers")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise PxdError(f"{where}: labels must be whole numbers")
    if len(y) and (y.min() < 0 or y.max() > np.iinfo(np.int32).max):
        raise PxdError(f"{where}: label {y.min() if y.min() < 0 else y.max()} is out of range")
    return y.astype(np.int32)


def _read_picture(path: str) -> np.ndarray:
    """One PNG/JPEG as uint8 (H,W,C), C = 1 for grey, 3 otherwise (alpha dropped)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncation is caught here
            if im.mode in ("1", "L", "LA"):
                im = im.convert("L")
            elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                pass  # high-depth grey: kept as numbers, range-checked below
            elif im.mode != "RGB":
                im = im.convert("RGB")  # palette, RGBA, CMYK, YCbCr, ...
            a = np.asarray(im)
    except Image.DecompressionBombError as e:
        raise PxdError(f"{path}: image too large ({_one_line(e)})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise PxdError(f"{path}: unreadable or corrupt image ({_one_line(e)})") from e
    if a.ndim == 2:
        a = a[..., None]
    if 0 in a.shape:
        raise PxdError(f"{path}: empty image")
    return to_uint8(a, path)


def _read_folder(folder: str) -> np.ndarray:
    names = sorted(
        n
        for n in os.listdir(folder)
        if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise PxdError(f"{folder}: folder holds no PNG/JPEG images")
    images = []
    for n in names:
        p = os.path.join(folder, n)
        a = _read_picture(p)
        if images and a.shape[:2] != images[0].shape[:2]:
            raise PxdError(
                f"{p}: size {a.shape[1]}x{a.shape[0]} differs from {names[0]} "
                f"({images[0].shape[1]}x{images[0].shape[0]}); all images must be one size"
            )
        images.append(a)
    if any(a.shape[2] == 3 for a in images):  # mixed grey and colour: promote grey to RGB
        images = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in images]
    return np.stack(images)


# --------------------------------------------------------------------------- outputs


def default_output(input_spec: str, tag: str) -> str:
    """Where a command writes when --out is not given: `in.npz` -> `in.TAG.npz` beside it,
    a folder `imgs/` -> `imgs.TAG.npz` beside it, a dataset spec -> `cifar10_test_4.TAG.npz`
    in the current folder."""
    import re

    spec = os.fspath(input_spec)
    if os.path.exists(spec):
        p = os.path.normpath(spec)
        if os.path.isfile(p):
            p = os.path.splitext(p)[0]
        return f"{p}.{tag}.npz"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "images"
    return f"{stem}.{tag}.npz"


def check_writable(path: str, option: str = "--out", *, folder: bool = False) -> None:
    """Raise a one-line PxdError now, before any work, if `path` cannot be written.

    Tries a real file in the nearest existing folder: permission bits say nothing for root,
    and read-only file systems refuse root too."""
    p = os.path.abspath(os.fspath(path))
    if folder and os.path.exists(p) and not os.path.isdir(p):
        raise PxdError(f"{option} {path}: exists and is not a folder; choose a folder path")
    if not folder and os.path.isdir(p):
        raise PxdError(f"{option} {path}: is a folder; give a file name")
    anc = p if folder else os.path.dirname(p)
    while not os.path.exists(anc):
        anc = os.path.dirname(anc)
    if not os.path.isdir(anc):
        raise PxdError(f"{option} {path}: {anc} is a file, not a folder; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(dir=anc, prefix=".pxd-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PxdError(f"{option} {path}: cannot write in {anc} "
                       f"({e.strerror or _one_line(e)}); choose a writable location") from e


def write_npz(path: str, **arrays: Any) -> None:
    """Save numeric arrays to an uncompressed .npz, atomically (never a partial file)."""
    if not os.fspath(path).endswith(".npz"):
        raise PxdError(f"{path}: output arrays file must end in .npz")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.kind == "O":  # would be pickled, and read_images never unpickles
            raise TypeError(f"write_npz: array {k!r} has dtype object; save numeric arrays")
    # Writing to a file object: numpy then never appends '.npz' to the temp name.
    atomic_write(path, lambda f: np.savez(f, **arrays))


# --------------------------------------------------------------------------- pictures out


def _as_nhwc(a: Any, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise PxdError(f"{where}: shape {a.shape}; expected (N,H,W) or (N,H,W,C) with C 1 or 3")
    return to_uint8(a, where)


def _save_png(path: str, img: np.ndarray) -> None:
    from PIL import Image

    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    atomic_write(path, lambda f: pil.save(f, format="PNG"))


def write_png(path: str, image: np.ndarray) -> None:
    """Save one uint8 image, (H,W), (H,W,1) or (H,W,3), as PNG, atomically."""
    _save_png(path, _as_nhwc(np.asarray(image)[None], path)[0])


def write_image_folder(folder: str, images: np.ndarray, prefix: str = "img") -> list[str]:
    """Save uint8 images (N,H,W[,C]) as `prefix_00000.png`, ... (name order = index order).

    `read_images(folder)` reads them back in the same order. Returns the file paths.
    """
    x = _as_nhwc(images, folder)
    os.makedirs(folder, exist_ok=True)
    width = max(5, len(str(len(x) - 1)))
    paths = []
    for i, img in enumerate(x):
        p = os.path.join(folder, f"{prefix}_{i:0{width}d}.png")
        _save_png(p, img)
        paths.append(p)
    return paths


def write_grid(
    path: str,
    rows: list[np.ndarray],
    pad: int = 2,
    scale: int = 2,
    max_cols: int = 16,
    pad_value: int = 255,
) -> None:
    """Save a PNG grid, one image row per entry of `rows`, atomically.

    rows: uint8 arrays (N,H,W,C) (or (N,H,W)) sharing H and W, e.g. inputs above their
    purified versions. At most `max_cols` images per row (extra ones are not shown); shorter
    rows leave blank cells. Grey rows are shown as grey; mixed with colour, all become RGB.
    `scale` enlarges each pixel to scale x scale (nearest neighbour); `pad` is pixels of
    `pad_value` around every cell, after scaling.
    """
    if not rows:
        raise PxdError(f"{path}: nothing to draw (no rows)")
    if scale < 1 or pad < 0 or max_cols < 1:
        raise PxdError(f"{path}: need scale >= 1, pad >= 0, max_cols >= 1")
    arrs = [_as_nhwc(r, f"{path} row {i}")[:max_cols] for i, r in enumerate(rows)]
    h, w = arrs[0].shape[1:3]
    for i, a in enumerate(arrs):
        if a.shape[1:3] != (h, w):
            raise PxdError(
                f"{path}: row {i} images are {a.shape[2]}x{a.shape[1]}, row 0's are {w}x{h}"
            )
    c = 3 if any(a.shape[-1] == 3 for a in arrs) else 1
    cols = max(1, max(len(a) for a in arrs))
    ch, cw = h * scale, w * scale
    grid = np.full((len(arrs) * (ch + pad) + pad, cols * (cw + pad) + pad, c), pad_value, np.uint8)
    for r, a in enumerate(arrs):
        if c == 3 and a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        big = a.repeat(scale, axis=1).repeat(scale, axis=2)
        for k, img in enumerate(big):
            y0, x0 = pad + r * (ch + pad), pad + k * (cw + pad)
            grid[y0 : y0 + ch, x0 : x0 + cw] = img
    _save_png(path, grid)
