"""What differs between training a PixelCNN and a classifier, for the one driver
(`engine.trainer.train`): data, initial parameters, loss, optimiser, evaluation, what
`best/` holds, the progress fields, meta.json's fields and the final result.

- `DensityJob`: EMA parameters are evaluated (bits/dim on eval_n test images); `best/` holds
  the EMA parameters of the best evaluation so far. `hours` sets `steps` from this machine's
  measured speed before the run starts, so the cosine schedule ends on the budget.
- `ClassifierJob`: `best/` holds the LATEST evaluated variables, not the most accurate ones
  (selecting on test accuracy would bias `test_acc`); it is rewritten at every evaluation
  and at the end, so a killed run still has usable parameters. A complete run measures its
  accuracy on the test split (test_n images; 0: all). An adversarially trained run's
  evaluations also measure BIM accuracy (true labels, eps = adv_delta, the paper's step
  count) on the first `ADV_EVAL_N` evaluation images: its robustness curve.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from pxd.configs import base as config
from pxd.configs.classifier import ClfConfig
from pxd.configs.datasets import DATASETS
from pxd.configs.pixelcnn import DensityConfig
from pxd.core.likelihood import make_bpd_fn
from pxd.core.losses import make_clf_loss_fn, make_density_loss_fn
from pxd.core.training import (
    init_state,
    make_clf_optimizer,
    make_density_optimizer,
    make_train_step,
)
from pxd.engine.batched import craft, evaluate_accuracy, evaluate_bpd
from pxd.engine.trainer import budget_steps
from pxd.errors import PxdError
from pxd.models.classifiers import build_classifier, init_variables, make_logits_fn
from pxd.models.pixelcnn import build_model, init_params
from pxd.report.terminal import Reporter
from pxd.storage import checkpoint, data
from pxd.storage.runs import load_classifier, load_density, params_digest


def adopt(source: str, fresh_shapes, src):
    """`src` (the parameters of --init-from `source`) as device arrays, if its leaves have the
    shapes and dtypes of `fresh_shapes` (a `jax.eval_shape` of the fresh initialiser)."""
    def sig(a):
        return (tuple(np.shape(a)), str(a.dtype))

    want = jax.tree_util.tree_map(sig, fresh_shapes)
    if want != jax.tree_util.tree_map(sig, src):
        raise PxdError(f"--init-from {source}: parameters do not fit this architecture")
    return jax.tree_util.tree_map(jax.numpy.asarray, src)


def initial_params(cfg: DensityConfig, model, shape, *, key: jax.Array):
    """Fresh parameters, or those of `cfg.init_from` (a shipped model name or run dir),
    which must have the same architecture and dataset."""
    if cfg.init_from is None:
        return init_params(model, shape, key=key)
    _, src, src_cfg, _ = load_density(cfg.init_from)
    if src_cfg.dataset != cfg.dataset or dict(src_cfg.model) != dict(cfg.model):
        raise PxdError(
            f"--init-from {cfg.init_from}: it is a {src_cfg.dataset} PixelCNN with "
            f"{src_cfg.model}, this run is {cfg.dataset} with {cfg.model}; pick the same "
            "--dataset and --preset")
    return adopt(cfg.init_from, jax.eval_shape(
        lambda k: init_params(model, shape, key=k), key), src)


def template_state(cfg: DensityConfig | ClfConfig):
    """A training state of the right structure for `cfg`, a density or classifier config
    (to restore checkpoints into)."""
    shape = DATASETS[cfg.dataset].shape
    if isinstance(cfg, ClfConfig):
        model, tx = build_classifier(cfg), make_clf_optimizer(cfg)

        def fresh(k):
            v = init_variables(model, shape, key=k)
            return init_state(v["params"], v["batch_stats"], tx)
    else:
        model, tx = build_model(cfg.model, shape[-1]), make_density_optimizer(cfg)

        def fresh(k):
            return init_state(init_params(model, shape, key=k), {}, tx)
    shapes = jax.eval_shape(fresh, jax.random.key(0))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)



class DensityJob:
    """`pxd train-density` for the driver."""

    name = "train-density"
    kind = "density"

    def __init__(self, cfg: DensityConfig, *, hours: float | None = None):
        self.cfg, self.hours = cfg, hours
        self.best = math.inf

    def check(self) -> None:
        cfg = self.cfg
        if cfg.schedule == "cosine" and cfg.steps <= cfg.warmup:
            raise PxdError(f"--steps ({cfg.steps}) must exceed the warm-up ({cfg.warmup} steps)")

    def load_data(self, data_dir: str | None) -> dict[str, np.ndarray]:
        cfg = self.cfg
        x_train, _ = data.load(f"{cfg.dataset}:{cfg.train_split}", data_dir)
        self.x_test, _ = data.load(f"{cfg.dataset}:{cfg.test_split}[:{cfg.eval_n}]", data_dir)
        return {"x": x_train}

    def init(self, shape, *, key: jax.Array):
        self.model = build_model(self.cfg.model, shape[-1])
        return initial_params(self.cfg, self.model, shape, key=key), {}

    def prepare(self, params, model_state, train: dict, *, key: jax.Array,
                rep: Reporter) -> None:
        """With `hours`: steps from timing this machine, so the schedule ends on the budget."""
        if self.hours is None:
            return
        cfg = self.cfg
        probe = make_train_step(make_density_loss_fn(self.model), make_density_optimizer(cfg),
                                cfg.ema)
        steps, sec = budget_steps(self.hours, probe, init_state(params, {}, make_density_optimizer(
            cfg)), {"x": train["x"][: cfg.batch_size]}, key=key)
        rep.info(f"budget {self.hours:g} h at {sec:.3f} s/step on this machine: {steps} steps")
        if cfg.schedule == "cosine" and steps <= cfg.warmup:
            need = (cfg.warmup + 1) * sec / 3600
            raise PxdError(f"--hours {self.hours:g} buys {steps} steps at {sec:.2f} s/step here, "
                           f"not more than the warm-up's {cfg.warmup}; give at least "
                           f"--hours {need:.2g}")
        self.cfg = config.replace(cfg, steps=steps)

    def optimizer(self):
        return make_density_optimizer(self.cfg)

    def loss_fn(self):
        return make_density_loss_fn(self.model)

    @property
    def ema_decay(self) -> float:
        return self.cfg.ema

    def header(self, nparams: int, step: int, ndev: int) -> str:
        cfg = self.cfg
        return (f"train-density: {cfg.dataset} preset={cfg.preset} params={nparams:,} "
                f"devices={ndev} steps {step}->{cfg.steps}")

    def begin(self, meta: dict) -> None:
        """Before the loop, with the run's saved meta.json ({} for a new run)."""
        self.best = meta.get("best_test_bpd", math.inf)
        self.bpd_fn = make_bpd_fn(self.model)
        self.ema_bpd = None

    def evaluate(self, state, out: str) -> dict:
        bpd = float(np.mean(evaluate_bpd(self.bpd_fn, state.ema, self.x_test)))
        if bpd < self.best:
            self.best = bpd
            checkpoint.save_params(os.path.join(out, "best"), jax.device_get(state.ema))
        return {"test_bpd": bpd}

    def progress(self, metrics) -> dict:
        b = float(metrics["bpd"])
        self.ema_bpd = b if self.ema_bpd is None else 0.95 * self.ema_bpd + 0.05 * b
        return {"bpd": self.ema_bpd}

    def eval_message(self, step: int, ev: dict) -> str:
        return f"step {step}: test bits/dim {ev['test_bpd']:.4f}"

    def eval_meta(self, step: int) -> dict:
        return {}

    def meta(self) -> dict:
        cfg = self.cfg
        return {"kind": "density", "dataset": cfg.dataset, "preset": cfg.preset,
                "best_test_bpd": self.best, "eval_n": cfg.eval_n}

    def finish(self, state, out: str, write_meta, data_dir: str | None,
               rep: Reporter) -> dict:
        ema = jax.device_get(state.ema)
        if not os.path.isdir(os.path.join(out, "best")):
            checkpoint.save_params(os.path.join(out, "best"), ema)
        write_meta()
        return {"out": out, "step": int(state.step), "best_test_bpd": self.best,
                "digest": params_digest(ema)}


ADV_EVAL_N = 500  # images of each evaluation's BIM accuracy (adversarial trainings)


def bim_accuracy(logits_fn, x: np.ndarray, y: np.ndarray, eps: float, *, key: jax.Array) -> float:
    """Accuracy under BIM at `eps` (true labels, alpha 1, the paper's step count)."""
    x_adv = craft("bim", logits_fn, x, y, eps=eps, key=key)
    return evaluate_accuracy(logits_fn, x_adv, y)


class ClassifierJob:
    """`pxd train-clf` for the driver."""

    name = "train-clf"
    kind = "classifier"
    ema_decay = 0.0  # state.ema == params: BatchNorm statistics belong to the raw weights

    def __init__(self, cfg: ClfConfig):
        self.cfg = cfg
        self.saved_at = None  # step whose variables best/ holds

    def check(self) -> None:
        pass  # configs.classifier.validate ran before the run directory was checked

    def load_data(self, data_dir: str | None) -> dict[str, np.ndarray]:
        cfg = self.cfg
        x_train, y_train = data.load(f"{cfg.dataset}:{cfg.train_split}", data_dir)
        self.x_eval, self.y_eval = data.load(f"{cfg.dataset}:{cfg.test_split}[:{cfg.eval_n}]",
                                             data_dir)
        return {"x": x_train, "y": y_train}

    def init(self, shape, *, key: jax.Array):
        self.model = build_classifier(self.cfg)
        variables = (self.warm_start(shape, key=key) if self.cfg.init_from is not None
                     else init_variables(self.model, shape, key=key))
        return variables["params"], variables["batch_stats"]

    def warm_start(self, shape, *, key: jax.Array) -> dict:
        """The variables of `init_from` (a warm start, e.g. adversarial training from a
        normally trained network), which must be the same architecture on the same data."""
        cfg = self.cfg
        _, src, src_cfg, _ = load_classifier(cfg.init_from)
        if (src_cfg.dataset, src_cfg.arch, src_cfg.model) != (cfg.dataset, cfg.arch, cfg.model):
            raise PxdError(
                f"--init-from {cfg.init_from}: it is a {src_cfg.dataset} {src_cfg.arch} "
                f"{src_cfg.preset}, this run is {cfg.dataset} {cfg.arch} {cfg.preset}; pick the "
                "same --dataset, --arch and --preset")
        return adopt(cfg.init_from, jax.eval_shape(
            lambda k: init_variables(self.model, shape, key=k), key), src)

    def prepare(self, params, model_state, train: dict, *, key: jax.Array,
                rep: Reporter) -> None:
        pass

    def optimizer(self):
        return make_clf_optimizer(self.cfg)

    def loss_fn(self):
        return make_clf_loss_fn(self.model, self.cfg)

    def header(self, nparams: int, step: int, ndev: int) -> str:
        cfg = self.cfg
        return (f"train-clf: {cfg.dataset} {cfg.arch} training={cfg.training} "
                f"preset={cfg.preset} params={nparams:,} devices={ndev} "
                f"steps {step}->{cfg.steps}")

    def begin(self, meta: dict) -> None:
        """Before the loop, with the run's saved meta.json ({} for a new run)."""
        self.avg: dict[str, float] = {}

    @staticmethod
    def inference(state) -> dict:
        return jax.device_get({"params": state.params, "batch_stats": state.model_state})

    def save_best(self, state, out: str) -> None:
        if self.saved_at != int(state.step):
            checkpoint.save_params(os.path.join(out, "best"), self.inference(state))
            self.saved_at = int(state.step)

    def evaluate(self, state, out: str) -> dict:
        f = make_logits_fn(self.model, state.params, state.model_state)
        ev = {"eval_acc": evaluate_accuracy(f, self.x_eval, self.y_eval)}
        if self.cfg.training.startswith("adv-"):
            x, y, eps = self.x_eval[:ADV_EVAL_N], self.y_eval[:ADV_EVAL_N], self.cfg.adv_delta
            ev.update(eval_bim_acc=bim_accuracy(f, x, y, eps, key=jax.random.key(self.cfg.seed)),
                      eval_bim_eps=eps, eval_bim_n=len(y))
        self.save_best(state, out)
        return ev

    def progress(self, metrics) -> dict:
        avg = self.avg
        for k in ("loss", "accuracy"):
            v = float(metrics[k])
            avg[k] = v if k not in avg else 0.95 * avg[k] + 0.05 * v
        return {"loss": avg["loss"], "acc": avg["accuracy"]}

    def eval_message(self, step: int, ev: dict) -> str:
        msg = f"step {step}: accuracy {ev['eval_acc']:.4f} on {len(self.y_eval)} test images"
        if "eval_bim_acc" in ev:
            msg += (f", {ev['eval_bim_acc']:.4f} under BIM eps {ev['eval_bim_eps']:g} "
                    f"on {ev['eval_bim_n']}")
        return msg

    def eval_meta(self, step: int) -> dict:
        return {"step": step, "complete": False}

    def meta(self) -> dict:
        cfg = self.cfg
        return {"kind": "classifier", "dataset": cfg.dataset, "arch": cfg.arch,
                "training": cfg.training, "preset": cfg.preset, "eval_n": len(self.y_eval)}

    def finish(self, state, out: str, write_meta, data_dir: str | None,
               rep: Reporter) -> dict:
        cfg = self.cfg
        self.save_best(state, out)
        variables = self.inference(state)
        step = int(state.step)
        result = {"out": out, "step": step, "complete": step >= cfg.steps,
                  "digest": params_digest(variables)}
        if step >= cfg.steps:
            spec = f"{cfg.dataset}:{cfg.test_split}" + (f"[:{cfg.test_n}]" if cfg.test_n else "")
            x_test, y_test = data.load(spec, data_dir)
            f = make_logits_fn(self.model, variables["params"], variables["batch_stats"])
            result.update(test_acc=evaluate_accuracy(f, x_test, y_test), n=len(y_test),
                          test_split=spec)
            rep.info(f"test accuracy {result['test_acc']:.4f} on {spec}")
        write_meta(**{k: v for k, v in result.items() if k != "out"})
        rep.done(f"trained to step {step}: run saved in {out} (pxd attack/bench --clf {out})")
        return result
