"""DeepFool (Moosavi-Dezfooli et al. 2016), a minimal-perturbation attack: linearise the
logits, step to the nearest linearised boundary, repeat until the label flips.

The loop's pieces are public (`deepfool_setup`, `deepfool_step`, `deepfool_result`), so a
caller can drive it as it likes (the speed bench's eager baseline does). Called on concrete
arrays the loop runs from the host, one iteration per call, through a `host_batch` (see
`pxd.core.attacks.grid.WholeBatch`); `pxd.engine.active.ActiveBatch` runs each iteration on
the still-active examples only. Under an outer jit it is a `lax.while_loop`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pxd.core.attacks.grid import (
    LogitsFn,
    WholeBatch,
    as_inputs,
    as_pytree,
    budget,
    finish_staged,
    staged,
    traced,
)


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


def deepfool_step(logits_fn, s: DeepFoolState, x0, y, candidates, overshoot: float,
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
        s = deepfool_step(logits_fn, s, x0, y, candidates, overshoot, quantize)
    return s


@staged(static=("num_classes",))
def deepfool_setup(logits_fn, x_float, y, num_classes):
    x0, y = as_inputs(x_float, y)
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
def deepfool_result(x0, r_tot, overshoot: float):
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
    host_batch=WholeBatch,
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
    `host_batch`: how the host loop holds the batch (see the module docstring).
    """
    logits_fn = as_pytree(logits_fn)
    x0, y, candidates, s = deepfool_setup(logits_fn, x_float, y, num_classes)
    if traced(logits_fn, x0, y):
        def cond(s: DeepFoolState):
            return (s.step < max_iter) & jnp.any(s.active)

        def body(s: DeepFoolState):
            return deepfool_step(logits_fn, s, x0, y, candidates, overshoot, quantize)

        s = lax.while_loop(cond, body, s)
    else:
        s = _deepfool_host(logits_fn, s, x0, y, candidates, max_iter, overshoot, quantize,
                           host_batch)
    return deepfool_result(x0, s.r_tot, overshoot)



def _deepfool_host(logits_fn, s: DeepFoolState, x0, y, candidates, max_iter: int,
                   overshoot: float, quantize: bool, host_batch) -> DeepFoolState:
    """DeepFool's iterations driven from the host, one (1 forward, K backward passes) per
    call, each on the examples `host_batch` gathers among the still-active ones.

    Examples are independent (eval-mode network), so an example's iterates do not depend
    on which others share its batch, up to float32 rounding where XLA blocks a matmul by
    batch size (bit-identical on the shipped ResNet-14; tested).
    """
    hb = host_batch(s, x0, y, candidates)
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
    host_batch=WholeBatch,
) -> jax.Array:
    """DeepFool, then (as in the paper) clipped to the eps-ball, rounded, clipped to [0,255].

    Iterates are judged on the integer grid (`deepfool_raw(quantize=True)`): the outputs
    are integral, and a perturbation that only crosses the boundary before rounding would
    come back as the clean image. See `deepfool_raw` for the options. `key` is unused.
    """
    del key
    x0, y = as_inputs(x, y)
    e = budget(eps, x0.shape[0])
    raw = deepfool_raw(
        logits_fn, x0, y, max_iter=max_iter, overshoot=overshoot, num_classes=num_classes,
        quantize=True, host_batch=host_batch,
    )
    return finish_staged(raw, x0, e)

