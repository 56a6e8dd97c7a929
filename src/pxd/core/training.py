"""One trainer for every model: pure jitted steps, deterministic data order, resumable loop.

Per-step randomness comes from `fold_in(key, step)` and the data order of epoch e from a
permutation seeded by (seed, e), so a run resumed from step s repeats exactly what an
uninterrupted run would have done from step s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pxd.engine import devices
from pxd.storage import checkpoint


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


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Indices of the examples of training step `step` (epoch-wise permutations)."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size : (i + 1) * batch_size]


def train_loop(
    *,
    state: TrainState,
    step_fn,
    data: dict[str, np.ndarray],
    batch_size: int,
    steps: int,
    key: jax.Array,
    seed: int,
    run_dir: str | None = None,
    ckpt_every: int = 500,
    eval_every: int = 0,
    eval_fn: Callable[[TrainState], dict] | None = None,
    on_step: Callable[[int, dict, float], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    stop_after: int | None = None,
) -> tuple[TrainState, list[dict]]:
    """Run from `state.step` to `steps`; checkpoints to `run_dir` every `ckpt_every` steps.

    `stop_after` ends the loop early after that many steps of this call (tests use it to
    simulate a killed run). Returns the final state and the evaluation history.
    """
    m = devices.mesh()
    rep = devices.replicated(m)
    state = jax.device_put(state, rep)
    n = next(iter(data.values())).shape[0]
    start = int(state.step)
    history: list[dict] = []
    t_last = time.perf_counter()
    done_here = 0
    for s in range(start, steps):
        idx = batch_indices(seed, s, n, batch_size)
        batch, _ = devices.shard_batch({k: v[idx] for k, v in data.items()}, m)
        state, metrics = step_fn(state, batch, key=key)
        # Wait for every step: queuing many sharded steps has deadlocked XLA's CPU
        # collectives (seen with 2 virtual devices), and the host has no work to overlap.
        jax.block_until_ready(metrics)
        done_here += 1
        step_no = s + 1
        if on_step is not None:
            metrics = jax.device_get(metrics)
            now = time.perf_counter()
            on_step(step_no, metrics, len(idx) / max(now - t_last, 1e-9))
            t_last = now
        last = step_no == steps or (stop_after is not None and done_here >= stop_after)
        if eval_fn is not None and ((eval_every and step_no % eval_every == 0) or last):
            ev = dict(eval_fn(state), step=step_no)
            history.append(ev)
            if on_eval is not None:
                on_eval(step_no, ev)
        if run_dir is not None and (step_no % ckpt_every == 0 or last):
            checkpoint.save_state(run_dir, step_no, jax.device_get(state))
        if last and step_no != steps:
            break
    return state, history
