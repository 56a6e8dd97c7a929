"""One trainer for every model: pure jitted steps, deterministic data order, resumable loop.

Per-step randomness comes from `fold_in(key, step)` and the data order of epoch e from a
permutation seeded by (seed, e), so a run resumed from step s repeats exactly what an
uninterrupted run would have done from step s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pxd.configs.classifier import ClfConfig
from pxd.configs.pixelcnn import DensityConfig


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any
    model_state: Any  # e.g. BatchNorm statistics; {} when the model has none


# loss_fn(params, model_state, batch, *, key) -> (loss, (metrics: dict, new_model_state))
LossFn = Callable[..., tuple[jax.Array, tuple[dict, Any]]]


def init_state(params: Any, model_state: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema=jax.tree_util.tree_map(jnp.array, params),
        opt_state=tx.init(params),
        model_state=model_state,
    )


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, ema_decay: float):
    """Returns a jitted `step(state, batch, *, key) -> (state, metrics)`."""

    def step(state: TrainState, batch: dict, key: jax.Array):
        k = jax.random.fold_in(key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(
            state.params, state.model_state, batch, key=k
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Warm-up as TF's ExponentialMovingAverage(num_updates): early averages would
        # otherwise be dominated by the random initialisation for ~1/(1-decay) steps.
        t = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        metrics = dict(metrics, loss=loss)
        return TrainState(state.step + 1, params, ema, opt_state, model_state), metrics

    jitted = jax.jit(step, donate_argnums=(0,))

    def call(state, batch, *, key):
        return jitted(state, batch, key)

    return call


def lr_schedule(lr: float, *, schedule: str = "exponential", lr_decay: float = 1.0,
                warmup: int = 0, steps: int = 0) -> optax.Schedule:
    """Learning rate per step.

    "exponential": lr * lr_decay**step (PixelCNN++'s, made for 1000+ epochs).
    "cosine": linear warm-up over `warmup` steps, then a half cosine to 0 at `steps`, so a
    fixed budget ends with a small learning rate.
    """
    if schedule == "exponential":
        return optax.exponential_decay(lr, transition_steps=1, decay_rate=lr_decay)
    if schedule == "cosine":
        if steps <= warmup:
            raise ValueError(f"cosine schedule needs steps ({steps}) > warmup ({warmup})")
        return optax.warmup_cosine_decay_schedule(
            0.0 if warmup else lr, lr, max(warmup, 1), steps, end_value=0.0)
    raise ValueError(f"unknown schedule {schedule!r}")


def make_optimizer(lr: float | optax.Schedule, lr_decay: float = 1.0,
                   grad_clip: float | None = None):
    """Adam; a float `lr` decays exponentially per step (PixelCNN++'s schedule)."""
    sched = lr if callable(lr) else optax.exponential_decay(
        lr, transition_steps=1, decay_rate=lr_decay)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    return optax.chain(*parts, optax.adam(sched))


def make_density_optimizer(cfg: DensityConfig):
    return make_optimizer(lr_schedule(cfg.lr, schedule=cfg.schedule, lr_decay=cfg.lr_decay,
                                      warmup=cfg.warmup, steps=cfg.steps))


def clf_lr_schedule(cfg: ClfConfig):
    """Linear warm-up to `lr` over `warmup_steps`, then half cosine to 0 at `steps`."""
    warm = max(cfg.warmup_steps, 1)
    span = max(cfg.steps - cfg.warmup_steps, 1)

    def sched(step):
        s = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (s + 1.0) / warm)
        t = jnp.clip((s - cfg.warmup_steps) / span, 0.0, 1.0)
        return cfg.lr * ramp * 0.5 * (1.0 + jnp.cos(math.pi * t))

    return sched


def make_clf_optimizer(cfg: ClfConfig) -> optax.GradientTransformation:
    def kernels(params):
        return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)

    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=kernels),
        optax.sgd(clf_lr_schedule(cfg), momentum=cfg.momentum, nesterov=True),
    )
