"""Training on the host: the one driver (`train`), its loop and the --hours probe.

`train(job, out)` runs any model: what differs between the PixelCNN and the classifiers is
in `engine.jobs`; the steps themselves are pure (`core.training`).

Per-step randomness comes from `fold_in(key, step)` and the data order of epoch e from a
permutation seeded by (seed, e), so a run resumed from step s repeats exactly what an
uninterrupted run would have done from step s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import jax
import numpy as np

from pxd.configs import base as config
from pxd.core.training import TrainState, init_state, make_train_step
from pxd.engine import devices
from pxd.report.terminal import Reporter
from pxd.storage import checkpoint, files


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
    m = devices.mesh(jax.devices())  # every process's devices
    state = devices.put_replicated(state, m)
    n = next(iter(data.values())).shape[0]
    start = int(state.step)
    history: list[dict] = []
    t_last = time.perf_counter()
    done_here = 0
    for s in range(start, steps):
        idx = batch_indices(seed, s, n, batch_size)
        batch = devices.global_batch({k: v[idx] for k, v in data.items()}, m)
        state, metrics = step_fn(state, batch, key=key)
        # Wait for every step: queuing many sharded steps has deadlocked XLA's CPU
        # collectives (seen with 2 virtual devices), and the host has no work to overlap.
        jax.block_until_ready(metrics)
        done_here += 1
        step_no = s + 1
        if on_step is not None:
            metrics = devices.to_host(metrics)
            now = time.perf_counter()
            on_step(step_no, metrics, len(idx) / max(now - t_last, 1e-9))
            t_last = now
        last = step_no == steps or (stop_after is not None and done_here >= stop_after)
        if eval_fn is not None and ((eval_every and step_no % eval_every == 0) or last):
            ev = dict(eval_fn(devices.local(state)), step=step_no)
            history.append(ev)
            if on_eval is not None:
                on_eval(step_no, ev)
        if run_dir is not None and (step_no % ckpt_every == 0 or last):
            checkpoint.save_state(run_dir, step_no, devices.to_host(state))
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
    sec = float(devices.agree(np.float64((time.perf_counter() - t0) / n)))  # process 0's
    return max(1, int(hours * 3600 / sec)), sec


def train(job, out: str, *, resume: bool = False, data_dir: str | None = None,
          rep: Reporter | None = None, stop_after: int | None = None) -> dict:
    """The one training driver: train (or resume) `job` (`engine.jobs.DensityJob` or
    `ClassifierJob`) in the run directory `out`; returns the job's result, also printed
    with --json.

    Writes out/config.json (the resolved config), ckpt/ every `ckpt_every` steps, best/ and
    meta.json (figures, evaluations, wall time, machine) at each evaluation and at the end.
    `stop_after` ends the run after that many steps of this call (tests: a killed run).
    """
    rep = rep or Reporter(quiet=True)
    started = checkpoint.check_run_dir(out, job.cfg, resume=resume)
    if os.path.exists(os.path.join(out, "config.json")) and not started:
        rep.info(f"{out} holds a run stopped before its first checkpoint: starting it again")
    resume = resume and started
    job.check()
    train_data = job.load_data(data_dir)
    shape = next(iter(train_data.values())).shape[1:]
    key = jax.random.key(job.cfg.seed)
    params, model_state = job.init(shape, key=jax.random.fold_in(key, 0))
    job.prepare(params, model_state, train_data, key=key, rep=rep)
    cfg = job.cfg
    tx = job.optimizer()  # before config.json: a bad schedule leaves no run dir behind
    state = init_state(params, model_state, tx)
    if resume:  # before config.json too: a damaged checkpoint leaves the run as it was
        _, state = checkpoint.restore_state(out, jax.device_get(state))
    files.write_config(out, cfg)
    nparams = sum(a.size for a in jax.tree_util.tree_leaves(params))
    rep.info(job.header(nparams, int(state.step), len(jax.devices())))
    rep.info(config.to_json(cfg))

    step_fn = make_train_step(job.loss_fn(), tx, job.ema_decay)
    meta = checkpoint.read_meta(out) if resume else {}
    job.begin(meta)
    t0 = time.perf_counter()
    wall0 = meta.get("wall_s", 0.0)
    evals = list(meta.get("evals", []))

    def write_meta(**extra) -> None:
        checkpoint.write_meta(out, {
            **job.meta(), "params": nparams, "evals": evals,
            "wall_s": wall0 + time.perf_counter() - t0, "machine": devices.machine(), **extra,
        })

    with rep.progress(job.name, total=cfg.steps - int(state.step)) as advance:

        def on_step(step, metrics, ips):
            advance(1, **job.progress(metrics), **{"img/s": ips})

        def on_eval(step, ev):
            evals.append(dict(ev, wall_s=wall0 + time.perf_counter() - t0))
            rep.info(job.eval_message(step, ev))
            write_meta(**job.eval_meta(step))

        state, _ = train_loop(
            state=state, step_fn=step_fn, data=train_data, batch_size=cfg.batch_size,
            steps=cfg.steps, key=jax.random.fold_in(key, 1), seed=cfg.seed, run_dir=out,
            ckpt_every=cfg.ckpt_every, eval_every=cfg.eval_every,
            eval_fn=lambda s: job.evaluate(s, out), on_step=on_step, on_eval=on_eval,
            stop_after=stop_after,
        )
    result = job.finish(devices.local(state), out, write_meta, data_dir, rep)
    rep.json(result)
    return result
