"""`pxd train-clf` and `pxd attack`."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from pxd.configs import base as config
from pxd.configs.base import config_from, to_json
from pxd.configs.classifier import ClfConfig, validate
from pxd.configs.commands import AttackConfig
from pxd.core import attacks
from pxd.core.losses import make_clf_loss_fn
from pxd.core.training import init_state, make_clf_optimizer, make_train_step
from pxd.engine.batched import evaluate_accuracy, predict
from pxd.engine.devices import machine
from pxd.engine.trainer import train_loop
from pxd.errors import PxdError
from pxd.models.classifiers import build_classifier, init_variables, make_logits_fn
from pxd.report.terminal import Reporter
from pxd.storage import checkpoint, data, imageio
from pxd.storage.runs import load_classifier, params_digest


def run_train_clf(
    cfg: ClfConfig,
    out: str,
    *,
    resume: bool = False,
    data_dir: str | None = None,
    rep: Reporter | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train a classifier into the run dir `out`; `best/` holds the latest evaluated variables.

    `best/` is not selected by test accuracy (that would bias `test_acc`); it is rewritten at
    every evaluation and at the end, so a killed run still has usable parameters.
    """
    rep = rep or Reporter(quiet=True)
    validate(cfg)
    checkpoint.check_run_dir(out, cfg, resume=resume)

    x_train, y_train = data.load(f"{cfg.dataset}:{cfg.train_split}", data_dir)
    x_eval, y_eval = data.load(f"{cfg.dataset}:{cfg.test_split}[:{cfg.eval_n}]", data_dir)
    checkpoint.write_config(out, cfg)

    model = build_classifier(cfg)
    key = jax.random.key(cfg.seed)
    variables = init_variables(model, x_train.shape[1:], key=jax.random.fold_in(key, 0))
    tx = make_clf_optimizer(cfg)
    state = init_state(variables["params"], variables["batch_stats"], tx)
    if resume:
        _, state = checkpoint.restore_state(out, jax.device_get(state))
    nparams = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    rep.info(f"train-clf: {cfg.dataset} {cfg.arch} training={cfg.training} preset={cfg.preset} "
             f"params={nparams:,} devices={len(jax.devices())} "
             f"steps {int(state.step)}->{cfg.steps}")
    rep.info(config.to_json(cfg))

    # ema_decay 0 keeps state.ema == params: BatchNorm statistics belong to the raw weights
    step_fn = make_train_step(make_clf_loss_fn(model, cfg), tx, 0.0)
    meta = checkpoint.read_meta(out) if resume else {}
    t0 = time.perf_counter()
    wall0 = meta.get("wall_s", 0.0)
    evals = list(meta.get("evals", []))

    def inference(state) -> dict:
        return jax.device_get({"params": state.params, "batch_stats": state.model_state})

    saved_at = [None]  # step whose variables best/ holds

    def save_best(state):
        if saved_at[0] != int(state.step):
            checkpoint.save_params(os.path.join(out, "best"), inference(state))
            saved_at[0] = int(state.step)

    def eval_fn(state):
        f = make_logits_fn(model, state.params, state.model_state)
        acc = evaluate_accuracy(f, x_eval, y_eval)
        save_best(state)
        return {"eval_acc": acc}

    def write_meta(extra: dict):
        checkpoint.write_meta(out, {
            "kind": "classifier", "dataset": cfg.dataset, "arch": cfg.arch,
            "training": cfg.training, "preset": cfg.preset, "params": nparams,
            "evals": evals, "eval_n": len(y_eval), "wall_s": wall0 + time.perf_counter() - t0,
            "machine": machine(), **extra,
        })

    with rep.progress("train-clf", total=cfg.steps - int(state.step)) as advance:
        avg: dict[str, float] = {}

        def on_step(step, metrics, ips):
            for k in ("loss", "accuracy"):
                v = float(metrics[k])
                avg[k] = v if k not in avg else 0.95 * avg[k] + 0.05 * v
            advance(1, loss=avg["loss"], acc=avg["accuracy"], **{"img/s": ips})

        def on_eval(step, ev):
            evals.append(dict(ev, wall_s=wall0 + time.perf_counter() - t0))
            rep.info(f"step {step}: accuracy {ev['eval_acc']:.4f} on {len(y_eval)} test images")
            write_meta({"step": step, "complete": False})

        state, _ = train_loop(
            state=state, step_fn=step_fn, data={"x": x_train, "y": y_train},
            batch_size=cfg.batch_size, steps=cfg.steps, key=jax.random.fold_in(key, 1),
            seed=cfg.seed, run_dir=out, ckpt_every=cfg.ckpt_every, eval_every=cfg.eval_every,
            eval_fn=eval_fn, on_step=on_step, on_eval=on_eval, stop_after=stop_after,
        )
    save_best(state)
    variables = inference(state)
    step = int(state.step)
    result = {"out": out, "step": step, "complete": step >= cfg.steps,
              "digest": params_digest(variables)}
    if step >= cfg.steps:
        spec = f"{cfg.dataset}:{cfg.test_split}" + (f"[:{cfg.test_n}]" if cfg.test_n else "")
        x_test, y_test = data.load(spec, data_dir)
        f = make_logits_fn(model, variables["params"], variables["batch_stats"])
        result.update(test_acc=evaluate_accuracy(f, x_test, y_test), n=len(y_test),
                      test_split=spec)
        rep.info(f"test accuracy {result['test_acc']:.4f} on {spec}")
    write_meta({k: v for k, v in result.items() if k != "out"})
    rep.done(f"trained to step {step}: run saved in {out} (pxd attack/bench --clf {out})")
    rep.json(result)
    return result


# --------------------------------------------------------------------------- attack


def _check_attack_args(attack: str, eps: float, out: str | None, batch_size: int,
                       steps: int | None, restarts: int | None) -> dict:
    """Validate everything that needs no file; returns the attack's options."""
    if attack not in attacks.ATTACKS:
        raise PxdError(f"unknown attack '{attack}' (choose from {', '.join(attacks.ATTACKS)})")
    if not 0.0 <= eps <= 255.0:
        raise PxdError(f"--eps-attack must be in [0, 255] (pixel units), got {eps:g}")
    if eps != int(eps):
        raise PxdError(f"--eps-attack must be an integer on the 0-255 scale, got {eps:g}")
    if out is not None and not out.endswith(".npz"):
        raise PxdError(f"--out {out}: output must end in .npz")
    if batch_size <= 0:
        raise PxdError("--batch-size must be positive")
    opts = {}
    if steps is not None:
        if attack not in ("bim", "pgd"):
            raise PxdError("--steps applies to bim and pgd only")
        if steps <= 0:
            raise PxdError("--steps must be positive")
        opts["steps"] = steps
    if restarts is not None:
        if attack != "pgd":
            raise PxdError("--restarts applies to pgd only")
        if restarts <= 0:
            raise PxdError("--restarts must be positive")
        opts["restarts"] = restarts
    return opts


def run_attack(cfg: AttackConfig | str, clf: str | None = None, *,
               rep: Reporter | None = None, **options) -> dict:
    """Attack images with a trained classifier and write `out` (.npz).

    INPUT is a dataset spec (labels from it) or an image file/folder (labels from the file
    if it has them, else the classifier's clean predictions). The npz holds `x` (adversarial
    uint8, so `read_images` picks them up), `y` (labels used), `x_clean`, `pred_clean` and
    `pred_adv`; by default beside the input. `clf` None: the zoo's default classifier for
    the images' shape. Every check runs before the attack. `cfg`: an AttackConfig, or the
    input with the other fields as keywords; the resolved config is saved in the npz as its
    `config` member (JSON).
    """
    cfg = config_from(AttackConfig, cfg, "input", clf=clf, **options)
    input, clf, attack, eps, out = cfg.input, cfg.clf, cfg.attack, cfg.eps, cfg.out
    batch_size, steps, restarts, seed, data_dir = (cfg.batch_size, cfg.steps, cfg.restarts,
                                                    cfg.seed, cfg.data_dir)
    from pxd.configs.datasets import DATASETS
    from pxd.storage import shipped as zoo

    rep = rep or Reporter(quiet=True)
    opts = _check_attack_args(attack, eps, out, batch_size, steps, restarts)
    if data.is_dataset_spec(input) and not os.path.exists(input):
        x, y = data.load(input, data_dir)
        label_source = "dataset"
    else:
        x, y = imageio.read_images(input)
        label_source = "file" if y is not None else "predicted"
    if out is None:
        out = imageio.default_output(input, f"{attack}-eps{eps:g}")
        cfg = dataclasses.replace(cfg, out=out)
    imageio.check_writable(out, "--out")
    if clf is None:
        clf = zoo.default_path("classifier", tuple(x.shape[1:]))
    from pxd import api

    model, variables, cfg, meta = load_classifier(clf)
    info = DATASETS[cfg.dataset]
    if tuple(x.shape[1:]) != tuple(info.shape):
        raise PxdError(f"{input}: images of shape {tuple(x.shape[1:])}, but the classifier "
                       f"was trained on {cfg.dataset} images of shape {tuple(info.shape)}")
    if y is not None and (y.min() < 0 or y.max() >= info.num_classes):
        raise PxdError(f"{input}: labels must be in 0..{info.num_classes - 1}")

    n = len(x)
    rep.info(f"attack: {attack} eps={eps:g} on {n} images of {input} against {clf} "
             f"({cfg.arch}, {cfg.training}); labels: {label_source}")
    logits_fn = make_logits_fn(model, variables["params"], variables["batch_stats"])
    t0 = time.perf_counter()
    pred_clean = predict(logits_fn, x, batch_size=batch_size)
    if y is None:
        y = pred_clean
    with rep.progress(f"attack {attack}", total=n) as advance:
        x_adv = api.attack(x, y, attack, eps=eps, key=jax.random.key(seed),
                           clf=api.Classifier(model, variables, cfg, clf, meta),
                           batch_size=batch_size, on_batch=lambda k: advance(k), **opts)
    pred_adv = predict(logits_fn, x_adv, batch_size=batch_size)
    seconds = time.perf_counter() - t0

    y = np.asarray(y, np.int32)
    diff = x_adv.astype(np.float32) - x.astype(np.float32)
    linf = np.abs(diff).reshape(n, -1).max(1)
    l2 = np.sqrt((diff.reshape(n, -1) ** 2).sum(1))
    correct = pred_clean == y
    imageio.write_npz(out, x=x_adv, y=y, x_clean=x, pred_clean=pred_clean, pred_adv=pred_adv,
                      config=np.asarray(to_json(cfg)))
    result = {
        "out": out, "attack": attack, "eps": eps, "n": n, "labels": label_source,
        "acc_clean": float(correct.mean()), "acc_adv": float((pred_adv == y).mean()),
        # among initially-correct images, the fraction the attack made wrong
        "success_rate": float((pred_adv[correct] != y[correct]).mean()) if correct.any()
        else None,
        "linf_mean": float(linf.mean()), "linf_max": float(linf.max()),
        "l2_mean": float(l2.mean()), "l2_max": float(l2.max()),
        "seconds": seconds, "images_per_s": n / max(seconds, 1e-9), **opts,
    }
    note = " (labels are the clean predictions)" if label_source == "predicted" else ""
    rep.table(f"{attack} eps={eps:g} on {n} images{note}", ["metric", "value"], [
        ["accuracy before", result["acc_clean"]], ["accuracy after", result["acc_adv"]],
        ["success rate", "n/a" if result["success_rate"] is None else result["success_rate"]],
        ["L-inf mean / max", f"{result['linf_mean']:.3g} / {result['linf_max']:.3g}"],
        ["L2 mean / max", f"{result['l2_mean']:.4g} / {result['l2_max']:.4g}"],
        ["seconds", seconds], ["images/s", result["images_per_s"]], ["output", out],
    ])
    rep.done(f"attacked {n} image{'s' * (n != 1)}: wrote {out}")
    rep.json(result)
    return result
