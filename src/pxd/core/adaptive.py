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
The loop is the attacks' PGD (`pxd.core.attacks.sign.pgd_loop`) with a BPDA oracle: called
on concrete arrays it runs from the host over a jitted step, checking the early stop between
steps (a network in a `lax` loop body is ~8x slower on CPU; see `pxd.core.attacks.grid`);
under an outer jit the same iterates come from `lax` loops.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pxd.core.attacks.grid import as_pytree, finish_staged
from pxd.core.attacks.sign import _xent_oracle, pgd_loop, pgd_setup
from pxd.core.likelihood import bits_per_dim_of
from pxd.core.squeeze import feature_squeeze

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
    return feature_squeeze(jnp.round(x)).astype(jnp.float32)


def density_bpd(model, params, x: jax.Array) -> jax.Array:
    """Bits/dim (N,) of images on the 0..255 scale; differentiable in x (mixture head)."""
    return bits_per_dim_of(model, params, x)


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
    """Cross-entropy of the defended classifier; gradient through BPDA(defence). A
    `Partial`: the arrays of `logits_fn` (and of `defence`, if a `Partial`) are leaves."""
    return jax.tree_util.Partial(_ce_oracle, as_pytree(logits_fn), as_pytree(defence))


def _ce_oracle(logits_fn, defence, x, y):
    through = bpda(defence)
    return _xent_oracle(lambda z: logits_fn(through(z)), x, y)  # the attacks' loss, through it


def _unit(g: jax.Array) -> jax.Array:
    """Per-example division by the mean absolute value (an L1 normalisation)."""
    scale = jnp.mean(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
    return g / (scale + 1e-30)


def bpd_and_grad(bpd_fn: Callable[[jax.Array], jax.Array], x: jax.Array):
    """(bits/dim (N,), its gradient at x): one vjp, each image's gradient its own."""
    bpd, vjp = jax.vjp(bpd_fn, x)
    (g_bpd,) = vjp(jnp.ones_like(bpd))
    return bpd, g_bpd


@functools.partial(jax.jit, static_argnums=0)
def _bpd_and_grad(model, dparams, x):
    return bpd_and_grad(lambda z: density_bpd(model, dparams, z), x)


def adaptive_oracle(logits_fn: Callable, defence: Defence, bpd_fn: Callable[[jax.Array],
                    jax.Array] | None, threshold: float, weight: float = 1.0,
                    pre: tuple | None = None) -> Oracle:
    """CE through BPDA(adaptive defence), pulled below the bits/dim threshold (see top).

    `pre`, when given, is `bpd_and_grad(bpd_fn, x)` at the x the oracle is asked at,
    computed by a program of its own (see `_PreparedOracle`)."""
    base = ce_oracle(logits_fn, defence)

    def oracle(x, y):
        g_ce, ce, wrong = base(x, y)
        bpd, g_bpd = pre if pre is not None else bpd_and_grad(bpd_fn, x)
        over = (bpd > threshold).reshape((-1,) + (1,) * (x.ndim - 1))
        d = _unit(g_ce) - weight * jnp.where(over, _unit(g_bpd), 0.0)
        return d, ce - weight * jnp.maximum(bpd - threshold, 0.0), wrong

    return oracle


# --------------------------------------------------------------------------- PGD


def bpda_pgd(oracle: Oracle, x, y, *, eps, key: jax.Array, steps: int = 40,
             alpha: float | None = None, restarts: int = 1, random_start: bool = True,
             clean_first: bool = False, early_stop: bool = True,
             prepare: Callable | None = None) -> jax.Array:
    """PGD with the gradient oracle; uint8 (N, H, W, C) within floor(eps) of x.

    The attacks' PGD loop (`pxd.core.attacks.sign.pgd_loop`) with `record`: every iterate
    the oracle is asked at is judged. x: uint8 or integral float images (N, H, W, C); y: int
    labels (N,); eps: L-inf budget on the 0..255 scale, scalar or per example (N,). `steps`
    and `restarts` are static. With `clean_first` the first restart starts at x (not at
    random noise). With `early_stop` the loops end once every image of the batch is
    misclassified: which images are fooled is the same as without it; the example kept per
    image may be an earlier iterate. Pass the oracle as a `jax.tree_util.Partial` (as
    `ce_oracle` makes it) so that host calls compile once per shape. `prepare(oracle,
    x_adv) -> oracle`, on the host only, gives the oracle for each step's iterate (see
    `pgd_loop`).
    """
    x0, y, e, a, count = pgd_setup(x, y, eps, steps, alpha)
    r = max(1, int(restarts))
    noise = np.array([random_start and not (clean_first and i == 0) for i in range(r)])
    best = pgd_loop(oracle, x0, y, e, a, count, jax.random.split(key, r), noise, record=True,
                    early_stop=early_stop, prepare=prepare)
    return finish_staged(best, x0, e)


# --------------------------------------------------------------------------- glue


@dataclasses.dataclass(frozen=True)
class _DefendedOracle:
    """`oracle(logits_fn, dparams, x, y)` of one defence. Its settings are compared by value,
    so two attacks made alike share their compiled steps (jit keys on the function)."""

    defence_name: str
    purify: Callable | None
    density_model: Any
    eps_defend: int
    threshold: float | None
    bpd_weight: float

    def of(self, logits_fn, dparams) -> Oracle:
        if self.defence_name == "none":
            return ce_oracle(logits_fn, identity_defence)
        if self.defence_name == "feature-squeeze":
            return ce_oracle(logits_fn, squeeze_defence)
        if self.defence_name == "pixeldefend":
            return ce_oracle(logits_fn, pixeldefend_defence(self.purify, dparams,
                                                            self.eps_defend))
        model = self.density_model
        defence = adaptive_pixeldefend_defence(self.purify, model, dparams, self.eps_defend,
                                               self.threshold)
        return adaptive_oracle(logits_fn, defence, lambda z: density_bpd(model, dparams, z),
                               self.threshold, self.bpd_weight)

    def __call__(self, logits_fn, dparams, x, y):
        return self.of(logits_fn, dparams)(x, y)


@dataclasses.dataclass(frozen=True)
class _PreparedOracle:
    """Adaptive PixelDefend's oracle given the bits/dim and its gradient at x (`pre`),
    computed beforehand by `_bpd_and_grad`, a program of its own. In one program with the
    purifier, XLA:CPU (jaxlib 0.10.2) returned on some calls a bits/dim gradient whose
    first 960 floats of a device's batch (rows 0-9 of a shard's first image) differed from
    run to run (issue 27); the two parts alone are deterministic."""

    base: _DefendedOracle

    def __call__(self, logits_fn, dparams, pre, x, y):
        b = self.base
        defence = adaptive_pixeldefend_defence(b.purify, b.density_model, dparams,
                                               b.eps_defend, b.threshold)
        return adaptive_oracle(logits_fn, defence, None, b.threshold, b.bpd_weight,
                               pre=pre)(x, y)


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

    oracle = _DefendedOracle(defence_name, purify, density_model, eps_defend, threshold,
                             bpd_weight)
    clean_first = defence_name == "adaptive-pixeldefend"

    prepared = _PreparedOracle(oracle)

    def run(logits_fn, dparams, x, y, eps, key):
        # the classifier's and density's arrays are leaves: one compilation per shape
        o = jax.tree_util.Partial(oracle, as_pytree(logits_fn), dparams)
        prepare = None
        if defence_name == "adaptive-pixeldefend":
            def prepare(_, x_adv):
                pre = _bpd_and_grad(density_model, dparams, x_adv)
                return jax.tree_util.Partial(prepared, as_pytree(logits_fn), dparams, pre)
        return bpda_pgd(o, x, y, eps=eps, key=key, steps=steps, alpha=alpha,
                        restarts=restarts, random_start=True, clean_first=clean_first,
                        early_stop=True, prepare=prepare)

    return run
