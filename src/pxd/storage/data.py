"""Dataset access: CIFAR-10 and Fashion-MNIST as uint8 NHWC arrays.

Specs follow tensorflow-datasets' split syntax: `cifar10:test`, `cifar10:test[:500]`,
`fashion_mnist:train[10%:]`, `cifar10:train[100:200]`, `cifar10:test[-50:]`.

Sources, in order:
1. a local folder: the `data_dir` argument, else env `PXD_DATA_DIR`; for Fashion-MNIST also
   `/usr/share/datasets/fashion-mnist/` (Debian package `dataset-fashion-mnist`).
   CIFAR-10 is read from `cifar-10-binary.tar.gz` or an extracted `cifar-10-batches-bin/`;
   Fashion-MNIST from the four official gzip'd idx files.
2. tensorflow-datasets (`tfds.data_source`, downloading if needed), for online users.

Decoded full splits from local files are cached per process, so repeated loads are cheap.
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import struct
import tarfile
import urllib.parse
import zlib
from dataclasses import dataclass

import numpy as np

from pxd.configs.datasets import DATASETS, DatasetInfo  # noqa: F401 (data.DATASETS)
from pxd.errors import PxdError

ENV_DATA_DIR = "PXD_DATA_DIR"
# Where Debian's `dataset-fashion-mnist` installs the idx files; env PXD_FASHION_MNIST_DIR
# moves it (tests use that to act as a machine without the package).
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
ENV_FASHION_DIR = "PXD_FASHION_MNIST_DIR"

CIFAR_TARBALL = "cifar-10-binary.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-bin"
_CIFAR_RECORD = 1 + 32 * 32 * 3  # label byte, then R, G, B planes (row-major)
_CIFAR_PER_BATCH = 10000
_CIFAR_MEMBERS = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_ALL_CIFAR_MEMBERS = _CIFAR_MEMBERS["train"] + _CIFAR_MEMBERS["test"]

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


# Spellings people type from the folder / archive names.
_ALIASES = {"cifar-10": "cifar10", "fashion-mnist": "fashion_mnist"}

_VALID_FORMS = (
    "use NAME:SPLIT or NAME:SPLIT[A:B] with NAME one of "
    + ", ".join(DATASETS)
    + ", SPLIT train or test, A and B optional integers or percents "
    "(e.g. cifar10:test, cifar10:test[:500], fashion_mnist:train[10%:], cifar10:test[-50:])"
)

# Full decoded splits, keyed by (file path(s), size, mtime, split).
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SplitSlice:
    """A tfds-style `[start:stop]` selection; bounds in examples, or percents if `percent`."""

    start: int | None = None
    stop: int | None = None
    percent: bool = False

    def resolve(self, n: int) -> tuple[int, int]:
        """Absolute (from, to) for a split of `n` examples, with tfds' rules.

        Percents round to the closest example; negative bounds count from the end;
        everything is clipped to [0, n].
        """

        def bound(b: int | None, default: int) -> int:
            if b is None:
                return default
            v = int(round(b * n / 100.0)) if self.percent else b
            if v < 0:
                v = max(n + v, 0)
            return min(v, n)

        return bound(self.start, 0), bound(self.stop, n)

    def to_slice(self, n: int) -> slice:
        """A Python slice selecting the same examples from a split of `n`."""
        return slice(*self.resolve(n))


_SPEC_RE = re.compile(r"^(?P<name>[^:\[\]]+)(?::(?P<split>[^\[\]]*)(?:\[(?P<sel>[^\]]*)\])?)?$")
_BOUND_RE = re.compile(r"^(-?\d+)(%?)$")


def _canonical_name(name: str) -> str | None:
    name = name.strip()
    if name in DATASETS:
        return name
    return _ALIASES.get(name)


def is_dataset_spec(s: str) -> bool:
    """True if `s` starts with a known dataset name followed by ':' or the end of the string."""
    head = s.strip().split(":", 1)[0]
    return _canonical_name(head) is not None and (head == s.strip() or ":" in s)


def parse_spec(spec: str) -> tuple[str, str, SplitSlice]:
    """Split `NAME:SPLIT[A:B]` into (canonical name, split, SplitSlice); PxdError if malformed."""
    m = _SPEC_RE.match(spec.strip())
    if m is None:
        raise PxdError(f"bad dataset spec {spec!r}: {_VALID_FORMS}")
    name = _canonical_name(m["name"])
    if name is None:
        raise PxdError(f"unknown dataset {m['name'].strip()!r} in {spec!r}: {_VALID_FORMS}")
    split = m["split"]
    if split is None:
        raise PxdError(f"dataset spec {spec!r} names no split: {_VALID_FORMS}")
    split = split.strip()
    if split not in DATASETS[name].splits:
        raise PxdError(f"unknown split {split!r} in {spec!r}: {_VALID_FORMS}")
    sel = m["sel"]
    if sel is None:
        return name, split, SplitSlice()
    parts = sel.split(":")
    if len(parts) != 2:
        raise PxdError(f"bad slice [{sel}] in {spec!r} (no step allowed): {_VALID_FORMS}")
    bounds: list[int | None] = []
    units: set[bool] = set()
    for p in parts:
        p = p.strip()
        if not p:
            bounds.append(None)
            continue
        b = _BOUND_RE.match(p)
        if b is None:
            raise PxdError(f"bad slice bound {p!r} in {spec!r}: {_VALID_FORMS}")
        v, pct = int(b[1]), bool(b[2])
        if pct and not -100 <= v <= 100:
            raise PxdError(f"percent bound {p!r} in {spec!r} is outside -100%..100%")
        bounds.append(v)
        units.add(pct)
    if len(units) > 1:
        raise PxdError(f"slice [{sel}] in {spec!r} mixes percents and counts; use one unit")
    return name, split, SplitSlice(bounds[0], bounds[1], percent=units == {True})


# --------------------------------------------------------------------------- loading


def load(spec: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset spec as (images uint8 (N,H,W,C), labels int32 (N,)).

    `data_dir` overrides env PXD_DATA_DIR. Returns fresh arrays (callers may modify them).
    """
    name, split, sel = parse_spec(spec)
    searched: list[str] = []
    full = _load_local(name, split, data_dir, searched)
    if full is not None:
        x, y = full
        s = sel.to_slice(len(y))
        x, y = x[s].copy(), y[s].copy()
    else:
        try:
            x, y = _load_tfds(name, split, sel)
        except PxdError:
            raise
        except Exception as e:  # anything from tfds (offline, missing deps, ...)
            raise PxdError(_not_found_message(name, data_dir, searched, e)) from e
    if len(y) == 0:
        raise PxdError(f"dataset spec {spec!r} selects no examples")
    return x, y


def _folders(data_dir: str | None) -> list[str]:
    d = data_dir if data_dir else os.environ.get(ENV_DATA_DIR) or None
    return [os.path.expanduser(d)] if d else []


def _load_local(
    name: str, split: str, data_dir: str | None, searched: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Full split from the first local source that has it, else None; appends to `searched`."""
    if name == "cifar10":
        for d in _folders(data_dir):
            tarball = os.path.join(d, CIFAR_TARBALL)
            searched.append(tarball)
            if os.path.isfile(tarball):
                return _cifar_from_tar(tarball, split)
            # An extracted archive, or `d` being the extracted folder itself.
            for folder in (os.path.join(d, CIFAR_FOLDER), d):
                if any(os.path.isfile(os.path.join(folder, m)) for m in _ALL_CIFAR_MEMBERS):
                    return _cifar_from_folder(folder, split)
            searched.append(os.path.join(d, CIFAR_FOLDER) + os.sep)
        return None
    if name == "fashion_mnist":
        dirs: list[str] = []
        for d in _folders(data_dir):
            dirs += [d, os.path.join(d, "fashion-mnist")]
        dirs.append(os.environ.get(ENV_FASHION_DIR) or FASHION_MNIST_SYSTEM_DIR)
        img_name, lbl_name = _FASHION_FILES[split]
        for d in dirs:
            searched.append(os.path.join(d, img_name))
            img, lbl = os.path.join(d, img_name), os.path.join(d, lbl_name)
            if os.path.isfile(img) or os.path.isfile(lbl):
                return _fashion_from_idx(img, lbl, split)
        return None
    raise AssertionError(name)  # parse_spec only yields known names


def _not_found_message(
    name: str, data_dir: str | None, searched: list[str], err: BaseException
) -> str:
    why = " ".join(f"{type(err).__name__}: {err}".split())  # one line, whatever tfds said
    if len(why) > 200:
        why = why[:197] + "..."
    where = "; ".join(searched)
    if not _folders(data_dir):
        where += f" (no --data-dir given and {ENV_DATA_DIR} unset)"
    if name == "cifar10":
        fix = (
            f"set --data-dir or {ENV_DATA_DIR} to a folder holding {CIFAR_TARBALL} "
            "(or its extracted cifar-10-batches-bin/)"
        )
    else:
        fix = (
            "run `apt-get install dataset-fashion-mnist`, or set --data-dir or "
            f"{ENV_DATA_DIR} to a folder holding the four Fashion-MNIST idx .gz files"
        )
    return (
        f"{name} not found locally (searched: {where}) and tensorflow-datasets failed ({why}); "
        f"fix: {fix}, or go online so tensorflow-datasets can download it"
    )


# --------------------------------------------------------------------------- CIFAR-10


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _cifar_decode(
    blobs: list[tuple[str, bytes | np.ndarray]], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR binary batches (in order) into (uint8 (N,32,32,3), int32 (N,))."""
    n = _CIFAR_PER_BATCH * len(blobs)
    x = np.empty((n, 32, 32, 3), np.uint8)
    y = np.empty((n,), np.int32)
    for i, (where, blob) in enumerate(blobs):
        raw = np.frombuffer(blob, np.uint8) if isinstance(blob, bytes) else blob
        if raw.size % _CIFAR_RECORD:
            raise PxdError(
                f"{where}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                "CIFAR-10 records (corrupt or not CIFAR-10 binary)"
            )
        rec = raw.reshape(-1, _CIFAR_RECORD)
        if len(rec) != _CIFAR_PER_BATCH:
            raise PxdError(
                f"{where}: {len(rec)} records, expected {_CIFAR_PER_BATCH} (truncated or altered)"
            )
        labels = rec[:, 0]
        if labels.max() > 9:
            raise PxdError(f"{where}: label {int(labels.max())} outside 0..9 (corrupt file)")
        sl = slice(i * _CIFAR_PER_BATCH, (i + 1) * _CIFAR_PER_BATCH)
        # Records store planes (C,H,W); assigning the transposed view writes NHWC in one copy.
        x[sl] = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y[sl] = labels
    assert n == DATASETS["cifar10"].splits[split]
    return x, y


def _cifar_from_tar(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    key = (*_file_key(path), split)
    if key in _CACHE:
        return _CACHE[key]
    # test_batch.bin sits at the end of the gzip stream, so any split costs a full
    # decompression: decode both splits in that one pass and cache them together.
    wanted = {s: _CIFAR_MEMBERS[s] for s in _CIFAR_MEMBERS}
    names = {m for ms in wanted.values() for m in ms}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tf:
            for member in tf:
                base = os.path.basename(member.name)
                if member.isfile() and base in names and base not in found:
                    f = tf.extractfile(member)
                    assert f is not None
                    found[base] = f.read()
                    if len(found) == len(names):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise PxdError(f"cannot read {path}: {' '.join(str(e).split())} (corrupt archive?)") from e
    missing = [m for m in wanted[split] if m not in found]
    if missing:
        raise PxdError(f"{path} lacks {', '.join(missing)} (not the CIFAR-10 binary archive?)")
    for s, members in wanted.items():
        if all(m in found for m in members):
            _CACHE[(*_file_key(path), s)] = _cifar_decode(
                [(f"{path}:{m}", found[m]) for m in members], s
            )
    return _CACHE[key]


def _cifar_from_folder(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths = [os.path.join(folder, m) for m in _CIFAR_MEMBERS[split]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise PxdError(f"incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}")
    key = (*(k for p in paths for k in _file_key(p)), split)
    if key in _CACHE:
        return _CACHE[key]
    try:
        blobs = [(p, np.fromfile(p, np.uint8)) for p in paths]
    except OSError as e:
        raise PxdError(f"cannot read CIFAR-10 batch in {folder}: {e}") from e
    out = _cifar_decode(blobs, split)
    _CACHE[key] = out
    return out


# --------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """Read a gzip'd idx file of unsigned bytes with the given magic number and rank."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise PxdError(f"cannot read {path}: {' '.join(str(e).split())} (corrupt gzip?)") from e
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise PxdError(f"{path}: too short for an idx header (corrupt file)")
    got_magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:head])
    if got_magic != magic:
        raise PxdError(f"{path}: idx magic number {got_magic}, expected {magic} (wrong file?)")
    expect = int(np.prod(dims))
    if len(raw) - head != expect:
        raise PxdError(
            f"{path}: {len(raw) - head} data bytes, header says {expect} (truncated or corrupt)"
        )
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def _fashion_from_idx(img_path: str, lbl_path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    for p in (img_path, lbl_path):
        if not os.path.isfile(p):
            raise PxdError(f"incomplete Fashion-MNIST folder: {p} is missing")
    key = (*_file_key(img_path), *_file_key(lbl_path), split)
    if key in _CACHE:
        return _CACHE[key]
    x = _read_idx(img_path, _IDX_IMAGES_MAGIC, 3)
    y = _read_idx(lbl_path, _IDX_LABELS_MAGIC, 1)
    n = DATASETS["fashion_mnist"].splits[split]
    if x.shape != (n, 28, 28):
        raise PxdError(f"{img_path}: images of shape {x.shape}, expected {(n, 28, 28)}")
    if y.shape != (n,):
        raise PxdError(f"{lbl_path}: {len(y)} labels, expected {n}")
    if y.max() > 9:
        raise PxdError(f"{lbl_path}: label {int(y.max())} outside 0..9 (corrupt file)")
    out = (x[..., None].copy(), y.astype(np.int32))
    _CACHE[key] = out
    return out


# --------------------------------------------------------------------------- tfds fallback


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    """Quick network probe: offline, tfds would otherwise retry downloads for minutes."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True  # a proxy may reach what we cannot; let tfds try
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tfds_source(name: str, split: str):
    """A random-access tfds source for a full split (prepared copy first, else download)."""
    import tensorflow_datasets as tfds  # heavy, and only needed without local files

    info = DATASETS[name]
    try:
        return tfds.data_source(info.tfds_name, split=split, download=False)
    except Exception:
        pass  # not prepared in ~/tensorflow_datasets yet
    if not _can_reach(info.download_url):
        host = urllib.parse.urlsplit(info.download_url).hostname
        raise ConnectionError(f"offline: cannot reach {host} to download {name}")
    return tfds.data_source(info.tfds_name, split=split, download=True)


def _from_tfds_records(source, name: str, sel: SplitSlice) -> tuple[np.ndarray, np.ndarray]:
    """Convert the selected records of a tfds source ({'image','label'} dicts) to arrays."""
    info = DATASETS[name]
    start, stop = sel.resolve(len(source))
    n = max(stop - start, 0)
    x = np.empty((n, *info.shape), np.uint8)
    y = np.empty((n,), np.int32)
    for i in range(n):
        rec = source[start + i]
        img = np.asarray(rec["image"], np.uint8)
        x[i] = img.reshape(info.shape)
        y[i] = int(rec["label"])
    return x, y


def _load_tfds(name: str, split: str, sel: SplitSlice) -> tuple[np.ndarray, np.ndarray]:
    """Selected examples via tensorflow-datasets; raises (anything) when unavailable."""
    return _from_tfds_records(_tfds_source(name, split), name, sel)
