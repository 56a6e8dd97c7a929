"""What every attack shares: the integer L-inf budget, projection onto the ball and the pixel
range, rounding to the grid, the cross-entropy and its input gradient, integer noise, Kurakin's
step count, and the staging that lets one attack run eagerly or under an outer jit.

Staging. On XLA:CPU a network's forward and backward pass inside a loop body
(`lax.while_loop`, `fori_loop`, `scan`) runs ~8x slower than the same steps dispatched from
Python (docs/BENCHMARKS.md). So an attack called on concrete arrays drives its loop from the
host over jitted pieces (`staged`), with any early exit checked between them; called under an
outer `jax.jit` (`traced`) the same pieces trace inline into `lax` loops, whose iterates are
the same. Masked or guarded steps make both forms exact: a step that the loop would not have
run leaves the state unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

LogitsFn = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------- staging


def traced(*trees) -> bool:
    """Whether any leaf is a tracer, i.e. the caller is inside jit (or another transform)."""
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


def as_pytree(fn) -> jax.tree_util.Partial:
    """`fn` as a pytree, so jitted pieces take it as an argument; a plain callable becomes
    static (one compilation per function object), a `Partial`'s arguments stay leaves."""
    if isinstance(fn, jax.tree_util.Partial):
        return fn
    return jax.tree_util.Partial(fn)


def staged(fn=None, *, static: tuple[str, ...] = ()):
    """Run `fn` inline when traced (inside an outer jit), else through its own jit.

    Host-driven attacks are sequences of such pieces: each compiles once per shape and
    static options. Pass functions (`logits_fn`, an oracle) through `as_pytree` first.
    """
    if fn is None:
        return functools.partial(staged, static=static)
    jitted = jax.jit(fn, static_argnames=static)

    @functools.wraps(fn)
    def call(*args, **kw):
        return fn(*args, **kw) if traced(args, kw) else jitted(*args, **kw)

    call.jitted = jitted  # for compile counts (`call.jitted._cache_size()`)
    return call


# --------------------------------------------------------------------------- the grid


def budget(eps, n: int) -> jax.Array:
    """Integer L-inf budget floor(max(eps, 0)) as float32 of shape (N, 1, 1, 1)."""
    e = jnp.floor(jnp.maximum(jnp.asarray(eps, jnp.float32), 0.0))
    return jnp.broadcast_to(e, (n,)).reshape(n, 1, 1, 1)


def project(x_adv: jax.Array, x0: jax.Array, e: jax.Array) -> jax.Array:
    """Clip to the L-inf ball of radius `e` around x0 and to the pixel range [0, 255]."""
    return jnp.clip(jnp.clip(x_adv, x0 - e, x0 + e), 0.0, 255.0)


def finish(x_adv: jax.Array, x0: jax.Array, e: jax.Array) -> jax.Array:
    """Clip to the ball, round to the integer grid and cast to uint8.

    Rounding after clipping stays inside the ball because x0 and e are integral.
    """
    return jnp.round(project(x_adv, x0, e)).astype(jnp.uint8)


finish_staged = staged(finish)


def as_inputs(x, y) -> tuple[jax.Array, jax.Array]:
    """Images as float32 and labels as int32."""
    return jnp.asarray(x).astype(jnp.float32), jnp.asarray(y).astype(jnp.int32)


def uniform_int_noise(key: jax.Array, shape, e: jax.Array) -> jax.Array:
    """Integers drawn uniformly from [-e, e] per element (e broadcast to `shape`)."""
    u = jax.random.uniform(key, shape)
    # floor(u * (2e + 1)) is uniform on {0, ..., 2e}; min() guards u*(2e+1) rounding to 2e+1
    return jnp.minimum(jnp.floor(u * (2.0 * e + 1.0)), 2.0 * e) - e


# --------------------------------------------------------------------------- steps and loss


def bim_steps(eps):
    """Kurakin et al.'s iteration count floor(min(eps + 4, 1.25 eps)): an int for a python
    number, int32 (N,) for an array (such as a `budget`)."""
    if isinstance(eps, int | float | np.integer | np.floating):
        return int(np.floor(min(eps + 4.0, 1.25 * eps)))
    e = jnp.reshape(eps, (-1,))
    return jnp.floor(jnp.minimum(e + 4.0, 1.25 * e)).astype(jnp.int32)


def pgd_step_size(e: jax.Array, alpha: float | None) -> jax.Array:
    """Integral PGD step per example, (N, 1, 1, 1): max(1, round(alpha)), or by default
    max(1, round(eps / 4)) so about four steps cross the ball."""
    if alpha is None:
        return jnp.maximum(1.0, jnp.round(e / 4.0))
    return jnp.full(e.shape, max(1.0, round(alpha)), jnp.float32)


def xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (N,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def loss_grad(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example input gradient of the cross-entropy, (N, H, W, C).

    Summing (not averaging) the loss keeps each example's gradient unscaled by N.
    """
    return jax.grad(lambda z: xent(logits_fn(z), y).sum())(x)


def per_example(n: int, a) -> bool:
    """Whether the leaf `a` holds one row per example of a batch of `n`."""
    return getattr(a, "ndim", 0) >= 1 and a.shape[0] == n


# --------------------------------------------------------------------------- host batches


class HostBatch(Protocol):
    """How a host-driven loop (DeepFool's, CW's) holds its batch between calls.

    Made as `host_batch(state, x0, y, *rest)`; `run(idx, fn)` applies `fn(state, x0, y,
    *rest) -> state` to (at least) the examples `idx`, whose others must be left unchanged
    by `fn` anyway (masked steps), so which examples a call sees changes no result.
    """

    def view(self) -> Any: ...  # the current state (numpy or jax leaves; read, not written)

    def run(self, idx: np.ndarray, fn: Callable) -> None: ...

    def result(self) -> Any: ...  # the final state, jax arrays


class WholeBatch:
    """The default `HostBatch`: every call runs on the whole batch, where it lies.
    (`pxd.engine.active.ActiveBatch` gathers the active examples into a smaller one.)"""

    def __init__(self, state, *fixed):
        self.state, self.fixed = state, fixed

    def view(self):
        return self.state  # callers read one field: copying every leaf to numpy cost a transfer

    def run(self, idx, fn) -> None:
        del idx
        self.state = fn(self.state, *self.fixed)

    def result(self):
        return self.state
