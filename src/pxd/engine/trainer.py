"""The host loop of training: deterministic data order, checkpoints, evaluations, resume.

Per-step randomness comes from `fold_in(key, step)` and the data order of epoch e from a
permutation seeded by (seed, e), so a run resumed from step s repeats exactly what an
uninterrupted run would have done from step s. The steps themselves are pure
(`core.training`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from pxd.core.training import TrainState
from pxd.engine import devices
from pxd.storage import checkpoint


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


def budget_steps(hours: float, step_fn, state, batch: dict, *, key: jax.Array,
                 n: int = 10) -> tuple[int, float]:
    """Steps that fit in `hours`, from timing `n` steps (after one compile step) on a copy
    of the state; returns (steps, seconds per step)."""
    state = jax.tree_util.tree_map(jax.numpy.array, state)
    state, m = step_fn(state, batch, key=key)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(n):
        state, m = step_fn(state, batch, key=key)
        jax.block_until_ready(m)
    sec = (time.perf_counter() - t0) / n
    return max(1, int(hours * 3600 / sec)), sec
