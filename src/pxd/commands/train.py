"""`pxd train-density` and `pxd score`."""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from pxd.configs import base as config
from pxd.configs.pixelcnn import DensityConfig
from pxd.core.likelihood import make_bpd_fn
from pxd.core.losses import make_density_loss_fn as make_loss_fn
from pxd.core.training import init_state, make_density_optimizer, make_train_step
from pxd.engine.batched import evaluate_bpd
from pxd.engine.devices import machine
from pxd.engine.trainer import budget_steps, train_loop
from pxd.errors import PxdError
from pxd.models.pixelcnn import build_model, init_params
from pxd.report.terminal import Reporter
from pxd.storage import checkpoint, data
from pxd.storage.runs import params_digest


def initial_params(cfg: DensityConfig, model, shape, *, key: jax.Array):
    """Fresh parameters, or those of `cfg.init_from` (a shipped model name or run dir),
    which must have the same architecture and dataset."""
    params = init_params(model, shape, key=key)
    if cfg.init_from is None:
        return params
    from pxd.storage.runs import load_density

    _, src, src_cfg, _ = load_density(cfg.init_from)
    if src_cfg.dataset != cfg.dataset or dict(src_cfg.model) != dict(cfg.model):
        raise PxdError(
            f"--init-from {cfg.init_from}: it is a {src_cfg.dataset} PixelCNN with "
            f"{src_cfg.model}, this run is {cfg.dataset} with {cfg.model}; pick the same "
            "--dataset and --preset")
    want = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), params)
    got = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), src)
    if want != got:
        raise PxdError(f"--init-from {cfg.init_from}: parameters do not fit this architecture")
    return jax.tree_util.tree_map(jax.numpy.asarray, src)


def template_state(cfg: DensityConfig):
    """A training state of the right structure for `cfg` (to restore checkpoints into)."""
    from pxd.configs.datasets import DATASETS

    shape = DATASETS[cfg.dataset].shape
    model = build_model(cfg.model, shape[-1])
    params = init_params(model, shape, key=jax.random.key(0))
    return jax.device_get(init_state(params, {}, make_density_optimizer(cfg)))


def seed_from_zoo(name: str, out: str, steps: int | None) -> DensityConfig:
    """Make `out` a run directory holding a shipped model's training state, ready for
    --resume: its config (steps replaced when given), checkpoint and metrics."""
    from pxd.storage import shipped as zoo

    src = zoo.resolve(name)
    state_path = os.path.join(src, "train_state.msgpack")
    if not os.path.isfile(state_path):
        raise PxdError(f"{name} keeps no training state to resume (train_state.msgpack); "
                       "use --init-from to fine-tune from its parameters")
    if os.path.exists(os.path.join(out, "config.json")):
        raise PxdError(f"{out} already holds a run; give a new --out for --resume-from")
    cfg = config.load_json(DensityConfig, os.path.join(src, "config.json"))
    if steps is not None:
        cfg = config.replace(cfg, steps=steps)
    state = checkpoint.load_state_msgpack(state_path, template_state(cfg))
    if int(state.step) >= cfg.steps:
        raise PxdError(f"{name} was saved at step {int(state.step)}; give --steps above it")
    checkpoint.save_state(out, int(state.step), state)
    meta = checkpoint.read_meta(src)
    meta.pop("best_test_bpd", None)  # measured on another slice; the run re-evaluates
    checkpoint.write_meta(out, dict(meta, resumed_from=name))
    checkpoint.write_config(out, cfg)
    return cfg


def run_train_density(
    cfg: DensityConfig,
    out: str,
    *,
    resume: bool = False,
    hours: float | None = None,
    keep_steps: bool = False,
    resume_from: str | None = None,
    data_dir: str | None = None,
    rep: Reporter | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) a density run in `out`. `hours` sets `steps` for a new run from
    the measured speed of this machine, so the cosine schedule ends on the budget;
    `keep_steps` resumes with the run's saved `steps` instead of `cfg.steps`;
    `resume_from` continues a shipped model's run (its config and state) in `out`."""
    rep = rep or Reporter(quiet=True)
    if resume_from is not None:
        if resume or hours is not None:
            raise PxdError("--resume-from starts from the shipped state; drop --resume/--hours")
        cfg = seed_from_zoo(resume_from, out, None if keep_steps else cfg.steps)
        resume, keep_steps = True, True
    if hours is not None and resume:
        raise PxdError("--hours sets the budget of a new run; --resume keeps the run's steps")
    if hours is not None and hours <= 0:
        raise PxdError("--hours must be positive")
    if resume and keep_steps and os.path.exists(os.path.join(out, "config.json")):
        saved = config.load_json(DensityConfig, os.path.join(out, "config.json"))
        cfg = config.replace(cfg, steps=saved.steps)
    checkpoint.check_run_dir(out, cfg, resume=resume)
    if cfg.schedule == "cosine" and cfg.steps <= cfg.warmup:
        raise PxdError(f"--steps ({cfg.steps}) must exceed the warm-up ({cfg.warmup} steps)")

    x_train, _ = data.load(f"{cfg.dataset}:{cfg.train_split}", data_dir)
    x_test, _ = data.load(f"{cfg.dataset}:{cfg.test_split}[:{cfg.eval_n}]", data_dir)
    model = build_model(cfg.model, x_train.shape[-1])
    key = jax.random.key(cfg.seed)
    params = initial_params(cfg, model, x_train.shape[1:], key=jax.random.fold_in(key, 0))
    if hours is not None:
        probe = make_train_step(make_loss_fn(model), make_density_optimizer(cfg), cfg.ema)
        steps, sec = budget_steps(hours, probe, init_state(params, {}, make_density_optimizer(
            cfg)), {"x": x_train[: cfg.batch_size]}, key=key)
        rep.info(f"budget {hours:g} h at {sec:.3f} s/step on this machine: {steps} steps")
        cfg = config.replace(cfg, steps=steps)
    checkpoint.write_config(out, cfg)
    tx = make_density_optimizer(cfg)
    state = init_state(params, {}, tx)
    if resume:
        _, state = checkpoint.restore_state(out, jax.device_get(state))
    nparams = sum(a.size for a in jax.tree_util.tree_leaves(params))
    rep.info(f"train-density: {cfg.dataset} preset={cfg.preset} params={nparams:,} "
             f"devices={len(jax.devices())} steps {int(state.step)}->{cfg.steps}")
    rep.info(config.to_json(cfg))

    step_fn = make_train_step(make_loss_fn(model), tx, cfg.ema)
    bpd_fn = make_bpd_fn(model)
    meta = checkpoint.read_meta(out) if resume else {}
    best = meta.get("best_test_bpd", math.inf)
    t0 = time.perf_counter()
    wall0 = meta.get("wall_s", 0.0)

    def eval_fn(state):
        nonlocal best
        bpd = float(np.mean(evaluate_bpd(bpd_fn, state.ema, x_test)))
        if bpd < best:
            best = bpd
            checkpoint.save_params(os.path.join(out, "best"), jax.device_get(state.ema))
        return {"test_bpd": bpd}

    evals = list(meta.get("evals", []))
    with rep.progress("train-density", total=cfg.steps - int(state.step)) as advance:
        ema_bpd = [None]

        def on_step(step, metrics, ips):
            b = float(metrics["bpd"])
            ema_bpd[0] = b if ema_bpd[0] is None else 0.95 * ema_bpd[0] + 0.05 * b
            advance(1, bpd=ema_bpd[0], **{"img/s": ips})

        def on_eval(step, ev):
            evals.append(dict(ev, wall_s=wall0 + time.perf_counter() - t0))
            rep.info(f"step {step}: test bits/dim {ev['test_bpd']:.4f}")
            write_meta()

        def write_meta():
            checkpoint.write_meta(out, {
                "kind": "density", "dataset": cfg.dataset, "preset": cfg.preset,
                "best_test_bpd": best, "evals": evals, "params": nparams,
                "wall_s": wall0 + time.perf_counter() - t0, "machine": machine(),
                "eval_n": cfg.eval_n,
            })

        state, _ = train_loop(
            state=state, step_fn=step_fn, data={"x": x_train}, batch_size=cfg.batch_size,
            steps=cfg.steps, key=jax.random.fold_in(key, 1), seed=cfg.seed, run_dir=out,
            ckpt_every=cfg.ckpt_every, eval_every=cfg.eval_every, eval_fn=eval_fn,
            on_step=on_step, on_eval=on_eval, stop_after=stop_after,
        )
    ema = jax.device_get(state.ema)
    if not os.path.isdir(os.path.join(out, "best")):
        checkpoint.save_params(os.path.join(out, "best"), ema)
    write_meta()
    result = {"out": out, "step": int(state.step), "best_test_bpd": best,
              "digest": params_digest(ema)}
    rep.json(result)
    return result
