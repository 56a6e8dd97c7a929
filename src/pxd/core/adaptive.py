"""Adaptive (white-box) attacks on the defences: BPDA-PGD (Athalye, Carlini & Wagner 2018).

PixelDefend's purifier is a greedy integer decode: no useful gradient exists (Section 4.3 of
the paper found unrolling it vanishes). BPDA replaces the purifier's backward pass by the
identity: the forward pass is the real, exact purification (`purify.make_purifier`), and
the gradient of the loss with respect to the purified image is used as the gradient with
respect to the input. The same applies to feature squeezing (forward: squeeze).

The attack is PGD on that gradient, on the integer grid (0..255 scale):

    x_{t+1} = Proj_{eps-ball(x) and [0, 255]}(x_t + alpha * sign(d_t)),

alpha integral (default max(1, round(eps / 4))), from a random integer start in the ball,
`steps` iterations (default 40) and `restarts` restarts, ending early once the whole batch
is fooled. Every iterate is judged by the REAL
defended classifier (the forward pass already computes it); per image the result is a
misclassified iterate if any iterate of any restart was one (the worst case per image),
else the iterate of highest loss. The purifier is deterministic, so no EOT is needed.

Adaptive PixelDefend purifies only images whose bits/dim exceed a threshold T. Its attack
direction combines two per-image L1-normalised gradients (so the weight is scale-free; the
two losses have unrelated units):

    d = g_CE / |g_CE|_1 - w * [BPD(x) > T] * g_BPD / |g_BPD|_1,

g_CE the BPDA gradient of the cross-entropy through the adaptive defence (identity where the
defence skips the image, the purifier's BPDA where it purifies) and g_BPD the exact gradient
of the PixelCNN's bits/dim at x (the density model is differentiable in its input): the
attack is pulled below T, where the classifier is undefended. The first restart starts at x
itself rather than at random noise, since noise alone lifts the bits/dim far above T.

All functions are pure and jittable; results stay integral, inside the eps-ball and [0, 255].
Called on concrete arrays, `bpda_pgd` and `make_bpda_attack`'s attack drive the step loop
from the host over a jitted step, checking the early stop between steps: a network in a
`lax` loop body is ~8x slower on CPU (see `pxd.core.attacks`). Under an outer jit the same
iterates come from `lax` loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pxd.core.attacks import (
    budget,
    finish,
    pgd_step_size,
    project,
    traced,
    uniform_int_noise,
    xent,
)
from pxd.models.mixture import bits_per_dim

Defence = Callable[[jax.Array], jax.Array]  # float32 integral images -> float32 images
# oracle(x, y) -> (ascent direction (N,H,W,C), loss (N,), misclassified (N,) bool)
Oracle = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
_DEFENCES = ("none", "feature-squeeze", "pixeldefend", "adaptive-pixeldefend")


# --------------------------------------------------------------------------- BPDA


def bpda(forward: Defence) -> Defence:
    """`forward` in the forward pass, the identity in the backward pass.

    Written as the straight-through form x + stop_gradient(forward(x) - x), which has
    exactly the identity vector-Jacobian product; `forward` is also fed a stopped input,
    so its loops (the purifier's while_loops) are never differentiated.
    """

    def f(x: jax.Array) -> jax.Array:
        out = forward(lax.stop_gradient(x)).astype(x.dtype)
        return x + lax.stop_gradient(out - x)

    return f


def identity_defence(x: jax.Array) -> jax.Array:
    return x


def squeeze_defence(x: jax.Array) -> jax.Array:
    """Feature squeezing (Appendix C) on float32 integral images."""
    from pxd.core.purify import feature_squeeze

    return feature_squeeze(jnp.round(x)).astype(jnp.float32)


def density_bpd(model, params, x: jax.Array) -> jax.Array:
    """Bits/dim (N,) of images on the 0..255 scale; differentiable in x (mixture head)."""
    return bits_per_dim(model.apply({"params": params}, x))


def pixeldefend_defence(purify: Callable, params, eps_defend: int) -> Defence:
    """PixelDefend with eps_defend; `purify` from `purify.make_purifier`."""

    def f(x: jax.Array) -> jax.Array:
        e = jnp.full((x.shape[0],), eps_defend, jnp.int32)
        return purify(params, jnp.round(x).astype(jnp.uint8), e).astype(jnp.float32)

    return f


def adaptive_pixeldefend_defence(purify: Callable, model, params, eps_defend: int,
                                 threshold: float) -> Defence:
    """Adaptive PixelDefend (Section 4.1): purify only images with bits/dim > threshold."""

    def f(x: jax.Array) -> jax.Array:
        xi = jnp.round(x)
        over = density_bpd(model, params, xi) > threshold
        e = jnp.where(over, eps_defend, 0).astype(jnp.int32)
        return purify(params, xi.astype(jnp.uint8), e).astype(jnp.float32)

    return f


# --------------------------------------------------------------------------- oracles


def ce_oracle(logits_fn: Callable, defence: Defence) -> Oracle:
    """Cross-entropy of the defended classifier; gradient through BPDA(defence)."""
    through = bpda(defence)

    def oracle(x, y):
        def loss(z):
            logits = logits_fn(through(z))
            ce = xent(logits, y)
            # summing keeps each example's gradient its own (examples are independent)
            return ce.sum(), (ce, jnp.argmax(logits, -1) != y)

        g, (ce, wrong) = jax.grad(loss, has_aux=True)(x)
        return g, ce, wrong

    return oracle


def _unit(g: jax.Array) -> jax.Array:
    """Per-example division by the mean absolute value (an L1 normalisation)."""
    scale = jnp.mean(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
    return g / (scale + 1e-30)


def bpd_and_grad(bpd_fn: Callable[[jax.Array], jax.Array], x: jax.Array):
    """(bits/dim (N,), its gradient at x): one vjp, each image's gradient its own."""
    bpd, vjp = jax.vjp(bpd_fn, x)
    (g_bpd,) = vjp(jnp.ones_like(bpd))
    return bpd, g_bpd


def adaptive_oracle(logits_fn: Callable, defence: Defence, bpd_fn: Callable[[jax.Array],
                    jax.Array], threshold: float, weight: float = 1.0,
                    bpd_grad: Callable | None = None) -> Oracle:
    """CE through BPDA(adaptive defence), pulled below the bits/dim threshold (see top).

    `bpd_grad(x)`, when given, supplies `bpd_and_grad(bpd_fn, x)` computed elsewhere (the
    host path runs it as its own program: see `make_bpda_attack`)."""
    base = ce_oracle(logits_fn, defence)

    def oracle(x, y):
        g_ce, ce, wrong = base(x, y)
        bpd, g_bpd = bpd_grad(x) if bpd_grad is not None else bpd_and_grad(bpd_fn, x)
        over = (bpd > threshold).reshape((-1,) + (1,) * (x.ndim - 1))
        d = _unit(g_ce) - weight * jnp.where(over, _unit(g_bpd), 0.0)
        return d, ce - weight * jnp.maximum(bpd - threshold, 0.0), wrong

    return oracle


# --------------------------------------------------------------------------- PGD


class BPDAState(NamedTuple):
    """PGD iterate plus the per-image worst case found so far."""

    x_adv: jax.Array  # float32 (N, H, W, C), integral, inside the ball
    best_x: jax.Array  # float32 (N, H, W, C): misclassified if best_wrong
    best_wrong: jax.Array  # bool (N,)
    best_loss: jax.Array  # float32 (N,)
    step: jax.Array  # int32 scalar


def bpda_init(x0: jax.Array) -> BPDAState:
    n = x0.shape[0]
    return BPDAState(x0, x0, jnp.zeros((n,), bool), jnp.full((n,), -jnp.inf, jnp.float32),
                     jnp.zeros((), jnp.int32))


def _record(state: BPDAState, x: jax.Array, loss: jax.Array, wrong: jax.Array) -> BPDAState:
    """Keep x per image if it is misclassified and the best is not, or ties it on loss."""
    better = (wrong & ~state.best_wrong) | ((wrong == state.best_wrong) & (loss > state.best_loss))
    keep = better.reshape((-1,) + (1,) * (x.ndim - 1))
    return state._replace(best_x=jnp.where(keep, x, state.best_x),
                          best_wrong=state.best_wrong | wrong,
                          best_loss=jnp.where(better, loss, state.best_loss))


def bpda_update(oracle: Oracle, state: BPDAState, x0: jax.Array, y: jax.Array, e: jax.Array,
                alpha: jax.Array) -> BPDAState:
    """Judge the current iterate (recording it), then take one projected sign step."""
    d, loss, wrong = oracle(state.x_adv, y)
    state = _record(state, state.x_adv, loss, wrong)
    stepped = project(state.x_adv + alpha * jnp.sign(d), x0, e)
    return state._replace(x_adv=stepped, step=state.step + 1)


def bpda_pgd(oracle: Oracle, x, y, *, eps, key: jax.Array, steps: int = 40,
             alpha: float | None = None, restarts: int = 1, random_start: bool = True,
             clean_first: bool = False, early_stop: bool = True) -> jax.Array:
    """PGD with the gradient oracle; uint8 (N, H, W, C) within floor(eps) of x.

    x: uint8 or integral float images (N, H, W, C); y: int labels (N,); eps: L-inf budget
    on the 0..255 scale, scalar or per example (N,). `steps` and `restarts` are static.
    With `clean_first` the first restart starts at x (not at random noise). With `early_stop`
    the loops end once every image of the batch is misclassified: which images are fooled is
    the same as without it; the example kept per image may be an earlier iterate.
    """
    if not traced(x, y, eps, key):
        def update(s, x0, y, e, a):
            return bpda_update(oracle, s, x0, y, e, a)

        def judge(s, y):
            return _judge(oracle, s, y)

        return _bpda_pgd_host(jax.jit(update), jax.jit(judge), x, y, eps=eps, key=key,
                              steps=steps, alpha=alpha, restarts=restarts,
                              random_start=random_start, clean_first=clean_first,
                              early_stop=early_stop)
    x0, y, e, a = _setup(x, y, eps, alpha)

    def restart(state, inp):
        k, r = inp
        state = state._replace(x_adv=_start(x0, e, k, random_start & ~(clean_first & (r == 0))))
        first = state.step

        def running(s: BPDAState):
            # once every image is misclassified no later iterate can change the outcome
            return (s.step - first < steps) & ~(early_stop & jnp.all(s.best_wrong))

        state = lax.while_loop(running, lambda s: bpda_update(oracle, s, x0, y, e, a), state)
        done = early_stop & jnp.all(state.best_wrong)
        return lax.cond(done, lambda s: s, lambda s: _judge(oracle, s, y), state), None

    r = max(1, int(restarts))
    final, _ = lax.scan(restart, bpda_init(x0), (jax.random.split(key, r), jnp.arange(r)))
    return finish(final.best_x, x0, e)


def _setup(x, y, eps, alpha):
    x0 = jnp.asarray(x).astype(jnp.float32)
    e = budget(eps, x0.shape[0])
    return x0, jnp.asarray(y).astype(jnp.int32), e, pgd_step_size(e, alpha)


def _start(x0, e, k, use_noise):
    noisy = x0 + uniform_int_noise(k, x0.shape, e)
    return project(jnp.where(use_noise, noisy, x0), x0, e)


def _judge(oracle: Oracle, s: BPDAState, y) -> BPDAState:
    """Record the last iterate, which no update has judged yet."""
    _, loss, wrong = oracle(s.x_adv, y)
    return _record(s, s.x_adv, loss, wrong)


_setup_jit = jax.jit(_setup, static_argnums=3)
_start_jit = jax.jit(_start, static_argnums=3)
_init_jit = jax.jit(bpda_init)
_finish_jit = jax.jit(finish)


def _bpda_pgd_host(update, judge, x, y, *, eps, key, steps, alpha, restarts, random_start,
                   clean_first, early_stop) -> jax.Array:
    """`bpda_pgd` with the loops on the host: `update(state, x0, y, e, a)` and
    `judge(state, y)` are jitted; the same iterates as the traced loops."""
    x0, y, e, a = _setup_jit(x, y, eps, alpha)
    r = max(1, int(restarts))
    keys = jax.random.split(key, r)
    state = _init_jit(x0)
    for i in range(r):
        state = state._replace(x_adv=_start_jit(x0, e, keys[i],
                                                random_start and not (clean_first and i == 0)))
        for _ in range(steps):
            if early_stop and bool(jnp.all(state.best_wrong)):
                break
            state = update(state, x0, y, e, a)
        if not (early_stop and bool(jnp.all(state.best_wrong))):
            state = judge(state, y)
    return _finish_jit(state.best_x, x0, e)


# --------------------------------------------------------------------------- glue


def make_bpda_attack(defence_name: str, *, density_model=None, purify: Callable | None = None,
                     eps_defend: int = 16, threshold: float | None = None,
                     bpd_weight: float = 1.0, steps: int = 40, alpha: float | None = None,
                     restarts: int = 1) -> Callable:
    """`attack(logits_fn, density_params, x, y, eps, key) -> uint8` for one defence: jitted
    steps driven from the host on concrete arrays, one jitted program when traced.

    defence_name: none (plain PGD), feature-squeeze, pixeldefend or adaptive-pixeldefend.
    `logits_fn` is a pytree (e.g. `models.classifiers.make_logits_fn`), so its variables and the
    density parameters are arguments, not constants baked into the program; eps is per
    example, so one compilation serves every budget.
    """
    if defence_name in ("pixeldefend", "adaptive-pixeldefend") and purify is None:
        raise ValueError(f"{defence_name} needs a purifier")
    if defence_name == "adaptive-pixeldefend" and threshold is None:
        raise ValueError("adaptive-pixeldefend needs a threshold")
    if defence_name not in _DEFENCES:
        raise ValueError(f"unknown defence {defence_name!r}")

    def oracle_of(logits_fn, dparams, pre=None) -> tuple[Oracle, bool]:
        if defence_name == "none":
            return ce_oracle(logits_fn, identity_defence), False
        if defence_name == "feature-squeeze":
            return ce_oracle(logits_fn, squeeze_defence), False
        if defence_name == "pixeldefend":
            return ce_oracle(logits_fn, pixeldefend_defence(purify, dparams, eps_defend)), False
        if defence_name == "adaptive-pixeldefend":
            defence = adaptive_pixeldefend_defence(purify, density_model, dparams, eps_defend,
                                                   threshold)
            oracle = adaptive_oracle(logits_fn, defence,
                                     lambda z: density_bpd(density_model, dparams, z),
                                     threshold, bpd_weight,
                                     None if pre is None else lambda z: pre)
            return oracle, True
        raise ValueError(f"unknown defence {defence_name!r}")

    @jax.jit
    def traced_run(logits_fn, dparams, x, y, eps, key):
        oracle, clean_first = oracle_of(logits_fn, dparams)
        return bpda_pgd(oracle, x, y, eps=eps, key=key, steps=steps, alpha=alpha,
                        restarts=restarts, clean_first=clean_first)

    @jax.jit
    def update(logits_fn, dparams, s, x0, y, e, a, pre):
        return bpda_update(oracle_of(logits_fn, dparams, pre)[0], s, x0, y, e, a)

    @jax.jit
    def judge(logits_fn, dparams, s, y, pre):
        return _judge(oracle_of(logits_fn, dparams, pre)[0], s, y)

    clean_first = defence_name == "adaptive-pixeldefend"

    # Adaptive PixelDefend's bits/dim gradient runs as its own program, never beside the
    # purifier (which it does not depend on): in one program XLA:CPU (jaxlib 0.10.2, two
    # devices) returned, on about half the calls, a gradient whose first 960 values on a
    # device (ten rows of its first image) differed (issue 27). Each alone is reproducible.
    @jax.jit
    def bpd_grad(dparams, x):
        return bpd_and_grad(lambda z: density_bpd(density_model, dparams, z), x)

    def pre_of(dparams, s):
        return bpd_grad(dparams, s.x_adv) if clean_first else None

    def run(logits_fn, dparams, x, y, eps, key):
        if traced(logits_fn, dparams, x, y, eps, key):
            return traced_run(logits_fn, dparams, x, y, eps, key)
        return _bpda_pgd_host(
            lambda s, x0, y, e, a: update(logits_fn, dparams, s, x0, y, e, a,
                                          pre_of(dparams, s)),
            lambda s, y: judge(logits_fn, dparams, s, y, pre_of(dparams, s)), x, y, eps=eps,
            key=key, steps=steps, alpha=alpha, restarts=restarts, random_start=True,
            clean_first=clean_first, early_stop=True)

    return run
