"""Adversarial attacks of PixelDefend's Appendix A, on the 0..255 pixel scale.

A *logits function* maps float32 images (N, H, W, C) in [0, 255] to logits (N, K); it is
a closure over parameters in eval mode, so examples never interact. Every attack has the
signature `attack(logits_fn, x, y, *, eps, key, **options) -> x_adv` with

- x: uint8 (or integral float32) images (N, H, W, C); y: int labels (N,);
- eps: L-inf budget in pixel units, a python float or a per-example array (N,);
- x_adv: uint8, with |x_adv - x| <= floor(eps) element-wise and values in [0, 255].

The integer budget floor(eps) keeps every iterate on the integer grid inside the ball.

Step loops. On XLA:CPU a network's forward and backward pass inside a loop body
(`lax.while_loop`, `fori_loop`, `scan`) runs ~8x slower than the same steps unrolled
(docs/BENCHMARKS.md). So an attack called on concrete arrays drives its loop from Python
over jitted chunks of unrolled steps (`_staged`, `_chunks`), with any early exit checked on
the host between chunks; called under an outer `jax.jit` it traces to the `lax` loops,
whose iterates are the same. Masked or guarded steps make both forms exact: a step that the
loop would not have run leaves the state unchanged. Appendix C's adversarial-training
helpers (`training_eps`, `adversarial_batch`) sit at the end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from pxd.errors import PxdError

LogitsFn = Callable[[jax.Array], jax.Array]

CHUNK = 4  # unrolled steps per jitted call of a host-driven loop (see _chunks)


# --------------------------------------------------------------------------- staging


def traced(*trees) -> bool:
    """Whether any leaf is a tracer, i.e. the caller is inside jit (or another transform)."""
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


def as_pytree(logits_fn) -> jax.tree_util.Partial:
    """`logits_fn` as a pytree, so jitted pieces take it as an argument; a plain callable
    becomes static (one compilation per function object)."""
    if isinstance(logits_fn, jax.tree_util.Partial):
        return logits_fn
    return jax.tree_util.Partial(logits_fn)


def staged(fn=None, *, static: tuple[str, ...] = ()):
    """Run `fn` inline when traced (inside an outer jit), else through its own jit.

    Host-driven attacks are sequences of such pieces: each compiles once per shape and
    static options. Pass `logits_fn` through `as_pytree` first.
    """
    if fn is None:
        return functools.partial(staged, static=static)
    jitted = jax.jit(fn, static_argnames=static)

    @functools.wraps(fn)
    def call(*args, **kw):
        return fn(*args, **kw) if traced(args, kw) else jitted(*args, **kw)

    return call


def _chunks(total: int, size: int = CHUNK) -> list[int]:
    """`total` steps as chunks of `size`, the rest in powers of two (few compiled shapes)."""
    out = [size] * (total // size)
    rest = total % size
    while rest:
        p = 1 << (rest.bit_length() - 1)
        out.append(p)
        rest -= p
    return out


# --------------------------------------------------------------------------- helpers


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


def pgd_step_size(e: jax.Array, alpha: float | None) -> jax.Array:
    """Integral PGD step per example, (N, 1, 1, 1): max(1, round(alpha)), or by default
    max(1, round(eps / 4)) so about four steps cross the ball."""
    if alpha is None:
        return jnp.maximum(1.0, jnp.round(e / 4.0))
    return jnp.full(e.shape, max(1.0, round(alpha)), jnp.float32)


def xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (N,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _loss_grad(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example input gradient of the cross-entropy, (N, H, W, C).

    Summing (not averaging) the loss keeps each example's gradient unscaled by N.
    """
    return jax.grad(lambda z: xent(logits_fn(z), y).sum())(x)


def _bim_steps(e: jax.Array) -> jax.Array:
    """Kurakin et al.'s iteration count floor(min(eps + 4, 1.25 eps)), int32 (N,)."""
    e = e.reshape(-1)
    return jnp.floor(jnp.minimum(e + 4.0, 1.25 * e)).astype(jnp.int32)


def uniform_int_noise(key: jax.Array, shape, e: jax.Array) -> jax.Array:
    """Integers drawn uniformly from [-e, e] per element (e broadcast to `shape`)."""
    u = jax.random.uniform(key, shape)
    # floor(u * (2e + 1)) is uniform on {0, ..., 2e}; min() guards u*(2e+1) rounding to 2e+1
    return jnp.minimum(jnp.floor(u * (2.0 * e + 1.0)), 2.0 * e) - e


def _inputs(x, y) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(x).astype(jnp.float32), jnp.asarray(y).astype(jnp.int32)


# --------------------------------------------------------------------------- RAND / FGSM


def rand(logits_fn: LogitsFn, x, y, *, eps, key: jax.Array) -> jax.Array:
    """RAND: x + integer noise uniform on [-floor(eps), floor(eps)], clipped to [0, 255].

    `logits_fn` and `y` are unused; they keep the common attack signature.
    """
    x0, _ = _inputs(x, y)
    e = budget(eps, x0.shape[0])
    return finish(x0 + uniform_int_noise(key, x0.shape, e), x0, e)


def fgsm(logits_fn: LogitsFn, x, y, *, eps, key: jax.Array | None = None) -> jax.Array:
    """FGSM: x + floor(eps) * sign(grad_x L(x, y)), clipped to [0, 255]. `key` is unused."""
    x0, y = _inputs(x, y)
    e = budget(eps, x0.shape[0])
    return finish(x0 + e * jnp.sign(_loss_grad(logits_fn, x0, y)), x0, e)


# --------------------------------------------------------------------------- BIM / PGD


class SignState(NamedTuple):
    """State of an iterative sign-gradient attack (BIM, one PGD restart)."""

    x_adv: jax.Array  # float32 (N, H, W, C), integral, inside the ball
    step: jax.Array  # int32 scalar: iterations done


def sign_init(x_start: jax.Array) -> SignState:
    """Start an iterative sign attack at the (integral, in-ball) images `x_start`."""
    return SignState(x_adv=jnp.asarray(x_start, jnp.float32), step=jnp.zeros((), jnp.int32))


def sign_update(
    logits_fn: LogitsFn,
    state: SignState,
    x0: jax.Array,
    y: jax.Array,
    e: jax.Array,
    alpha: jax.Array,
    steps: jax.Array,
) -> SignState:
    """One step x <- Proj_{ball(x0, e) and [0,255]}(x + alpha * sign(grad)).

    Examples whose own budget `steps` (N,) is used up keep their iterate, so a batch with
    per-example eps runs the largest count once. `alpha` (N,1,1,1) is integral.
    """
    grad = _loss_grad(logits_fn, state.x_adv, y)
    stepped = project(state.x_adv + alpha * jnp.sign(grad), x0, e)
    active = (state.step < steps).reshape(-1, 1, 1, 1)
    return SignState(jnp.where(active, stepped, state.x_adv), state.step + 1)


@staged(static=("k",))
def _sign_chunk(logits_fn, state, x0, y, e, alpha, steps, k: int) -> SignState:
    for _ in range(k):
        state = sign_update(logits_fn, state, x0, y, e, alpha, steps)
    return state


def _sign_attack(logits_fn, x0, y, e, alpha, steps, x_start, max_steps=None) -> jax.Array:
    """Run `sign_update` max(steps) times from x_start; returns float32 integral images.

    On the host: chunks of unrolled steps. Traced: `max_steps` (a static bound on the
    counts) unrolls that many steps, the ones past an example's count masked; without it
    a while_loop (fine on GPU, slow on CPU).
    """
    state = sign_init(x_start)
    if not traced(logits_fn, x0, y, e, alpha, steps, x_start):
        f = as_pytree(logits_fn)
        for k in _chunks(int(jnp.max(steps))):
            state = _sign_chunk(f, state, x0, y, e, alpha, steps, k=k)
        return state.x_adv
    if max_steps is not None:
        return _sign_chunk(logits_fn, state, x0, y, e, alpha, steps, k=max_steps).x_adv

    def body(_, state):
        return sign_update(logits_fn, state, x0, y, e, alpha, steps)

    # a traced upper bound makes fori_loop a while_loop: fine, we never differentiate it
    return lax.fori_loop(0, jnp.max(steps), body, state).x_adv


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

    Defaults follow the paper: alpha = 1 and floor(min(eps + 4, 1.25 eps)) iterations per
    example (`steps` overrides the count for all examples). `alpha` is rounded to an
    integer >= 1 so iterates stay on the pixel grid. `key` is unused. `max_steps`, a
    static bound on every example's count, only matters under an outer jit: the loop is
    then unrolled (see `_sign_attack`); a count above it would be cut short.
    """
    x0, y, e, count, a = _bim_setup(x, y, eps, steps, alpha)
    x_adv = _sign_attack(logits_fn, x0, y, e, a, count, x0, max_steps)
    return _finish(x_adv, x0, e)


@staged(static=("steps", "alpha"))
def _bim_setup(x, y, eps, steps, alpha):
    x0, y = _inputs(x, y)
    n = x0.shape[0]
    e = budget(eps, n)
    count = _bim_steps(e) if steps is None else jnp.full((n,), steps, jnp.int32)
    a = jnp.full((n, 1, 1, 1), max(1.0, round(alpha)), jnp.float32)
    return x0, y, e, count, a


_finish = staged(finish)


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
    on the grid; ~4 steps cross the ball) and steps = 2 * floor(min(eps + 4, 1.25 eps)) + 10
    of the largest eps in the batch, enough to cross the ball several times and settle.
    Across `restarts` each example keeps a misclassified result if any restart found one,
    otherwise the one with the highest cross-entropy.
    """
    x0, y, e, a, count = _pgd_setup(x, y, eps, steps, alpha)
    keys = jax.random.split(key, max(1, restarts))
    best = _pgd_best_init(x0)
    if traced(logits_fn, x0, y, e, key):
        def restart(best, k):
            start = _pgd_start(x0, e, k, random_start)
            xa = _sign_attack(logits_fn, x0, y, e, a, count, start)
            return _pgd_keep(logits_fn, best, xa, y), None

        best, _ = lax.scan(restart, best, keys)
    else:
        f = as_pytree(logits_fn)
        for r in range(max(1, restarts)):
            start = _pgd_start(x0, e, keys[r], random_start)
            xa = _sign_attack(f, x0, y, e, a, count, start)
            best = _pgd_keep(f, best, xa, y)
    return _finish(best[0], x0, e)


@staged(static=("steps", "alpha"))
def _pgd_setup(x, y, eps, steps, alpha):
    x0, y = _inputs(x, y)
    n = x0.shape[0]
    e = budget(eps, n)
    a = pgd_step_size(e, alpha)
    if steps is None:
        count = jnp.full((n,), 2 * jnp.max(_bim_steps(e)) + 10, jnp.int32)
    else:
        count = jnp.full((n,), steps, jnp.int32)
    return x0, y, e, a, count


@staged
def _pgd_best_init(x0):
    n = x0.shape[0]
    return x0, jnp.zeros((n,), bool), jnp.full((n,), -jnp.inf, jnp.float32)


@staged(static=("random_start",))
def _pgd_start(x0, e, k, random_start: bool):
    start = x0 + uniform_int_noise(k, x0.shape, e) if random_start else x0
    return project(start, x0, e)


@staged
def _pgd_keep(logits_fn, best, xa, y):
    """Per example, keep a misclassified result over a correct one, else the higher loss."""
    best_x, best_wrong, best_loss = best
    logits = logits_fn(xa)
    wrong, loss = jnp.argmax(logits, -1) != y, xent(logits, y)
    better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
    keep = better.reshape(-1, 1, 1, 1)
    return (
        jnp.where(keep, xa, best_x),
        jnp.where(better, wrong, best_wrong),
        jnp.where(better, loss, best_loss),
    )


# --------------------------------------------------------------------------- DeepFool


class DeepFoolState(NamedTuple):
    r_tot: jax.Array  # float32 (N, H, W, C): accumulated perturbation before overshoot
    active: jax.Array  # bool (N,): label not flipped yet
    step: jax.Array  # int32 scalar


def _class_jacobian(logits_fn: LogitsFn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits (N, K) and per-example input gradients of every logit (K, N, H, W, C).

    Examples are independent, so a batch-wide one-hot cotangent gives per-example grads.
    The K backward passes share one forward; they are unrolled (not `lax.map`) because a
    network in a loop body is slow on CPU, at the memory of K input-sized gradients.
    """
    logits, vjp = jax.vjp(logits_fn, x)
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(jnp.arange(k), k, dtype=logits.dtype)
    jac = [vjp(jnp.broadcast_to(onehot[c], logits.shape))[0] for c in range(k)]
    return logits, jnp.stack(jac)


def _deepfool_step(logits_fn, s: DeepFoolState, x0, y, candidates, overshoot: float,
                   quantize: bool) -> DeepFoolState:
    """One DeepFool iteration; examples already fooled (or inactive) keep r_tot."""
    n, k_total = candidates.shape
    x_eval = x0 + (1.0 + overshoot) * s.r_tot
    if quantize:
        x_eval = jnp.round(jnp.clip(x_eval, 0.0, 255.0))
    logits, jac = _class_jacobian(logits_fn, x_eval)
    active = s.active & (jnp.argmax(logits, -1) == y)
    jac = jnp.moveaxis(jac, 0, 1)  # (N, K, H, W, C)
    w = jac - jnp.take_along_axis(jac, y[:, None, None, None, None], axis=1)
    f = logits - jnp.take_along_axis(logits, y[:, None], axis=1)  # (N, K)
    w_norm = jnp.sqrt(jnp.sum(w.reshape(n, k_total, -1) ** 2, -1)) + 1e-8
    dist = jnp.where(candidates, jnp.abs(f) / w_norm, jnp.inf)
    l = jnp.argmin(dist, -1)
    w_l = jnp.take_along_axis(w, l[:, None, None, None, None], axis=1)[:, 0]
    scale = jnp.take_along_axis(dist, l[:, None], 1)[:, 0] + 1e-4
    scale = scale / jnp.take_along_axis(w_norm, l[:, None], 1)[:, 0]
    r = scale.reshape(n, 1, 1, 1) * w_l
    r_tot = s.r_tot + jnp.where(active.reshape(n, 1, 1, 1), r, 0.0)
    return DeepFoolState(r_tot, active, s.step + 1)


@staged(static=("k", "overshoot", "quantize"))
def _deepfool_chunk(logits_fn, s, x0, y, candidates, k: int, overshoot: float,
                    quantize: bool) -> DeepFoolState:
    # a step with no active example changes nothing but the step count
    for _ in range(k):
        s = _deepfool_step(logits_fn, s, x0, y, candidates, overshoot, quantize)
    return s


@staged(static=("num_classes",))
def _deepfool_setup(logits_fn, x_float, y, num_classes):
    x0, y = _inputs(x_float, y)
    n = x0.shape[0]
    logits0 = logits_fn(x0)
    k_total = logits0.shape[-1]
    candidates = jnp.ones_like(logits0, bool)
    if num_classes is not None and num_classes < k_total:
        rank = jnp.argsort(jnp.argsort(-logits0, axis=-1), axis=-1)
        candidates = rank < num_classes
    candidates = candidates & (jnp.arange(k_total)[None, :] != y[:, None])
    init = DeepFoolState(jnp.zeros_like(x0), jnp.ones((n,), bool), jnp.zeros((), jnp.int32))
    return x0, y, candidates, init


@staged(static=("overshoot",))
def _deepfool_result(x0, r_tot, overshoot: float):
    return x0 + (1.0 + overshoot) * r_tot


def deepfool_raw(
    logits_fn: LogitsFn,
    x_float: jax.Array,
    y: jax.Array,
    *,
    max_iter: int = 50,
    overshoot: float = 0.02,
    num_classes: int | None = None,
    quantize: bool = False,
) -> jax.Array:
    """Multi-class DeepFool (Moosavi-Dezfooli et al. 2016), unclipped float32 result.

    With `quantize`, each iterate is judged (and linearised) on the integer pixel grid, so
    the result still fools the model once rounded (a boundary-grazing step otherwise
    rounds back to the clean image).

    Each iteration linearises the logits at x0 + (1 + overshoot) * r_tot and adds the
    minimal L2 step (plus 1e-4) to the nearest linearised boundary between y and a class
    k; it stops per example once the label differs from y, or after `max_iter`.
    `num_classes` restricts k to the top classes of the clean logits (None: all).
    Returns x0 + (1 + overshoot) * r_tot, float32 (N, H, W, C), not clipped or rounded.
    """
    logits_fn = as_pytree(logits_fn)
    x0, y, candidates, s = _deepfool_setup(logits_fn, x_float, y, num_classes)
    if traced(logits_fn, x0, y):
        def cond(s: DeepFoolState):
            return (s.step < max_iter) & jnp.any(s.active)

        def body(s: DeepFoolState):
            return _deepfool_step(logits_fn, s, x0, y, candidates, overshoot, quantize)

        s = lax.while_loop(cond, body, s)
    else:
        s = _deepfool_host(logits_fn, s, x0, y, candidates, max_iter, overshoot, quantize)
    return _deepfool_result(x0, s.r_tot, overshoot)


def _bucket(count: int, n: int, ndev: int) -> int:
    """Batch size for `count` active examples: the next power of two (a multiple of the
    device count), capped at n, so a run compiles at most ~log2(n) shapes."""
    b = max(ndev, 1 << max(0, count - 1).bit_length())
    b += (-b) % ndev
    return n if b >= n else b


class _HostBatch:
    """A batch's loop state held on the host, so that each call runs on the examples still
    active only, gathered into a batch of the next power of two (DeepFool's and CW's host
    loops). Per-example leaves are found by their leading dimension; the others (step
    counts, Adam's count) are shared and taken from the last call. Sub-batches keep the
    caller's sharding: rank-4 leaves go where x0 lives, rank-1 where y lives."""

    def __init__(self, state, x0, y, *rest):
        self.n = x0.shape[0]
        ndev = len(x0.sharding.device_set)
        self.ndev = ndev if self.n % ndev == 0 else 1
        leaves, self.tree = jax.tree_util.tree_flatten(state)
        self.host = [np.array(a) for a in leaves]  # updated in place by run()
        self.rows = [_per_example(self.n, a) for a in leaves]
        self.fixed = [(np.asarray(a), a.sharding) for a in (x0, y, *rest)]
        self.shard = {4: x0.sharding, 1: y.sharding}

    def view(self):
        """The current state as numpy leaves."""
        return jax.tree_util.tree_unflatten(self.tree, self.host)

    def run(self, idx, fn) -> None:
        """`fn(sub_state, x0, y, *rest)` on examples `idx`, written back."""
        b = _bucket(idx.size, self.n, self.ndev)
        take = np.arange(self.n) if b == self.n else np.resize(idx, b)  # pads with actives
        xs = [jax.device_put(a[take], sh) for a, sh in self.fixed]
        sub = jax.tree_util.tree_unflatten(self.tree, [
            jax.device_put(a[take], self.shard[a.ndim]) if r else jnp.asarray(a)
            for a, r in zip(self.host, self.rows, strict=True)])
        sub = fn(sub, *xs)
        # a repeated example computes the same values, so the repeats write the same
        for a, got, r in zip(self.host, jax.tree_util.tree_leaves(sub), self.rows, strict=True):
            if r:
                a[take] = np.asarray(got)
            else:
                a[...] = np.asarray(got)

    def result(self):
        return jax.tree_util.tree_unflatten(self.tree, [jnp.asarray(a) for a in self.host])


def _deepfool_host(logits_fn, s: DeepFoolState, x0, y, candidates, max_iter: int,
                   overshoot: float, quantize: bool) -> DeepFoolState:
    """DeepFool's iterations driven from the host, one (1 forward, K backward passes) per
    call, on the still-active examples only: most are fooled in a few iterations, and a
    batch shrunk to the next power of two above the active count costs that much less.

    Examples are independent (eval-mode network), so an example's iterates do not depend
    on which others share its batch, up to float32 rounding where XLA blocks a matmul by
    batch size (bit-identical on the shipped ResNet-14; tested).
    """
    hb = _HostBatch(s, x0, y, candidates)
    for _ in range(max_iter):
        idx = np.flatnonzero(hb.view().active)
        if idx.size == 0:
            break
        hb.run(idx, lambda sub, xs, ys, cs: _deepfool_chunk(
            logits_fn, sub, xs, ys, cs, k=1, overshoot=overshoot, quantize=quantize))
    return hb.result()


def deepfool(
    logits_fn: LogitsFn,
    x,
    y,
    *,
    eps,
    key: jax.Array | None = None,
    max_iter: int = 50,
    overshoot: float = 0.02,
    num_classes: int | None = None,
) -> jax.Array:
    """DeepFool, then (as in the paper) clipped to the eps-ball, rounded, clipped to [0,255].

    Iterates are judged on the integer grid (`deepfool_raw(quantize=True)`): the outputs
    are integral, and a perturbation that only crosses the boundary before rounding would
    come back as the clean image. See `deepfool_raw` for the options. `key` is unused.
    """
    x0, y = _inputs(x, y)
    e = budget(eps, x0.shape[0])
    raw = deepfool_raw(
        logits_fn, x0, y, max_iter=max_iter, overshoot=overshoot, num_classes=num_classes,
        quantize=True,
    )
    return _finish(raw, x0, e)


# --------------------------------------------------------------------------- Carlini-Wagner


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
    Called on concrete arrays, the rounds run on the still-active examples only.
    """
    opts = dict(max_iterations=max_iterations, learning_rate=learning_rate,
                confidence=confidence, quantize=quantize, abort_early=abort_early)
    logits_fn = as_pytree(logits_fn)
    x0, y, w0, s = _cw_setup(x_float, y, initial_const)
    on_host = not traced(logits_fn, x0, y)

    def search_round(s: CWState, _):
        c = _cw_round_init(s, w0, learning_rate=learning_rate)
        if on_host:
            c = _cw_host(logits_fn, c, x0, y, s.const, **opts)
        else:
            c = lax.while_loop(lambda c: _cw_running(c, max_iterations),
                               lambda c: _cw_step(logits_fn, c, x0, y, s.const, **opts), c)
        return _cw_round_end(s, c), None

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
def _cw_setup(x_float, y, initial_const: float):
    x0, y = _inputs(x_float, y)
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
def _cw_round_init(s: CWState, w0, learning_rate: float) -> CWRound:
    n = w0.shape[0]
    return CWRound(jnp.zeros((), jnp.int32), jnp.zeros((n,), bool), jnp.full((n,), jnp.inf),
                   w0, optax.adam(learning_rate).init(w0), s.best_l2, s.best_x,
                   jnp.zeros((n,), bool))


@staged
def _cw_round_end(s: CWState, c: CWRound) -> CWState:
    """Binary search on c per example: down after a success, up (x10 until one) after none."""
    upper = jnp.where(c.found, jnp.minimum(s.upper, s.const), s.upper)
    lower = jnp.where(c.found, s.lower, jnp.maximum(s.lower, s.const))
    const = jnp.where(upper < _NO_UPPER, (lower + upper) / 2.0, s.const * 10.0)
    return CWState(const, lower, upper, c.best_l2, c.best_x)


def _cw_running(c: CWRound, max_iterations: int) -> jax.Array:
    return (c.i < max_iterations) & ~jnp.all(c.stop)


def _per_example(n: int, a) -> bool:
    return getattr(a, "ndim", 0) >= 1 and a.shape[0] == n


def _cw_margin(logits, y):
    """Z_y - max_{i != y} Z_i, (N,)."""
    z_y = jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    return z_y - jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)


def _cw_step(logits_fn, c: CWRound, x0, y, const, *, max_iterations: int,
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
        if not _per_example(n, a):
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
        new = _cw_step(logits_fn, c, x0, y, const, max_iterations=max_iterations,
                       learning_rate=learning_rate, confidence=confidence, quantize=quantize,
                       abort_early=abort_early)
        run = _cw_running(c, max_iterations)
        c = jax.tree_util.tree_map(lambda a, b, run=run: jnp.where(run, a, b), new, c)
    return c


def _cw_host(logits_fn, c: CWRound, x0, y, const, **opts) -> CWRound:
    """One search round driven from the host on the still-active examples: examples stop
    only at checkpoints, so each stretch up to the next checkpoint runs on the examples
    still going, gathered into a batch of the next power of two (as DeepFool's loop).
    One step per call: a CW step (four network passes) dwarfs a dispatch, unrolled chunks
    measured no faster on CPU, and single steps give the eager loop's images bit for bit."""
    max_it = opts["max_iterations"]
    every = max(1, max_it // 10)
    hb = _HostBatch(c, x0, y, const)
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
) -> jax.Array:
    """CW L2, then (as in the paper) clipped to the eps-ball, rounded, clipped to [0,255].

    Runs `cw_raw` with quantize=True, so kept examples stay adversarial after rounding
    (though possibly not after the eps clipping). See `cw_raw` for the options.
    `key` is unused.
    """
    x0, y = _inputs(x, y)
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
    )
    return _finish(raw, x0, e)


ATTACKS = {"rand": rand, "fgsm": fgsm, "bim": bim, "deepfool": deepfool, "cw": cw, "pgd": pgd}
# step loops driven from the host when called on concrete arrays: call them unjitted
ITERATIVE = ("bim", "deepfool", "cw", "pgd")


# --------------------------------------------------------------------------- Appendix C


def training_eps(key: jax.Array, n: int, delta: float = 8.0) -> jax.Array:
    """Per-example training budgets |N(0, delta^2)| truncated to [0, 2 delta], float32 (n,).

    Truncation is by resampling (an exact truncated normal on [-2, 2] standard deviations),
    not by clipping, so no mass piles up at 2 delta. Mean ~0.723 delta (5.78 for delta=8).
    """
    return jnp.abs(jax.random.truncated_normal(key, -2.0, 2.0, (n,), jnp.float32)) * delta


def adversarial_batch(
    logits_fn: LogitsFn, x, *, method: str, key: jax.Array, delta: float = 8.0
) -> jax.Array:
    """Adversarial examples for adversarial training (Appendix C), uint8 like x.

    Labels are the model's own predictions argmax logits_fn(x), not the true labels, to
    avoid label leaking (Kurakin et al. 2016); eps is drawn per example by `training_eps`.
    `method` is 'fgsm' or 'bim'.
    """
    if method not in ("fgsm", "bim"):
        raise PxdError(f"unknown adversarial-training attack {method!r}; choose fgsm or bim")
    key_eps, key_attack = jax.random.split(key)
    x0 = jnp.asarray(x).astype(jnp.float32)
    y_pred = jnp.argmax(lax.stop_gradient(logits_fn(x0)), -1).astype(jnp.int32)
    eps = training_eps(key_eps, x0.shape[0], delta)
    if method == "bim":
        # eps <= 2 delta bounds the count: inside a jitted train step BIM then unrolls
        e = float(np.floor(2.0 * delta))
        bound = int(np.floor(min(e + 4.0, 1.25 * e)))
        return bim(logits_fn, x0, y_pred, eps=eps, key=key_attack, max_steps=bound)
    return ATTACKS[method](logits_fn, x0, y_pred, eps=eps, key=key_attack)
