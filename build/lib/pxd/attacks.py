"""Adversarial attacks of PixelDefend's Appendix A, on the 0..255 pixel scale.

A *logits function* maps float32 images (N, H, W, C) in [0, 255] to logits (N, K); it is
a closure over parameters in eval mode, so examples never interact. Every attack has the
signature `attack(logits_fn, x, y, *, eps, key, **options) -> x_adv` with

- x: uint8 (or integral float32) images (N, H, W, C); y: int labels (N,);
- eps: L-inf budget in pixel units, a python float or a per-example array (N,);
- x_adv: uint8, with |x_adv - x| <= floor(eps) element-wise and values in [0, 255].

The integer budget floor(eps) keeps every iterate on the integer grid inside the ball.
All attacks are jittable when `logits_fn` is closed over (python loops only run over
static counts; step loops use `lax`). Appendix C's adversarial-training helpers
(`training_eps`, `adversarial_batch`) sit at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from pxd.errors import PxdError

LogitsFn = Callable[[jax.Array], jax.Array]


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


def _sign_attack(logits_fn, x0, y, e, alpha, steps, x_start) -> jax.Array:
    """Run `sign_update` max(steps) times from x_start; returns float32 integral images."""

    def body(_, state):
        return sign_update(logits_fn, state, x0, y, e, alpha, steps)

    # a traced upper bound makes fori_loop a while_loop: fine, we never differentiate it
    return lax.fori_loop(0, jnp.max(steps), body, sign_init(x_start)).x_adv


def bim(
    logits_fn: LogitsFn,
    x,
    y,
    *,
    eps,
    key: jax.Array | None = None,
    steps: int | None = None,
    alpha: float = 1.0,
) -> jax.Array:
    """BIM (Kurakin et al.): iterated FGSM with step `alpha`, projected after every step.

    Defaults follow the paper: alpha = 1 and floor(min(eps + 4, 1.25 eps)) iterations per
    example (`steps` overrides the count for all examples). `alpha` is rounded to an
    integer >= 1 so iterates stay on the pixel grid. `key` is unused.
    """
    x0, y = _inputs(x, y)
    n = x0.shape[0]
    e = budget(eps, n)
    count = _bim_steps(e) if steps is None else jnp.full((n,), steps, jnp.int32)
    a = jnp.full((n, 1, 1, 1), max(1.0, round(alpha)), jnp.float32)
    return finish(_sign_attack(logits_fn, x0, y, e, a, count, x0), x0, e)


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
    x0, y = _inputs(x, y)
    n = x0.shape[0]
    e = budget(eps, n)
    a = pgd_step_size(e, alpha)
    if steps is None:
        count = jnp.full((n,), 2 * jnp.max(_bim_steps(e)) + 10, jnp.int32)
    else:
        count = jnp.full((n,), steps, jnp.int32)

    def score(xa):
        logits = logits_fn(xa)
        return jnp.argmax(logits, -1) != y, xent(logits, y)

    def restart(best, k):
        best_x, best_wrong, best_loss = best
        start = x0 + uniform_int_noise(k, x0.shape, e) if random_start else x0
        xa = _sign_attack(logits_fn, x0, y, e, a, count, project(start, x0, e))
        wrong, loss = score(xa)
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        keep = better.reshape(-1, 1, 1, 1)
        best = (
            jnp.where(keep, xa, best_x),
            jnp.where(better, wrong, best_wrong),
            jnp.where(better, loss, best_loss),
        )
        return best, None

    init = (x0, jnp.zeros((n,), bool), jnp.full((n,), -jnp.inf, jnp.float32))
    (best_x, _, _), _ = lax.scan(restart, init, jax.random.split(key, max(1, restarts)))
    return finish(best_x, x0, e)


# --------------------------------------------------------------------------- DeepFool


class DeepFoolState(NamedTuple):
    r_tot: jax.Array  # float32 (N, H, W, C): accumulated perturbation before overshoot
    active: jax.Array  # bool (N,): label not flipped yet
    step: jax.Array  # int32 scalar


def _class_jacobian(logits_fn: LogitsFn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits (N, K) and per-example input gradients of every logit (K, N, H, W, C)."""
    logits, vjp = jax.vjp(logits_fn, x)
    eye = jnp.eye(logits.shape[-1], dtype=logits.dtype)
    cotangents = jnp.broadcast_to(eye[:, None, :], (eye.shape[0],) + logits.shape)
    # examples are independent, so a batch-wide one-hot cotangent gives per-example grads;
    # lax.map (not vmap) runs the K backward passes one at a time, keeping memory at one
    (jac,) = lax.map(vjp, cotangents)
    return logits, jac


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
    x0, y = _inputs(x_float, y)
    n = x0.shape[0]
    logits0 = logits_fn(x0)
    k_total = logits0.shape[-1]
    candidates = jnp.ones_like(logits0, bool)
    if num_classes is not None and num_classes < k_total:
        rank = jnp.argsort(jnp.argsort(-logits0, axis=-1), axis=-1)
        candidates = rank < num_classes
    candidates = candidates & (jnp.arange(k_total)[None, :] != y[:, None])

    def cond(s: DeepFoolState):
        return (s.step < max_iter) & jnp.any(s.active)

    def body(s: DeepFoolState):
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

    init = DeepFoolState(jnp.zeros_like(x0), jnp.ones((n,), bool), jnp.zeros((), jnp.int32))
    final = lax.while_loop(cond, body, init)
    return x0 + (1.0 + overshoot) * final.r_tot


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
    return finish(raw, x0, e)


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

    With `abort_early` (Carlini's default) a round ends once the batch's objective has not
    fallen by 0.01% over the last max_iterations // 10 steps.
    """
    x0, y = _inputs(x_float, y)
    n = x0.shape[0]
    w0 = _to_tanh(x0)
    opt = optax.adam(learning_rate)

    def margin(logits):
        """Z_y - max_{i != y} Z_i, (N,)."""
        z_y = jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
        is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
        return z_y - jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)

    def sq_dist(xa):
        return jnp.sum((xa - x0).reshape(n, -1) ** 2, -1)

    def objective(w, const):
        xa = _from_tanh(w)
        m = margin(logits_fn(xa))
        l2 = sq_dist(xa)
        # summing keeps examples independent (Adam is element-wise)
        return jnp.sum(l2 + const * jnp.maximum(m, -confidence)), (xa, l2, m < -confidence)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    check_every = max(1, max_iterations // 10)

    def search_round(s: CWState, _):
        def running(carry):
            i, stop = carry[0], carry[1]
            return (i < max_iterations) & ~stop

        def step(carry):
            i, _, prev, w, opt_state, best_l2, best_x, found = carry
            (loss, (xa, l2, success)), grads = grad_fn(w, s.const)
            checkpoint = i % check_every == 0
            stop = abort_early & checkpoint & (loss > prev * 0.9999)
            prev = jnp.where(checkpoint, loss, prev)
            if quantize:
                xa = jnp.round(xa)
                l2, success = sq_dist(xa), margin(logits_fn(xa)) < -confidence
            # record the iterate the gradient was taken at, as Carlini does
            better = success & (l2 < best_l2)
            best_l2 = jnp.where(better, l2, best_l2)
            best_x = jnp.where(better.reshape(n, 1, 1, 1), xa, best_x)
            updates, opt_state = opt.update(grads, opt_state, w)
            return (i + 1, stop, prev, optax.apply_updates(w, updates), opt_state, best_l2,
                    best_x, found | success)

        carry = (jnp.zeros((), jnp.int32), jnp.zeros((), bool), jnp.full((), jnp.inf),
                 w0, opt.init(w0), s.best_l2, s.best_x, jnp.zeros((n,), bool))
        *_, best_l2, best_x, found = lax.while_loop(running, step, carry)
        upper = jnp.where(found, jnp.minimum(s.upper, s.const), s.upper)
        lower = jnp.where(found, s.lower, jnp.maximum(s.lower, s.const))
        const = jnp.where(upper < _NO_UPPER, (lower + upper) / 2.0, s.const * 10.0)
        return CWState(const, lower, upper, best_l2, best_x), None

    init = CWState(
        const=jnp.full((n,), initial_const, jnp.float32),
        lower=jnp.zeros((n,), jnp.float32),
        upper=jnp.full((n,), _NO_UPPER, jnp.float32),
        best_l2=jnp.full((n,), jnp.inf, jnp.float32),
        best_x=x0,
    )
    final, _ = lax.scan(search_round, init, None, length=search_steps)
    return final.best_x


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
    return finish(raw, x0, e)


ATTACKS = {"rand": rand, "fgsm": fgsm, "bim": bim, "deepfool": deepfool, "cw": cw, "pgd": pgd}


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
    return ATTACKS[method](logits_fn, x0, y_pred, eps=eps, key=key_attack)
