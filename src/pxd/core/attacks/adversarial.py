"""Adversarial training's batch (the paper's Appendix C): per-example budgets drawn from a
truncated half-normal, and FGSM or BIM examples against the model's own predictions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pxd.core.attacks.grid import LogitsFn, bim_steps
from pxd.core.attacks.sign import bim, fgsm
from pxd.errors import PxdError


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
        bound = bim_steps(float(np.floor(2.0 * delta)))
        return bim(logits_fn, x0, y_pred, eps=eps, key=key_attack, max_steps=bound)
    return fgsm(logits_fn, x0, y_pred, eps=eps, key=key_attack)
