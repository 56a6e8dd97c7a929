"""Every file pxd writes goes through one atomic writer; JSON is read and written here.

`atomic_path` yields a temporary path beside the target; on success the file is fsynced,
given the permissions a plain open() would give, renamed over the target and the folder
fsynced, so a process killed at any moment leaves the old file or the new one, never part
of one. `atomic_open`/`atomic_write`/`write_text`/`write_bytes`/`write_json` are built on it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from pxd.configs.base import to_json
from pxd.errors import PxdError

# Several cooperating processes write their results once: only the primary writes.
_PRIMARY = True


def set_primary(primary: bool) -> None:
    """Called once by `engine.devices.setup`: False on processes other than process 0."""
    global _PRIMARY
    _PRIMARY = bool(primary)


def primary() -> bool:
    """Whether this process writes files (the only process, or process 0 of several)."""
    return _PRIMARY


# mkstemp creates files 0600; give outputs the permissions a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    The temp name keeps `path`'s suffix (so e.g. numpy/PIL infer the format and append
    nothing). On an exception the temp file is removed and `path` is left untouched.
    """
    path = os.fspath(path)
    if not _PRIMARY:  # another process writes this file: write to a scratch file, drop it
        with tempfile.TemporaryDirectory() as scratch:
            yield os.path.join(scratch, os.path.basename(path))
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=parent, prefix=f".{base}.", suffix=".tmp" + os.path.splitext(base)[1]
        )
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise PxdError(no_space_message(path, e)) from None
        raise
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush whatever wrote by name to disk before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise PxdError(no_space_message(path, e)) from None
        raise
    _fsync_dir(parent)


# A full disk, a quota, a file size limit (ulimit -f) or a read-only file system: one
# line naming the file (numpy and friends raise these without a file name).
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def no_space_message(path: str, e: OSError) -> str:
    return (f"cannot write {path}: {e.strerror or e} (free some space or raise the file "
            "size limit, then rerun)")


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when it ends (the handler then runs as usual),
    for saves that a half-way stop would leave broken; a no-op off the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got and callable(old):
            old(signal.SIGINT, None)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """`with atomic_open(p, "w") as f:` writes `p` all-or-nothing (see `atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def atomic_write(path: str, write_fn: Callable[[IO], Any] | None = None, mode: str = "wb"):
    """Write `path` all-or-nothing: `write_fn(f)` fills an open temp file that then replaces it.

    Without `write_fn` this is `atomic_open(path, mode)`, for use as a context manager.
    """
    if write_fn is None:
        return atomic_open(path, mode)
    with atomic_open(path, mode) as f:
        write_fn(f)
    return None


def _fsync_dir(d: str) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_json(path: str, obj: Any, indent: int = 2, *, sort_keys: bool = False,
               newline: bool = True) -> None:
    """Write `obj` as JSON (numpy scalars/arrays allowed), atomically; reports end in a
    newline, run metadata (meta.json, card.json) keeps its historical form: sorted keys, no
    final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default)
    write_text(path, text + "\n" if newline else text)


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_bytes(path: str, blob: bytes) -> None:
    atomic_write(path, lambda f: f.write(blob))


def read_json(path: str) -> dict:
    """The JSON object at `path`, or {} when there is no file; a one-line PxdError when it
    is unreadable or not an object."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PxdError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(obj, dict):
        raise PxdError(f"{path}: expected a JSON object")
    return obj


def write_config(folder: str, cfg: Any) -> None:
    """A command's resolved config as folder/config.json (sorted keys, as every run's)."""
    os.makedirs(folder, exist_ok=True)
    write_text(os.path.join(folder, "config.json"), to_json(cfg))
