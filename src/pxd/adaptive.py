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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pxd.attacks import budget, finish, pgd_step_size, project, uniform_int_noise, xent
from pxd.likelihood import bits_per_dim

Defence = Callable[[jax.Array], jax.Array]  # float32 integral images -> float32 images
# oracle(x, y) -> (ascent direction (N,H,W,C), loss (N,), misclassified (N,) bool)
Oracle = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


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


def adaptive_oracle(logits_fn: Callable, defence: Defence, bpd_fn: Callable[[jax.Array],
                    jax.Array], threshold: float, weight: float = 1.0) -> Oracle:
    """CE through BPDA(adaptive defence), pulled below the bits/dim threshold (see top)."""
    base = ce_oracle(logits_fn, defence)

    def oracle(x, y):
        g_ce, ce, wrong = base(x, y)
        bpd, vjp = jax.vjp(bpd_fn, x)
        (g_bpd,) = vjp(jnp.ones_like(bpd))
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
    x0 = jnp.asarray(x).astype(jnp.float32)
    y = jnp.asarray(y).astype(jnp.int32)
    n = x0.shape[0]
    e = budget(eps, n)
    a = pgd_step_size(e, alpha)

    def restart(state, inp):
        k, r = inp
        noisy = x0 + uniform_int_noise(k, x0.shape, e)
        use_noise = random_start & ~(clean_first & (r == 0))
        start = project(jnp.where(use_noise, noisy, x0), x0, e)
        state = state._replace(x_adv=start)
        first = state.step

        def running(s: BPDAState):
            # once every image is misclassified no later iterate can change the outcome
            return (s.step - first < steps) & ~(early_stop & jnp.all(s.best_wrong))

        state = lax.while_loop(running, lambda s: bpda_update(oracle, s, x0, y, e, a), state)

        def judge_last(s: BPDAState) -> BPDAState:
            _, loss, wrong = oracle(s.x_adv, y)
            return _record(s, s.x_adv, loss, wrong)

        done = early_stop & jnp.all(state.best_wrong)
        return lax.cond(done, lambda s: s, judge_last, state), None

    r = max(1, int(restarts))
    final, _ = lax.scan(restart, bpda_init(x0), (jax.random.split(key, r), jnp.arange(r)))
    return finish(final.best_x, x0, e)


# --------------------------------------------------------------------------- glue


def make_bpda_attack(defence_name: str, *, density_model=None, purify: Callable | None = None,
                     eps_defend: int = 16, threshold: float | None = None,
                     bpd_weight: float = 1.0, steps: int = 40, alpha: float | None = None,
                     restarts: int = 1) -> Callable:
    """Jitted `attack(logits_fn, density_params, x, y, eps, key) -> uint8` for one defence.

    defence_name: none (plain PGD), feature-squeeze, pixeldefend or adaptive-pixeldefend.
    `logits_fn` is a pytree (e.g. `classify.make_logits_fn`), so its variables and the
    density parameters are arguments, not constants baked into the program; eps is per
    example, so one compilation serves every budget.
    """
    if defence_name in ("pixeldefend", "adaptive-pixeldefend") and purify is None:
        raise ValueError(f"{defence_name} needs a purifier")
    if defence_name == "adaptive-pixeldefend" and threshold is None:
        raise ValueError("adaptive-pixeldefend needs a threshold")

    def run(logits_fn, dparams, x, y, eps, key):
        clean_first = False
        if defence_name == "none":
            oracle = ce_oracle(logits_fn, identity_defence)
        elif defence_name == "feature-squeeze":
            oracle = ce_oracle(logits_fn, squeeze_defence)
        elif defence_name == "pixeldefend":
            oracle = ce_oracle(logits_fn, pixeldefend_defence(purify, dparams, eps_defend))
        elif defence_name == "adaptive-pixeldefend":
            defence = adaptive_pixeldefend_defence(purify, density_model, dparams, eps_defend,
                                                   threshold)
            oracle = adaptive_oracle(logits_fn, defence,
                                     lambda z: density_bpd(density_model, dparams, z),
                                     threshold, bpd_weight)
            clean_first = True
        else:
            raise ValueError(f"unknown defence {defence_name!r}")
        return bpda_pgd(oracle, x, y, eps=eps, key=key, steps=steps, alpha=alpha,
                        restarts=restarts, clean_first=clean_first)

    return jax.jit(run)
