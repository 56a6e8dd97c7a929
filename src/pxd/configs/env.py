"""Numbers pxd (and JAX) read from environment variables, checked where they enter: a bad
value is a one-line error naming the variable, before JAX is imported (JAX itself parses
JAX_NUM_CPU_DEVICES at import and would fail with a traceback)."""

from __future__ import annotations

import math
import os

from pxd.errors import PxdError

# name: (kind, least value, what it is for)
NUMERIC_ENV = {
    "JAX_NUM_CPU_DEVICES": (int, 1, "virtual CPU devices"),
    "PXD_NUM_CPU_DEVICES": (int, 1, "virtual CPU devices"),
    "PXD_PROGRESS_SECONDS": (float, 0, "seconds between progress lines"),
}


def env_number(name: str, default=None):
    """The variable's value as its kind (NUMERIC_ENV), `default` when unset; anything
    else (text, NaN, inf, below the least value) is a PxdError saying what to set. JAX
    reads JAX_NUM_CPU_DEVICES even when empty, so an empty value is an error there."""
    kind, least, what = NUMERIC_ENV[name]
    raw = os.environ.get(name)
    if raw is None or (raw == "" and not name.startswith("JAX_")):
        return default
    try:
        v = kind(raw.strip())
    except ValueError:
        v = None
    if v is None or not math.isfinite(v) or v < least:
        want = "a positive integer" if kind is int else f"a finite number >= {least}"
        raise PxdError(f"environment variable {name}={raw!r} must be {want} ({what}); "
                       f"fix it or unset it")
    return v


def check_env() -> None:
    """Every numeric variable of NUMERIC_ENV, once, before any work (and before JAX)."""
    for name in NUMERIC_ENV:
        env_number(name)
