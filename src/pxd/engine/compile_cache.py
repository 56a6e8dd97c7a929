"""JAX's persistent compilation cache, where it is safe.

A pxd command is a new process, and on CPU most of a short command's time is XLA compiling
the same programs as last time (docs/BENCHMARKS.md: a first BIM call 13 s cold, 5.5 s with
this cache, 4.2–5.5 s repeated). JAX can keep compiled programs on disk; the CLI turns
that on unless `PXD_COMPILATION_CACHE=off`, the API only when that variable asks for it (a
library should not write to a user's home unasked). It was opt-in for a while: a Ctrl-C in
`train-density`'s start-up test looked lost with it on (exit 0). With cached programs the
test's short run could end before its signal was sent (docs/BENCHMARKS.md, 2026-12-06).

Safe means:
- One folder per runtime and machine kind: the key of JAX's cache covers the program, the
  flags and the jax version, but an XLA:CPU program is built for the host's instruction set,
  and a cache shared over a network home or left from another jaxlib has crashed loaders
  (jax-ml/jax#38445 and users' reports). So the folder's name is a digest of the jax and
  jaxlib versions, the machine, the CPU model and its feature flags.
- Results are the same bits: a hit loads the program that the same compiler built from
  the same input.
- A damaged or half-written entry (JAX writes entries in place) fails to decompress; JAX
  then compiles as if it were absent and warns, and the CLI keeps warnings off the
  terminal, so stderr stays one line. A folder pxd cannot write is skipped silently.

`PXD_COMPILATION_CACHE`: `off` (or `0`), no cache; unset (the CLI only), `on` or `1` uses
`$XDG_CACHE_HOME/pxd/xla` (else `~/.cache/pxd/xla`); any other value is the folder to use.
"""

from __future__ import annotations

import hashlib
import os
import platform

ENV = "PXD_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no")


def _cpu_fingerprint() -> str:
    """The CPU model and feature flags (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags",
                                                                  "Features", "CPU part")]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor()


def folder(base: str) -> str:
    """`base`/<digest of runtime and machine>: the only entries this process may load."""
    import jax
    import jaxlib

    ident = "\n".join([jax.__version__, getattr(jaxlib, "__version__", "?"),
                       platform.machine(), platform.system(), _cpu_fingerprint()])
    return os.path.join(base, hashlib.sha256(ident.encode()).hexdigest()[:16])


def default_base() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "pxd", "xla")


def enable(*, default_on: bool) -> str | None:
    """Point JAX's persistent cache at this machine's folder; returns it, or None when off,
    not asked for (unset and not `default_on`: the API) or the folder is not writable."""
    raw = os.environ.get(ENV, "").strip()
    if raw.lower() in OFF or (not raw and not default_on):
        return None
    base = default_base() if raw in ("", "on", "1") else os.path.abspath(raw)
    path = folder(base)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            return None
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    # pxd's host loops compile many small programs of ~0.1-1 s each: keep those too
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path
