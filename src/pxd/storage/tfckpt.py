"""Read float tensors from TensorFlow 1 checkpoints without TensorFlow.

Two formats, both an SSTable (the leveldb table layout TensorFlow keeps in
tensorflow/core/lib/io/table) of protobuf values:
- V1, one file: key "" holds a SavedTensorSlices `meta` (names, shapes, dtypes); every other
  key (an OrderedCode of the name and slice) holds a SavedTensorSlices whose `data` is a
  TensorProto, floats in `float_val` or `tensor_content`.
- V2, `PREFIX.index` + `PREFIX.data-NNNNN-of-MMMMM`: the index's key "" is a
  BundleHeaderProto (shard count, endianness), each other key a tensor name whose
  BundleEntryProto gives dtype, shape, shard, offset and size of raw little-endian bytes.
Both writers store blocks uncompressed; a compressed block is refused with a message.
Only the entries' keys are walked at open; a tensor's bytes are read when asked for (the
file is memory-mapped), so reading 4% of a file costs about 4% of its size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct

import numpy as np

from pxd.errors import PxdError

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 9: np.dtype("<i8")}
_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


class CheckpointError(PxdError):
    """A file that is not a readable TensorFlow checkpoint."""


def _varint(buf, p: int, end: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if p >= end or shift > 63:
            raise CheckpointError("bad varint")
        b = buf[p]
        p += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, p
        shift += 7


def _fields(buf, p: int, end: int):
    """Protobuf wire fields of buf[p:end]: (number, wire type, value); length-delimited
    values are (start, stop) offsets into buf."""
    while p < end:
        key, p = _varint(buf, p, end)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, p = _varint(buf, p, end)
        elif wt == 2:
            n, p = _varint(buf, p, end)
            val = (p, p + n)
            p += n
        elif wt == 5:
            val = buf[p : p + 4]
            p += 4
        elif wt == 1:
            val = buf[p : p + 8]
            p += 8
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wt}")
        if p > end:
            raise CheckpointError("protobuf field runs past its message")
        yield num, wt, val


def _message(buf, span) -> dict[int, list]:
    out: dict[int, list] = {}
    for num, _, val in _fields(buf, *span):
        out.setdefault(num, []).append(val)
    return out


def _shape(buf, span) -> tuple[int, ...]:
    m = _message(buf, span)
    if m.get(3, [0])[0]:
        raise CheckpointError("a tensor of unknown rank")
    return tuple(_message(buf, d).get(1, [0])[0] for d in m.get(2, []))


def _table(buf, what: str):
    """(key bytes, value (start, stop)) of every entry of an uncompressed SSTable."""
    size = len(buf)
    if size < _FOOTER or struct.unpack("<Q", buf[size - 8 :])[0] != _MAGIC:
        raise CheckpointError(f"{what} is not a TensorFlow checkpoint table (truncated, or "
                              "another kind of file)")
    p = size - _FOOTER
    for _ in range(2):  # metaindex handle, then the index's
        off, p = _varint(buf, p, size)
        n, p = _varint(buf, p, size)
    for _, (start, stop) in _block_entries(buf, off, n, what):
        hoff, q = _varint(buf, start, stop)
        hn, _ = _varint(buf, q, stop)
        yield from _block_entries(buf, hoff, hn, what)


def _block_entries(buf, off: int, n: int, what: str):
    if off + n + 5 > len(buf) - _FOOTER or n < 4:
        raise CheckpointError(f"{what} is truncated (a block runs past the end)")
    if buf[off + n] != 0:
        raise CheckpointError(f"{what} has compressed blocks (type {buf[off + n]}); TensorFlow "
                              "writes checkpoints uncompressed and pxd reads only those")
    restarts = struct.unpack_from("<I", buf, off + n - 4)[0]
    end = off + n - 4 - 4 * restarts
    if end < off:
        raise CheckpointError(f"{what} has a corrupt block")
    p, key = off, b""
    while p < end:
        shared, p = _varint(buf, p, end)
        unshared, p = _varint(buf, p, end)
        vlen, p = _varint(buf, p, end)
        key = key[:shared] + bytes(buf[p : p + unshared])
        p += unshared
        if p + vlen > end:
            raise CheckpointError(f"{what} has a corrupt block")
        yield key, (p, p + vlen)
        p += vlen


def _map(path: str):
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty")
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _v1_name(key: bytes) -> str:
    """The tensor name in a V1 slice key: OrderedCode number 0, then the escaped string."""
    if not key or key[0] != 0:
        raise CheckpointError("unexpected V1 entry key")
    out, p = bytearray(), 1
    while p + 1 < len(key):
        a, b = key[p], key[p + 1]
        if a == 0 and b == 1:
            return out.decode("utf-8", "replace")
        if a in (0, 0xFF):
            out.append(a)
            p += 2
        else:
            out.append(a)
            p += 1
    raise CheckpointError("unexpected V1 entry key")


@contextlib.contextmanager
def _as_corrupt(path: str):
    """A field of the wrong type or a missing one deep in the parser: one line naming the
    file, not a traceback (the checks above name the common faults more precisely)."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError, struct.error) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}: {e})") from None


class Checkpoint:
    """Lazy reader: `shapes` maps names to shapes; `read(name)` returns a float32 array."""

    def __init__(self, path: str):
        self.path = path
        self.format, self.files = _locate(path)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, int] = {}
        self._where: dict[str, tuple] = {}
        with _as_corrupt(path):
            (self._open_v1 if self.format == "V1" else self._open_v2)()

    def _open_v1(self):
        path = self.files[0]
        buf = self._buf = _map(path)
        for key, span in _table(buf, path):
            if key == b"":
                meta = _message(buf, span).get(1)
                if not meta:
                    raise CheckpointError(f"{path}: V1 header without tensor metadata")
                for t in _message(buf, meta[0]).get(1, []):
                    m = _message(buf, t)
                    name = bytes(buf[slice(*m[1][0])]).decode()
                    self.shapes[name] = _shape(buf, m[2][0]) if 2 in m else ()
                    self._dtype[name] = m.get(3, [0])[0]
                    for sl in m.get(4, []):
                        if any(2 in _message(buf, e) for e in _message(buf, sl).get(1, [])):
                            raise CheckpointError(f"{path}: {name} is partitioned into "
                                                  "slices; pxd reads whole tensors only")
                continue
            name = _v1_name(key)
            if name in self._where:
                raise CheckpointError(f"{path}: {name} is stored in several slices")
            self._where[name] = span
        if not self.shapes and not self._where:
            raise CheckpointError(f"{path} holds no tensors")
        missing = sorted(set(self.shapes) - set(self._where))
        if missing:
            raise CheckpointError(f"{path} is truncated: no data for {missing[0]}")

    def _open_v2(self):
        index = self.files[0]
        buf = _map(index)
        header = None
        for key, span in _table(buf, index):
            if key == b"":
                header = _message(buf, span)
                continue
            m = _message(buf, span)
            name = key.decode("utf-8", "replace")
            if 7 in m:
                raise CheckpointError(f"{index}: {name} is partitioned into slices; pxd "
                                      "reads whole tensors only")
            self.shapes[name] = _shape(buf, m[2][0]) if 2 in m else ()
            self._dtype[name] = m.get(1, [0])[0]
            self._where[name] = (m.get(3, [0])[0], m.get(4, [0])[0], m.get(5, [0])[0])
        if header is None:
            raise CheckpointError(f"{index} has no V2 header")
        if header.get(2, [0])[0] != 0:
            raise CheckpointError(f"{index}: big-endian checkpoints are not supported")
        shards = header.get(1, [1])[0]
        prefix = index[: -len(".index")]
        self.files = [index] + [f"{prefix}.data-{i:05d}-of-{shards:05d}" for i in range(shards)]
        sizes = []
        for f in self.files[1:]:
            if not os.path.isfile(f):
                raise CheckpointError(f"{prefix}: data shard {os.path.basename(f)} is missing")
            sizes.append(os.path.getsize(f))
        for name, (shard, off, n) in self._where.items():
            if shard >= shards or off + n > sizes[shard]:
                raise CheckpointError(f"{prefix}: data shard {shard} is truncated (no bytes "
                                      f"for {name})")
        self._bufs: dict[int, mmap.mmap] = {}

    def read(self, name: str) -> np.ndarray:
        with _as_corrupt(self.path):
            return self._read(name)

    def _read(self, name: str) -> np.ndarray:
        shape, code = self.shapes[name], self._dtype[name]
        if code not in _DTYPES:
            raise CheckpointError(f"{self.path}: {name} has unsupported dtype {code}")
        dt, count = _DTYPES[code], int(np.prod(shape, dtype=np.int64))
        if self.format == "V2":
            shard, off, n = self._where[name]
            if n != count * dt.itemsize:
                raise CheckpointError(f"{self.path}: {name} has {n} bytes for shape {shape}")
            if shard not in self._bufs:
                self._bufs[shard] = _map(self.files[1 + shard])
            arr = np.frombuffer(self._bufs[shard], dt, count, off)
        else:
            arr = self._read_v1(name, dt, count)
        return np.array(arr, np.float32).reshape(shape)

    def _read_v1(self, name: str, dt: np.dtype, count: int) -> np.ndarray:
        buf, what = self._buf, f"{self.path}: {name}"
        data = _message(buf, self._where[name]).get(2)
        tensor = _message(buf, data[0]).get(3) if data else None
        if not tensor:
            raise CheckpointError(f"{what}: entry without data")
        m = _message(buf, tensor[0])
        field = {1: 5, 2: 6, 3: 7, 9: 10}[self._dtype[name]]
        if 4 in m:  # tensor_content: raw bytes
            s, e = m[4][0]
            arr = np.frombuffer(buf, dt, (e - s) // dt.itemsize, s)
        elif m.get(field) and isinstance(m[field][0], tuple) and dt.kind == "f":  # packed
            s, e = m[field][0]
            arr = np.frombuffer(buf, dt, (e - s) // dt.itemsize, s)
        else:  # unpacked scalars (small tensors)
            vals = m.get(field, [])
            if dt.kind == "f":
                arr = np.array([struct.unpack("<f" if dt.itemsize == 4 else "<d", bytes(v))[0]
                                for v in vals], dt)
            else:
                arr = np.array(vals, np.int64)
        if arr.size == 1 and count > 1:  # TensorProto's convention: one value fills all
            arr = np.full(count, arr[0], dt)
        if arr.size != count:
            raise CheckpointError(f"{what} holds {arr.size} values for {count}")
        return arr


def _locate(path: str) -> tuple[str, list[str]]:
    """The format and files of a checkpoint given as a V1 file, a V2 prefix (or its .index
    or a data shard), or a folder holding one checkpoint."""
    if os.path.isdir(path):
        return _locate(_in_folder(path))
    if path.endswith(".index") and os.path.isfile(path):
        return "V2", [path]
    m = _SHARD.search(path)
    if m and os.path.isfile(path):
        return _locate(path[: m.start()])
    if os.path.isfile(path + ".index"):
        return "V2", [path + ".index"]
    if os.path.isfile(path):
        return "V1", [path]
    near = sorted(f for f in _listdir(os.path.dirname(path) or ".")
                  if f.startswith(os.path.basename(path)))
    hint = f" (found {', '.join(near[:3])})" if near else ""
    raise CheckpointError(f"no checkpoint at {path}: neither a file nor a V2 prefix with "
                          f"{os.path.basename(path)}.index{hint}")


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def _in_folder(folder: str) -> str:
    """The checkpoint a folder holds: its `checkpoint` state file's, else its only one."""
    state = os.path.join(folder, "checkpoint")
    if os.path.isfile(state):
        with open(state, errors="replace") as f:
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"', f.read(), re.M)
        if m:
            p = m.group(1)
            return p if os.path.isabs(p) else os.path.join(folder, p)
    names = _listdir(folder)
    found = sorted({n[: -len(".index")] for n in names if n.endswith(".index")}
                   | {n for n in names if n.endswith(".ckpt")})
    if len(found) != 1:
        what = "no checkpoint" if not found else f"{len(found)} checkpoints"
        raise CheckpointError(f"{folder} holds {what} (a V1 .ckpt file or a V2 .index with "
                              "its .data shards); give the checkpoint's path")
    return os.path.join(folder, found[0])
