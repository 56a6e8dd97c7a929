"""`pxd train-density` and `pxd score`."""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from pxd import checkpoint, config, data, devices
from pxd.density import DensityConfig, build_model, init_params, make_bpd_fn, make_loss_fn
from pxd.report import Reporter
from pxd.store import machine, params_digest
from pxd.training import init_state, make_optimizer, make_train_step, train_loop


def evaluate_bpd(bpd_fn, params, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Per-image bits/dim of uint8 images, sharded over devices."""
    return devices.map_batches(lambda xb: bpd_fn(params, xb), (x,), batch_size)


def run_train_density(
    cfg: DensityConfig,
    out: str,
    *,
    resume: bool = False,
    data_dir: str | None = None,
    rep: Reporter | None = None,
    stop_after: int | None = None,
) -> dict:
    rep = rep or Reporter(quiet=True)
    checkpoint.check_run_dir(out, cfg, resume=resume)

    x_train, _ = data.load(f"{cfg.dataset}:{cfg.train_split}", data_dir)
    x_test, _ = data.load(f"{cfg.dataset}:{cfg.test_split}[:{cfg.eval_n}]", data_dir)
    checkpoint.write_config(out, cfg)
    model = build_model(cfg.model, x_train.shape[-1])
    key = jax.random.key(cfg.seed)
    params = init_params(model, x_train.shape[1:], key=jax.random.fold_in(key, 0))
    tx = make_optimizer(cfg.lr, cfg.lr_decay)
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
