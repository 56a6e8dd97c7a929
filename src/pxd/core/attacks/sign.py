"""Sign-gradient attacks: RAND (no gradient), FGSM, BIM, and PGD, the one projected-sign loop
with a pluggable oracle that BPDA (`pxd.core.adaptive`) reuses with its own loss.

An *oracle* `oracle(x, y) -> (direction, loss, wrong)` gives at the iterate x (N, H, W, C)
the ascent direction (its sign is the step), the loss (N,) that ranks iterates and whether
each image is misclassified (N,) bool. Pass it as a `jax.tree_util.Partial` (see
`xent_oracle`) so its arrays are arguments and one compilation serves every call.

PGD's state carries the iterate and the best image found so far. Per image the result is a
misclassified image if any judged iterate was one, else the judged iterate of highest loss
(`keep_best`). Plain PGD judges the last iterate of each restart; BPDA also judges every
iterate it takes a gradient at (`record`), which its oracle computes anyway, and may stop
once the whole batch is fooled (`early_stop`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pxd.core.attacks.grid import (
    LogitsFn,
    as_inputs,
    as_pytree,
    bim_steps,
    budget,
    finish,
    finish_staged,
    loss_grad,
    pgd_step_size,
    project,
    staged,
    traced,
    uniform_int_noise,
    xent,
)

# unrolled steps per jitted call of a host-driven sign loop: one step per call compiles one
# small program that serves every eps and step count (see docs/BENCHMARKS.md)
CHUNK = 1


def chunks(total: int, size: int | None = None) -> list[int]:
    """`total` steps as chunks of `size` (default CHUNK), the rest in powers of two (few
    compiled shapes)."""
    size = CHUNK if size is None else size
    out = [size] * (total // size)
    rest = total % size
    while rest:
        p = 1 << (rest.bit_length() - 1)
        out.append(p)
        rest -= p
    return out


# --------------------------------------------------------------------------- RAND / FGSM


def rand(logits_fn: LogitsFn, x, y, *, eps, key: jax.Array) -> jax.Array:
    """RAND: x + integer noise uniform on [-floor(eps), floor(eps)], clipped to [0, 255].

    `logits_fn` and `y` are unused; they keep the common attack signature.
    """
    del logits_fn
    x0, _ = as_inputs(x, y)
    e = budget(eps, x0.shape[0])
    return finish(x0 + uniform_int_noise(key, x0.shape, e), x0, e)


def fgsm(logits_fn: LogitsFn, x, y, *, eps, key: jax.Array | None = None) -> jax.Array:
    """FGSM: x + floor(eps) * sign(grad_x L(x, y)), clipped to [0, 255]. `key` is unused."""
    del key
    x0, y = as_inputs(x, y)
    e = budget(eps, x0.shape[0])
    return finish(x0 + e * jnp.sign(loss_grad(logits_fn, x0, y)), x0, e)


# --------------------------------------------------------------------------- the sign step


class SignState(NamedTuple):
    """State of an iterative sign-gradient attack (BIM, one PGD restart)."""

    x_adv: jax.Array  # float32 (N, H, W, C), integral, inside the ball
    step: jax.Array  # int32 scalar: iterations done


def sign_init(x_start: jax.Array) -> SignState:
    """Start an iterative sign attack at the (integral, in-ball) images `x_start`."""
    return SignState(x_adv=jnp.asarray(x_start, jnp.float32), step=jnp.zeros((), jnp.int32))


def sign_step(state, direction: jax.Array, x0: jax.Array, e: jax.Array, alpha: jax.Array,
              steps: jax.Array):
    """x <- Proj_{ball(x0, e) and [0,255]}(x + alpha * sign(direction)) for the examples
    whose own count `steps` (N,) is not used up; the others keep their iterate. Works on any
    state with `x_adv` and `step` fields. `alpha` (N,1,1,1) is integral."""
    stepped = project(state.x_adv + alpha * jnp.sign(direction), x0, e)
    active = (state.step < steps).reshape(-1, 1, 1, 1)
    return state._replace(x_adv=jnp.where(active, stepped, state.x_adv), step=state.step + 1)


def sign_update(logits_fn: LogitsFn, state: SignState, x0: jax.Array, y: jax.Array,
                e: jax.Array, alpha: jax.Array, steps: jax.Array) -> SignState:
    """One BIM step on the cross-entropy gradient (see `sign_step`); a batch with
    per-example eps runs the largest count once."""
    return sign_step(state, loss_grad(logits_fn, state.x_adv, y), x0, e, alpha, steps)


@staged(static=("k",))
def _sign_chunk(logits_fn, state, x0, y, e, alpha, steps, k: int) -> SignState:
    for _ in range(k):
        state = sign_update(logits_fn, state, x0, y, e, alpha, steps)
    return state


# --------------------------------------------------------------------------- BIM


def bim(
    logits_fn: LogitsFn,
    x,
    y,
    *,
    eps,
    key: jax.Array | None = None,
    steps: int | None = None,
    alpha: float = 1.0,
    max_steps: int | None = None,
) -> jax.Array:
    """BIM (Kurakin et al.): iterated FGSM with step `alpha`, projected after every step.

    Defaults follow the paper: alpha = 1 and `bim_steps(eps)` = floor(min(eps + 4,
    1.25 eps)) iterations per example (`steps` overrides the count for all examples).
    `alpha` is rounded to an integer >= 1 so iterates stay on the pixel grid. `key` is
    unused. `max_steps`, a static bound on every example's count, only matters under an
    outer jit: the loop is then unrolled, the steps past an example's count masked (a count
    above the bound would be cut short); without it a while_loop (fine on GPU, slow on CPU).
    """
    del key
    x0, y, e, count, a = bim_setup(x, y, eps, steps, alpha)
    state = sign_init(x0)
    if not traced(logits_fn, x0, y, e, count):
        f = as_pytree(logits_fn)
        for k in chunks(int(jnp.max(count))):
            state = _sign_chunk(f, state, x0, y, e, a, count, k=k)
    elif max_steps is not None:
        state = _sign_chunk(logits_fn, state, x0, y, e, a, count, k=max_steps)
    else:
        # a traced upper bound makes fori_loop a while_loop: fine, we never differentiate it
        state = lax.fori_loop(0, jnp.max(count),
                              lambda _, s: sign_update(logits_fn, s, x0, y, e, a, count), state)
    return finish_staged(state.x_adv, x0, e)


@staged(static=("steps", "alpha"))
def bim_setup(x, y, eps, steps, alpha):
    """BIM's inputs: float32 images x0, int32 labels, budget e, the step count per example
    (`bim_steps(e)` unless `steps`) and the integral step alpha (N, 1, 1, 1)."""
    x0, y = as_inputs(x, y)
    n = x0.shape[0]
    e = budget(eps, n)
    count = bim_steps(e) if steps is None else jnp.full((n,), steps, jnp.int32)
    a = jnp.full((n, 1, 1, 1), max(1.0, round(alpha)), jnp.float32)
    return x0, y, e, count, a


# --------------------------------------------------------------------------- PGD


def _xent_oracle(logits_fn, x, y):
    def loss(z):
        logits = logits_fn(z)
        ce = xent(logits, y)
        # summing keeps each example's gradient its own (examples are independent)
        return ce.sum(), (ce, jnp.argmax(logits, -1) != y)

    g, (ce, wrong) = jax.grad(loss, has_aux=True)(x)
    return g, ce, wrong


def xent_oracle(logits_fn: LogitsFn) -> jax.tree_util.Partial:
    """The plain attacks' oracle: the cross-entropy of `logits_fn`, its gradient, and the
    misclassified images."""
    return jax.tree_util.Partial(_xent_oracle, as_pytree(logits_fn))


class PGDState(NamedTuple):
    """A PGD iterate plus the per-image worst case found so far."""

    x_adv: jax.Array  # float32 (N, H, W, C), integral, inside the ball
    step: jax.Array  # int32 scalar: steps done in this restart
    best_x: jax.Array  # float32 (N, H, W, C): misclassified if best_wrong
    best_wrong: jax.Array  # bool (N,)
    best_loss: jax.Array  # float32 (N,), -inf before the first judged iterate


def pgd_init(x0: jax.Array) -> PGDState:
    n = x0.shape[0]
    return PGDState(x0, jnp.zeros((), jnp.int32), x0, jnp.zeros((n,), bool),
                    jnp.full((n,), -jnp.inf, jnp.float32))


def keep_best(s: PGDState, x: jax.Array, loss: jax.Array, wrong: jax.Array,
              judged: jax.Array | bool = True) -> PGDState:
    """Per image, take x over the best so far if x is misclassified and the best is not, or
    if both are equally (mis)classified and x has the strictly higher loss. Images not
    `judged` (N,) keep their best."""
    wrong = wrong & judged
    better = judged & ((wrong & ~s.best_wrong) | ((wrong == s.best_wrong)
                                                  & (loss > s.best_loss)))
    keep = better.reshape((-1,) + (1,) * (x.ndim - 1))
    return s._replace(best_x=jnp.where(keep, x, s.best_x), best_wrong=s.best_wrong | wrong,
                      best_loss=jnp.where(better, loss, s.best_loss))


def pgd_start(s: PGDState, x0: jax.Array, e: jax.Array, key: jax.Array,
              use_noise) -> PGDState:
    """A new restart: the iterate at x0 plus integer noise uniform in the ball (x0 itself
    without `use_noise`), step count 0; the best so far is kept."""
    noisy = x0 + uniform_int_noise(key, x0.shape, e)
    return s._replace(x_adv=project(jnp.where(use_noise, noisy, x0), x0, e),
                      step=jnp.zeros((), jnp.int32))


def pgd_update(oracle, s: PGDState, x0: jax.Array, y: jax.Array, e: jax.Array,
               alpha: jax.Array, steps: jax.Array, record: bool = False) -> PGDState:
    """One projected sign step along the oracle's direction (see `sign_step`); with
    `record` the iterate the direction was taken at is judged first (`keep_best`)."""
    d, loss, wrong = oracle(s.x_adv, y)
    if record:
        s = keep_best(s, s.x_adv, loss, wrong, s.step < steps)
    return sign_step(s, d, x0, e, alpha, steps)


def pgd_judge(oracle, s: PGDState, y: jax.Array) -> PGDState:
    """Judge the current iterate (the last of a restart, which no update has judged)."""
    _, loss, wrong = oracle(s.x_adv, y)
    return keep_best(s, s.x_adv, loss, wrong)


@staged(static=("k", "record"))
def _pgd_chunk(oracle, s, x0, y, e, alpha, steps, k: int, record: bool) -> PGDState:
    for _ in range(k):
        s = pgd_update(oracle, s, x0, y, e, alpha, steps, record)
    return s


_pgd_init = staged(pgd_init)
_pgd_start = staged(pgd_start)
_pgd_judge = staged(pgd_judge)


def pgd_loop(oracle, x0: jax.Array, y: jax.Array, e: jax.Array, alpha: jax.Array,
             count: jax.Array, keys: jax.Array, noise, *, record: bool = False,
             early_stop: bool = False, prepare=None) -> jax.Array:
    """PGD's restarts: restart r starts at x0 (+ noise if `noise[r]`), takes max(count)
    steps, and its last iterate is judged; returns the best images, float32 integral.

    With `early_stop` the loops end once every image is misclassified: which images are
    fooled is the same as without it; the image kept may be an earlier iterate. On the host
    the steps run from Python in jitted chunks (one step each when stopping early, the stop
    being checked between steps); traced, the same iterates come from `lax` loops.
    `prepare(oracle, x_adv) -> oracle`, host only, gives the oracle each one-step call and
    judgement uses, from inputs computed by programs of their own (adaptive BPDA).
    """
    oracle = as_pytree(oracle)
    noise = jnp.asarray(noise, bool)
    if not traced(oracle, x0, y, e, alpha, count, keys):
        s = _pgd_init(x0)
        total = int(jnp.max(count))
        for r in range(keys.shape[0]):
            s = _pgd_start(s, x0, e, keys[r], noise[r])
            # BPDA's steps (a purifier each) run one per call: the stop is checked after each
            one = early_stop or record or prepare is not None
            for k in chunks(total, 1 if one else CHUNK):
                if early_stop and bool(jnp.all(s.best_wrong)):
                    break
                o = oracle if prepare is None else prepare(oracle, s.x_adv)
                s = _pgd_chunk(o, s, x0, y, e, alpha, count, k=k, record=record)
            if not (early_stop and bool(jnp.all(s.best_wrong))):
                o = oracle if prepare is None else prepare(oracle, s.x_adv)
                s = _pgd_judge(o, s, y)
        return s.best_x

    total = jnp.max(count)

    def restart(s, inp):
        k, use_noise = inp
        s = pgd_start(s, x0, e, k, use_noise)

        def running(s):
            # once every image is misclassified no later iterate can change the outcome
            return (s.step < total) & ~(early_stop & jnp.all(s.best_wrong))

        s = lax.while_loop(running, lambda s: pgd_update(oracle, s, x0, y, e, alpha, count,
                                                         record), s)
        if early_stop:
            return lax.cond(jnp.all(s.best_wrong), lambda s: s,
                            lambda s: pgd_judge(oracle, s, y), s), None
        return pgd_judge(oracle, s, y), None

    return lax.scan(restart, pgd_init(x0), (keys, noise))[0].best_x


def pgd(
    logits_fn: LogitsFn,
    x,
    y,
    *,
    eps,
    key: jax.Array,
    steps: int | None = None,
    alpha: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
) -> jax.Array:
    """PGD (Madry et al.): BIM from a random integer start in the ball, with restarts.

    Defaults: step alpha = max(1, round(eps / 4)) per example (integral, so iterates stay
    on the grid; ~4 steps cross the ball) and steps = 2 * bim_steps(eps) + 10 of the
    largest eps in the batch, enough to cross the ball several times and settle. Across
    `restarts` each example keeps a misclassified result if any restart found one,
    otherwise the one with the highest cross-entropy (`keep_best`).
    """
    x0, y, e, a, count = pgd_setup(x, y, eps, steps, alpha)
    r = max(1, restarts)
    best = pgd_loop(xent_oracle(logits_fn), x0, y, e, a, count, jax.random.split(key, r),
                    np.full(r, bool(random_start)))
    return finish_staged(best, x0, e)


@staged(static=("steps", "alpha"))
def pgd_setup(x, y, eps, steps, alpha):
    """PGD's inputs: float32 images x0, int32 labels, budget e, step alpha (integral, see
    `pgd_step_size`) and the step count per example (default 2 * bim_steps(max eps) + 10)."""
    x0, y = as_inputs(x, y)
    n = x0.shape[0]
    e = budget(eps, n)
    a = pgd_step_size(e, alpha)
    total = 2 * jnp.max(bim_steps(e)) + 10 if steps is None else steps
    return x0, y, e, a, jnp.full((n,), total, jnp.int32)
