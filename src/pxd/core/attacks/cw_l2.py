"""Carlini-Wagner L2 (untargeted), a minimal-perturbation attack: Adam in tanh space on
||x' - x0||^2 + c * margin, with a per-example binary search on c.

The loop's pieces are public (`cw_setup`, `cw_round_init`, `cw_step`, `cw_round_end`), so a
caller can drive it as it likes (the speed bench's eager baseline does). Called on concrete
arrays each search round runs from the host, one step per call, through a `host_batch` (see
`pxd.core.attacks.grid.WholeBatch`); `pxd.engine.active.ActiveBatch` runs each stretch between
checkpoints on the examples still going only. Under an outer jit the rounds are `lax` loops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from pxd.core.attacks.grid import (
    LogitsFn,
    WholeBatch,
    as_inputs,
    as_pytree,
    budget,
    finish_staged,
    per_example,
    staged,
    traced,
)


class CWState(NamedTuple):
    """Per-example binary-search state of the CW attack."""

    const: jax.Array  # (N,) current trade-off constant c
    lower: jax.Array  # (N,) largest c known to fail
    upper: jax.Array  # (N,) smallest c known to succeed (1e10: none yet)
    best_l2: jax.Array  # (N,) squared L2 of the best adversarial example (inf: none)
    best_x: jax.Array  # (N, H, W, C) best adversarial example (x0 while none)


_TANH_LIMIT = 1.0 - 1e-6  # keeps arctanh finite for pixels at exactly 0 or 255
_NO_UPPER = 1e10


def _to_tanh(x: jax.Array) -> jax.Array:
    return jnp.arctanh(jnp.clip(x / 127.5 - 1.0, -_TANH_LIMIT, _TANH_LIMIT))


def _from_tanh(w: jax.Array) -> jax.Array:
    return (jnp.tanh(w) + 1.0) * 127.5


def cw_raw(
    logits_fn: LogitsFn,
    x_float: jax.Array,
    y: jax.Array,
    *,
    search_steps: int = 5,
    max_iterations: int = 200,
    learning_rate: float = 1e-2,
    initial_const: float = 10.0,
    confidence: float = 0.0,
    quantize: bool = False,
    abort_early: bool = True,
    host_batch=WholeBatch,
) -> jax.Array:
    """Untargeted Carlini-Wagner L2 attack, float32 result (N, H, W, C), unclipped.

    Minimises ||x' - x0||^2 + c * max(Z_y - max_{i != y} Z_i, -confidence) over
    x' = 127.5 * (tanh(w) + 1), which keeps x' in (0, 255), with Adam on w. Per example,
    c is binary-searched for `search_steps` rounds of `max_iterations` Adam steps
    (x10 while no success is known), and the smallest-L2 misclassified iterate over all
    rounds is kept; examples never fooled come back unchanged.

    Scale: on 0..255 pixels squared distances are 255^2 times those on [0, 1] and input
    gradients 255 times smaller, so the balancing c is ~6.5e4 times Carlini's [0, 1]
    values (~1e-3..1e-2 there): typical CIFAR c is 10..1000 here, hence initial_const=10,
    which five rounds can raise to 1e5. learning_rate is in tanh space (1e-2 moves a
    mid-range pixel by ~1.3 per step at most).

    With `quantize`, success and L2 are judged on each iterate rounded to integers (one
    extra forward pass per step) and the rounded iterate is kept: with confidence 0 the
    optimum sits on the decision boundary, where rounding alone undoes about half of the
    continuous successes.

    With `abort_early` (Carlini's default) an example's round ends once its objective has
    not fallen by 0.01% over the last max_iterations // 10 steps. Carlini's code judges the
    batch's summed objective; per example is what it does at its default batch size of 1,
    and makes each image's result independent of which others share its batch or device.
    Called on concrete arrays the rounds run from the host through `host_batch` (see the
    module docstring).
    """
    opts = dict(max_iterations=max_iterations, learning_rate=learning_rate,
                confidence=confidence, quantize=quantize, abort_early=abort_early)
    logits_fn = as_pytree(logits_fn)
    x0, y, w0, s = cw_setup(x_float, y, initial_const)
    on_host = not traced(logits_fn, x0, y)

    def search_round(s: CWState, _):
        c = cw_round_init(s, w0, learning_rate=learning_rate)
        if on_host:
            c = _cw_host(logits_fn, c, x0, y, s.const, host_batch, **opts)
        else:
            c = lax.while_loop(lambda c: _cw_running(c, max_iterations),
                               lambda c: cw_step(logits_fn, c, x0, y, s.const, **opts), c)
        return cw_round_end(s, c), None

    if on_host:
        for _ in range(search_steps):
            s, _ = search_round(s, None)
        return s.best_x
    final, _ = lax.scan(search_round, s, None, length=search_steps)
    return final.best_x


class CWRound(NamedTuple):
    """State of one CW search round (the Adam loop)."""

    i: jax.Array  # int32 scalar: steps done
    stop: jax.Array  # (N,) bool: the example aborted early
    prev: jax.Array  # (N,) float32: its objective at the last checkpoint
    w: jax.Array  # (N, H, W, C) tanh-space iterate
    opt_state: optax.OptState
    best_l2: jax.Array
    best_x: jax.Array
    found: jax.Array  # (N,) bool: success in this round


@staged(static=("initial_const",))
def cw_setup(x_float, y, initial_const: float):
    x0, y = as_inputs(x_float, y)
    n = x0.shape[0]
    init = CWState(
        const=jnp.full((n,), initial_const, jnp.float32),
        lower=jnp.zeros((n,), jnp.float32),
        upper=jnp.full((n,), _NO_UPPER, jnp.float32),
        best_l2=jnp.full((n,), jnp.inf, jnp.float32),
        best_x=x0,
    )
    return x0, y, _to_tanh(x0), init


@staged(static=("learning_rate",))
def cw_round_init(s: CWState, w0, learning_rate: float) -> CWRound:
    n = w0.shape[0]
    return CWRound(jnp.zeros((), jnp.int32), jnp.zeros((n,), bool), jnp.full((n,), jnp.inf),
                   w0, optax.adam(learning_rate).init(w0), s.best_l2, s.best_x,
                   jnp.zeros((n,), bool))


@staged
def cw_round_end(s: CWState, c: CWRound) -> CWState:
    """Binary search on c per example: down after a success, up (x10 until one) after none."""
    upper = jnp.where(c.found, jnp.minimum(s.upper, s.const), s.upper)
    lower = jnp.where(c.found, s.lower, jnp.maximum(s.lower, s.const))
    const = jnp.where(upper < _NO_UPPER, (lower + upper) / 2.0, s.const * 10.0)
    return CWState(const, lower, upper, c.best_l2, c.best_x)


def _cw_running(c: CWRound, max_iterations: int) -> jax.Array:
    return (c.i < max_iterations) & ~jnp.all(c.stop)


def _cw_margin(logits, y):
    """Z_y - max_{i != y} Z_i, (N,)."""
    z_y = jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    return z_y - jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)


def cw_step(logits_fn, c: CWRound, x0, y, const, *, max_iterations: int,
             learning_rate: float, confidence: float, quantize: bool,
             abort_early: bool) -> CWRound:
    """One Adam step of a search round, recording the iterate its gradient was taken at;
    examples that stopped at an earlier checkpoint keep their state."""
    n = x0.shape[0]
    opt = optax.adam(learning_rate)

    def sq_dist(xa):
        return jnp.sum((xa - x0).reshape(n, -1) ** 2, -1)

    def objective(w):
        xa = _from_tanh(w)
        m = _cw_margin(logits_fn(xa), y)
        l2 = sq_dist(xa)
        per = l2 + const * jnp.maximum(m, -confidence)
        # summing keeps examples independent (Adam is element-wise)
        return jnp.sum(per), (xa, l2, m < -confidence, per)

    (_, (xa, l2, success, per)), grads = jax.value_and_grad(objective, has_aux=True)(c.w)
    check_every = max(1, max_iterations // 10)
    checkpoint = c.i % check_every == 0
    stop = c.stop | (abort_early & checkpoint & (per > c.prev * 0.9999))
    prev = jnp.where(checkpoint, per, c.prev)
    if quantize:
        xa = jnp.round(xa)
        l2, success = sq_dist(xa), _cw_margin(logits_fn(xa), y) < -confidence
    # record the iterate the gradient was taken at, as Carlini does
    better = success & (l2 < c.best_l2)
    best_l2 = jnp.where(better, l2, c.best_l2)
    best_x = jnp.where(better.reshape(n, 1, 1, 1), xa, c.best_x)
    updates, opt_state = opt.update(grads, c.opt_state, c.w)
    new = CWRound(c.i + 1, stop, prev, optax.apply_updates(c.w, updates), opt_state, best_l2,
                  best_x, c.found | success)
    live = ~c.stop

    def keep(a, b):
        if not per_example(n, a):
            return a  # the step count and Adam's count: shared by the live examples
        return jnp.where(live.reshape((n,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(keep, new, c)


@staged(static=("k", "max_iterations", "learning_rate", "confidence", "quantize",
                "abort_early"))
def _cw_chunk(logits_fn, c: CWRound, x0, y, const, *, k: int, max_iterations: int,
              learning_rate: float, confidence: float, quantize: bool,
              abort_early: bool) -> CWRound:
    """`k` unrolled steps; one the while_loop would not run (stopped, or past
    max_iterations) leaves the state as it is."""
    for _ in range(k):
        new = cw_step(logits_fn, c, x0, y, const, max_iterations=max_iterations,
                       learning_rate=learning_rate, confidence=confidence, quantize=quantize,
                       abort_early=abort_early)
        run = _cw_running(c, max_iterations)
        c = jax.tree_util.tree_map(lambda a, b, run=run: jnp.where(run, a, b), new, c)
    return c


def _cw_host(logits_fn, c: CWRound, x0, y, const, host_batch, **opts) -> CWRound:
    """One search round driven from the host: examples stop only at checkpoints, so each
    stretch up to the next checkpoint runs on the examples `host_batch` gathers among those
    still going (as DeepFool's loop).
    One step per call: a CW step (four network passes) dwarfs a dispatch, unrolled chunks
    measured no faster on CPU, and single steps give the eager loop's images bit for bit."""
    max_it = opts["max_iterations"]
    every = max(1, max_it // 10)
    hb = host_batch(c, x0, y, const)
    i = 0
    while i < max_it:
        idx = np.flatnonzero(~hb.view().stop)
        if idx.size == 0:
            break
        end = min(max_it, i + 1 if i % every == 0 else (i // every + 1) * every + 1)

        def stretch(sub, xs, ys, cs, k=end - i):
            for _ in range(k):
                sub = _cw_chunk(logits_fn, sub, xs, ys, cs, k=1, **opts)
            return sub

        hb.run(idx, stretch)
        i = end
    return hb.result()


def cw(
    logits_fn: LogitsFn,
    x,
    y,
    *,
    eps,
    key: jax.Array | None = None,
    search_steps: int = 5,
    max_iterations: int = 200,
    learning_rate: float = 1e-2,
    initial_const: float = 10.0,
    confidence: float = 0.0,
    abort_early: bool = True,
    host_batch=WholeBatch,
) -> jax.Array:
    """CW L2, then (as in the paper) clipped to the eps-ball, rounded, clipped to [0,255].

    Runs `cw_raw` with quantize=True, so kept examples stay adversarial after rounding
    (though possibly not after the eps clipping). See `cw_raw` for the options.
    `key` is unused.
    """
    del key
    x0, y = as_inputs(x, y)
    e = budget(eps, x0.shape[0])
    raw = cw_raw(
        logits_fn,
        x0,
        y,
        search_steps=search_steps,
        max_iterations=max_iterations,
        learning_rate=learning_rate,
        initial_const=initial_const,
        confidence=confidence,
        quantize=True,
        abort_early=abort_early,
        host_batch=host_batch,
    )
    return finish_staged(raw, x0, e)

