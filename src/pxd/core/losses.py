"""Training losses (pure, jittable): `loss_fn(params, model_state, batch, *, key)` returning
`(loss, (metrics, new_model_state))` for `core.training.make_train_step`.

- density: mean NLL per sub-pixel in nats (metric `bpd`).
- classifiers, after Appendices B, C and G of the paper:
  - normal: cross-entropy on one-hot labels.
  - label-smoothing: soft targets, correct class 1 - eps and every other class eps / (N - 1)
    (Warde-Farley & Goodfellow; NOT optax's smooth_labels, which gives the correct class
    1 - eps + eps / N). eps = `label_smoothing`, 0.1 by default.
  - adv-fgsm / adv-bim: every batch is augmented, then an adversarial copy of each image is
    crafted with the CURRENT parameters in eval mode from the model's own predicted labels
    (no label leaking) with per-example eps ~ |N(0, delta^2)| truncated to [0, 2 delta]
    (`attacks.adversarial_batch`). Clean and adversarial copies go through the network as one
    batch and the loss is (1 - adv_weight) * CE(clean) + adv_weight * CE(adversarial) with
    true labels; adv_weight = 0.5 is Goodfellow et al.'s alpha = 0.5 and Kurakin et al.'s
    equal weighting.
  Augmentation (inside the jitted loss): random crop after 4-pixel reflect padding, plus a
  horizontal flip for CIFAR-10 only (Fashion-MNIST trains unflipped).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from jax import lax

from pxd.configs.classifier import ClfConfig
from pxd.core import attacks
from pxd.models.pixelcnn import PixelCNN


def make_density_loss_fn(model: PixelCNN):
    """Training loss: mean NLL per sub-pixel in nats; metric `bpd`."""

    def loss_fn(params, model_state, batch, *, key):
        nll = model.apply({"params": params}, batch["x"], train=True, rngs={"dropout": key})
        loss = jnp.mean(nll)
        return loss, ({"bpd": loss / math.log(2.0)}, model_state)

    return loss_fn


_ADV_METHOD = {"adv-fgsm": "fgsm", "adv-bim": "bim"}


_PAD = 4  # crop padding in pixels


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
