"""Classifier glue: config, training loss, eval-mode logits, accuracy, crafting (pure), loading.

Training follows Appendices B, C and G of the paper:

- normal: cross-entropy on one-hot labels.
- label-smoothing: soft targets, correct class 1 - eps and every other class eps / (N - 1)
  (Warde-Farley & Goodfellow; NOT optax's smooth_labels, which gives the correct class
  1 - eps + eps / N). eps = `label_smoothing`, 0.1 by default.
- adv-fgsm / adv-bim: every batch is augmented, then an adversarial copy of each image is
  crafted with the CURRENT parameters in eval mode from the model's own predicted labels
  (no label leaking) with per-example eps ~ |N(0, delta^2)| truncated to [0, 2 delta]
  (`attacks.adversarial_batch`). Clean and adversarial copies go through the network as one
  batch and the loss is (1 - adv_weight) * CE(clean) + adv_weight * CE(adversarial) with true
  labels; adv_weight = 0.5 is Goodfellow et al.'s alpha = 0.5 and Kurakin et al.'s equal
  weighting.

Optimiser: SGD with Nesterov momentum, L2 weight decay on conv/dense kernels only, and a
learning rate that rises linearly over `warmup_steps` and then follows a half cosine to 0 at
`steps`. Augmentation (inside the jitted loss): random crop after 4-pixel reflect padding,
plus a horizontal flip for CIFAR-10 only (Fashion-MNIST trains unflipped).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from pxd.core import attacks
from pxd.engine import devices
from pxd.errors import PxdError
from pxd.models.classifiers import CLASSIFIER_PRESETS, make_classifier
from pxd.storage import checkpoint

TRAININGS = ("normal", "adv-fgsm", "adv-bim", "label-smoothing")
_ADV_METHOD = {"adv-fgsm": "fgsm", "adv-bim": "bim"}
_PAD = 4  # crop padding in pixels

# Per-preset optimisation settings; `model` comes from CLASSIFIER_PRESETS[arch][preset].
#   smoke: seconds (tests, dry runs); accuracy is barely above chance.
#   cpu:   ~20 epochs of CIFAR-10. ResNet-14 trained at ~440 img/s on 2 busy cores (~40 min);
#          adv-fgsm at ~160 img/s (~1.8 h). ~80-85% is the usual result of this recipe
#          (not yet measured here).
#   paper: ~200 epochs, the usual CIFAR ResNet recipe.
TRAIN_PRESETS: dict[str, dict] = {
    "smoke": dict(batch_size=32, lr=0.05, warmup_steps=0, steps=20, eval_every=0, eval_n=64,
                  test_n=64, ckpt_every=10),
    "cpu": dict(batch_size=128, lr=0.1, warmup_steps=200, steps=8000, eval_every=1000,
                eval_n=1000, test_n=0, ckpt_every=250),
    "paper": dict(batch_size=128, lr=0.1, warmup_steps=1000, steps=80000, eval_every=4000,
                  eval_n=10000, test_n=0, ckpt_every=2000),
}


@dataclass(frozen=True)
class ClfConfig:
    """`pxd train-clf`. `steps` counts optimiser steps of `batch_size` clean images."""

    dataset: str = "cifar10"
    arch: str = "resnet"
    training: str = "normal"
    preset: str = "cpu"
    model: dict = field(default_factory=dict)
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    warmup_steps: int = 200  # linear warm-up, then half-cosine decay to 0 at `steps`
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # L2 on kernels
    steps: int = 8000
    eval_every: int = 1000  # accuracy on eval_n test images every this many steps
    eval_n: int = 1000
    test_n: int = 0  # test images for the final accuracy in meta.json; 0: the whole split
    ckpt_every: int = 250
    seed: int = 0
    augment: bool = True
    label_smoothing: float = 0.1  # used by training='label-smoothing' only
    adv_delta: float = 8.0  # delta of the training eps distribution (Appendix C)
    adv_weight: float = 0.5  # weight of the adversarial half of the loss
    train_split: str = "train"
    test_split: str = "test"


def _lists(tree: Any) -> Any:
    """JSON round trip: tuples become lists, so a config equals itself reloaded."""
    return json.loads(json.dumps(tree))


def _tuples(v: Any) -> Any:
    """Lists back to tuples: flax modules must be hashable."""
    return tuple(_tuples(a) for a in v) if isinstance(v, list | tuple) else v


def validate(cfg: ClfConfig) -> ClfConfig:
    from pxd.storage.data import DATASETS

    if cfg.dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{cfg.dataset}' (choose from {', '.join(DATASETS)})")
    if cfg.arch not in CLASSIFIER_PRESETS:
        raise PxdError(f"unknown arch '{cfg.arch}' (choose from {', '.join(CLASSIFIER_PRESETS)})")
    if cfg.training not in TRAININGS:
        raise PxdError(f"unknown training '{cfg.training}' (choose from {', '.join(TRAININGS)})")
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise PxdError("steps and batch_size must be positive")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise PxdError("label_smoothing must be in [0, 1)")
    if not 0.0 <= cfg.adv_weight <= 1.0:
        raise PxdError("adv_weight must be in [0, 1]")
    return cfg


def clf_config(dataset: str, arch: str, training: str, preset: str, **overrides) -> ClfConfig:
    """Resolve a preset into a full config; `overrides` that are None are ignored."""
    from pxd.configs.base import from_dict

    if arch not in CLASSIFIER_PRESETS:
        raise PxdError(f"unknown arch '{arch}' (choose from {', '.join(CLASSIFIER_PRESETS)})")
    if preset not in TRAIN_PRESETS:
        raise PxdError(f"unknown preset '{preset}' (choose from {', '.join(TRAIN_PRESETS)})")
    data = dict(TRAIN_PRESETS[preset], dataset=dataset, arch=arch, training=training,
                preset=preset, model=_lists(CLASSIFIER_PRESETS[arch][preset]))
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["model"] = _lists(data["model"])
    return validate(from_dict(ClfConfig, data))


def build_classifier(cfg: ClfConfig):
    from pxd.storage.data import DATASETS

    model_cfg = {k: _tuples(v) for k, v in cfg.model.items()}
    return make_classifier(cfg.arch, model_cfg, DATASETS[cfg.dataset].num_classes)


def init_variables(model, shape: tuple[int, int, int], *, key: jax.Array) -> dict:
    """{'params', 'batch_stats'} for images of `shape` (H, W, C)."""
    x = jnp.zeros((1,) + tuple(shape), jnp.float32)
    return dict(jax.jit(lambda k: model.init({"params": k}, x, train=False))(key))


# --------------------------------------------------------------------------- training


def soft_targets(y: jax.Array, num_classes: int, eps: float) -> jax.Array:
    """Correct class 1 - eps, every other class eps / (N - 1); eps = 0 gives one-hot."""
    hot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    return hot * (1.0 - eps) + (1.0 - hot) * (eps / (num_classes - 1))


def augment(x: jax.Array, *, key: jax.Array, flip: bool) -> jax.Array:
    """Random crop after 4-pixel reflect padding, optional horizontal flip; keeps integers."""
    n, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(x, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="reflect")
    off = jax.random.randint(k_crop, (n, 2), 0, 2 * _PAD + 1)
    out = jax.vmap(lambda im, o: lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, off)
    if flip:
        f = jax.random.bernoulli(k_flip, 0.5, (n,)).reshape(n, 1, 1, 1)
        out = jnp.where(f, out[:, :, ::-1], out)
    return out


def training_adversarial(model, params, batch_stats, x: jax.Array, *, method: str,
                         key: jax.Array, delta: float) -> jax.Array:
    """Appendix C examples for adversarial training, uint8; no gradient flows back.

    Crafted with the current parameters in eval mode from the model's predicted labels
    (`attacks.adversarial_batch` never sees the true labels).
    """
    frozen = lax.stop_gradient({"params": params, "batch_stats": batch_stats})

    def logits_fn(z):
        return model.apply(frozen, z, train=False)

    return lax.stop_gradient(
        attacks.adversarial_batch(logits_fn, x, method=method, key=key, delta=delta)
    )


def make_clf_loss_fn(model, cfg: ClfConfig):
    """`loss_fn(params, batch_stats, batch, *, key)` for `training.make_train_step`.

    batch: {'x': uint8 (B, H, W, C), 'y': int (B,)}. Metrics: accuracy (clean inputs as
    trained on, i.e. augmented) and, for adversarial training, adv_accuracy.
    """
    num_classes = model.num_classes
    flip = cfg.dataset == "cifar10"
    method = _ADV_METHOD.get(cfg.training)
    eps_ls = cfg.label_smoothing if cfg.training == "label-smoothing" else 0.0

    def loss_fn(params, batch_stats, batch, *, key):
        k_aug, k_adv, k_drop = jax.random.split(key, 3)
        x = batch["x"].astype(jnp.float32)
        y = batch["y"].astype(jnp.int32)
        n = x.shape[0]
        if cfg.augment:
            x = augment(x, key=k_aug, flip=flip)
        if method is not None:
            x_adv = training_adversarial(model, params, batch_stats, x, method=method,
                                         key=k_adv, delta=cfg.adv_delta)
            # interleave (not concatenate): each device keeps its own examples, whereas
            # concatenating along the sharded batch axis costs all-to-all traffic
            x = jnp.stack([x, x_adv.astype(jnp.float32)], 1).reshape((2 * n,) + x.shape[1:])
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True,
            mutable=["batch_stats"], rngs={"dropout": k_drop},
        )
        logits = logits.reshape(n, -1, num_classes)  # (B, 1 or 2 (clean, adversarial), K)
        targets = soft_targets(y, num_classes, eps_ls)
        ce = optax.softmax_cross_entropy(logits[:, 0], targets)
        metrics = {"accuracy": jnp.mean(jnp.argmax(logits[:, 0], -1) == y)}
        loss = jnp.mean(ce)
        if method is not None:
            ce_adv = optax.softmax_cross_entropy(logits[:, 1], targets)
            loss = (1.0 - cfg.adv_weight) * loss + cfg.adv_weight * jnp.mean(ce_adv)
            metrics["adv_accuracy"] = jnp.mean(jnp.argmax(logits[:, 1], -1) == y)
        return loss, (metrics, updates["batch_stats"])

    return loss_fn


def lr_schedule(cfg: ClfConfig):
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
        optax.sgd(lr_schedule(cfg), momentum=cfg.momentum, nesterov=True),
    )


# --------------------------------------------------------------------------- inference


def _apply(model, variables, x):
    return model.apply(variables, jnp.asarray(x, jnp.float32), train=False)


@functools.cache
def _bound_apply(model):
    # one function object per model, so jitted callers hit their cache across calls
    return functools.partial(_apply, model)


def make_logits_fn(model, params, batch_stats) -> jax.tree_util.Partial:
    """Eval-mode `logits_fn(x float32 (N,H,W,C) in 0..255) -> logits (N, K)`.

    A `jax.tree_util.Partial`: the variables are pytree leaves, so jitted code takes them as
    arguments (no constants baked into programs) and can place them on the mesh.
    """
    return jax.tree_util.Partial(_bound_apply(model), {"params": params,
                                                       "batch_stats": batch_stats})


def _as_partial(logits_fn) -> jax.tree_util.Partial:
    if isinstance(logits_fn, jax.tree_util.Partial):
        return logits_fn
    return jax.tree_util.Partial(logits_fn)  # any callable: closed over, compiled per object


def _replicate(logits_fn, m):
    return jax.device_put(_as_partial(logits_fn), devices.replicated(m))


@jax.jit
def _predict(logits_fn, x):
    return jnp.argmax(logits_fn(x.astype(jnp.float32)), -1).astype(jnp.int32)


def predict(logits_fn, x: np.ndarray, *, batch_size: int = 256, on_batch=None) -> np.ndarray:
    """Predicted labels int32 (N,) of uint8 images, sharded over devices."""
    m = devices.mesh()
    f = _replicate(logits_fn, m)
    return devices.map_batches(lambda xb: _predict(f, xb), (np.asarray(x),), batch_size, m,
                               on_batch)


def evaluate_accuracy(logits_fn, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    return float(np.mean(predict(logits_fn, x, batch_size=batch_size) == np.asarray(y)))


@functools.cache
def _jitted_attack(name: str, opts: tuple):
    attack = attacks.ATTACKS[name]

    def run(logits_fn, x, y, eps, batch_index, key):
        k = jax.random.fold_in(key, batch_index)
        return attack(logits_fn, x, y, eps=eps, key=k, **dict(opts))

    # iterative attacks jit their own steps and drive the loop from the host (fast on CPU)
    return run if name in attacks.ITERATIVE else jax.jit(run)


def craft(attack_name: str, logits_fn, x: np.ndarray, y: np.ndarray, *, eps, key: jax.Array,
          batch_size: int = 100, on_batch=None, mesh=None, **opts) -> np.ndarray:
    """Adversarial uint8 images of `x` (uint8 (N,H,W,C)) against labels `y` (N,).

    eps: a float or per-example array (N,) on the 0..255 scale. Batches are sharded over
    devices; batch b uses key fold_in(key, b). Compiles once per (attack, options, batch
    shape, logits_fn). `opts` go to the attack (e.g. steps, restarts). `mesh`: the devices
    to shard over (default: all).
    """
    if attack_name not in attacks.ATTACKS:
        raise PxdError(f"unknown attack '{attack_name}' (choose from {', '.join(attacks.ATTACKS)})")
    m = mesh if mesh is not None else devices.mesh()
    x = np.asarray(x)
    n = x.shape[0]
    eps_arr = np.broadcast_to(np.asarray(eps, np.float32), (n,)).copy()
    f = _replicate(logits_fn, m)
    run = _jitted_attack(attack_name, tuple(sorted(opts.items())))
    batch_no = itertools.count()  # map_batches visits batches in order

    def one(xb, yb, eb):
        return run(f, xb, yb, eb, np.int32(next(batch_no)), key)

    return devices.map_batches(one, (x, np.asarray(y, np.int32), eps_arr), batch_size, m,
                               on_batch)


# --------------------------------------------------------------------------- loading


def load_classifier(path: str):
    """(model, variables, config, meta) of a `pxd train-clf` run dir or shipped model name."""
    from pxd.configs.base import load_json
    from pxd.storage.runs import run_params_path
    from pxd.storage.shipped import not_found_hint, resolve

    path = resolve(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.exists(cfg_path):
        raise PxdError(f"classifier checkpoint not found: {path} (a run dir of pxd train-clf)"
                       f"{not_found_hint(path, 'classifier')}")
    if checkpoint.model_kind(path) == "density":
        raise PxdError(f"{path} is a density model (PixelCNN), not a classifier: give it as "
                       "--density; --clf takes a pxd train-clf run or a shipped classifier "
                       "(pxd zoo)")
    try:
        cfg = validate(load_json(ClfConfig, cfg_path))
    except PxdError as e:
        raise PxdError(f"{path} is not a classifier run dir ({e})") from None
    model = build_classifier(cfg)
    variables = checkpoint.load_params(run_params_path(path))
    return model, dict(variables), cfg, checkpoint.read_meta(path)
