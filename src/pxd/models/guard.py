"""Guard images: every real image off the CPU GEMM's tail, so results never follow its batch slot.

XLA:CPU computes the last output rows of a convolution or dot (measured: up to 46 rows, i.e.
batch x height x width positions) on another code path than the rest, with other float
rounding; the same image then gets other logits, bits/dim or purifier scores in the last slot
of a batch than in any other slot, or alone (measured on an AMD EPYC with AVX2, JAX 0.10.2:
the shipped ResNet's logits and gradients differ in the last slot). Near-ties then flip an
argmax or a gradient sign, and an array changes with the batch size or the device count.
Zero images appended after the real ones take that tail. On other backends nothing is added.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# 1 covers a whole-image network (its smallest stage, 7x7, has 49 >= 46 rows per image); the
# purifiers run convolutions on single rows of 28-32 pixels, so they need 2.
IMAGE_GUARD = 1
ROW_GUARD = 2
_enabled = True


def set_enabled(on: bool) -> None:
    """Guard images on (the default) or off, for functions traced after the call. Off is for
    diagnostics only: `tools/slot_check.py --no-guard` measures what the guards prevent."""
    global _enabled
    _enabled = bool(on)


def active() -> bool:
    """Whether `guarded` pads now: enabled and on the CPU backend."""
    return _enabled and jax.default_backend() == "cpu"


def pad(a: jax.Array, count: int) -> jax.Array:
    """`a` with `count` zero rows appended on axis 0."""
    return jnp.concatenate([a, jnp.zeros((count,) + a.shape[1:], a.dtype)], axis=0)


def guarded(fn, count: int = IMAGE_GUARD, batched: int = 1):
    """`fn(*batch, *rest)` with `count` zero images appended to its first `batched` arguments
    (each with a leading batch axis) and every output trimmed back; as is off the CPU."""

    def run(*args):
        if count == 0 or not active():
            return fn(*args)
        n = args[0].shape[0]
        args = tuple(pad(jnp.asarray(a), count) for a in args[:batched]) + args[batched:]
        return jax.tree_util.tree_map(lambda r: r[:n], fn(*args))

    return run
