"""`pxd attack`: adversarial examples against a classifier, written to one .npz."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from pxd.configs.base import config_from, to_json
from pxd.configs.commands import AttackConfig
from pxd.core import attacks
from pxd.engine.batched import predict
from pxd.errors import PxdError
from pxd.models.classifiers import make_logits_fn
from pxd.report.terminal import Reporter
from pxd.storage import data, imageio
from pxd.storage.runs import load_classifier


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

    model, variables, ccfg, meta = load_classifier(clf)
    info = DATASETS[ccfg.dataset]
    if tuple(x.shape[1:]) != tuple(info.shape):
        raise PxdError(f"{input}: images of shape {tuple(x.shape[1:])}, but the classifier "
                       f"was trained on {ccfg.dataset} images of shape {tuple(info.shape)}")
    if y is not None and (y.min() < 0 or y.max() >= info.num_classes):
        raise PxdError(f"{input}: labels must be in 0..{info.num_classes - 1}")

    n = len(x)
    rep.info(f"attack: {attack} eps={eps:g} on {n} images of {input} against {clf} "
             f"({ccfg.arch}, {ccfg.training}); labels: {label_source}")
    logits_fn = make_logits_fn(model, variables["params"], variables["batch_stats"])
    t0 = time.perf_counter()
    pred_clean = predict(logits_fn, x, batch_size=batch_size)
    if y is None:
        y = pred_clean
    with rep.progress(f"attack {attack}", total=n) as advance:
        x_adv = api.attack(x, y, attack, eps=eps, key=jax.random.key(seed),
                           clf=api.Classifier(model, variables, ccfg, clf, meta),
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
