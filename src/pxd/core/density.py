"""Density model glue: config, model construction, training loss and bits/dim (pure)."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from pxd.errors import PxdError
from pxd.models.mixture import bits_per_dim
from pxd.models.pixelcnn import PIXELCNN_PRESETS, PixelCNN

# Per-preset optimisation settings; `model` comes from PIXELCNN_PRESETS. The `cpu` preset
# spends a fixed budget: warm-up, then a cosine to 0 at `steps` (docs/BENCHMARKS.md).
TRAIN_PRESETS: dict[str, dict] = {
    "smoke": dict(batch_size=16, lr=2e-3, lr_decay=1.0, ema=0.0, steps=30, eval_every=0,
                  eval_n=64, ckpt_every=10),
    "cpu": dict(batch_size=32, lr=2e-3, schedule="cosine", warmup=200, ema=0.999,
                steps=20000, eval_every=1000, eval_n=1000, ckpt_every=250),
    "paper": dict(batch_size=64, lr=1e-3, lr_decay=0.999995, ema=0.9995, steps=600000,
                  eval_every=5000, eval_n=10000, ckpt_every=2000),
}


@dataclass(frozen=True)
class DensityConfig:
    """`pxd train-density`. `steps` counts optimiser steps of `batch_size` images; it is
    also the budget the cosine schedule decays over. `init_from` names the model whose
    inference parameters the run starts from (a fine-tune; fresh optimiser state)."""

    dataset: str = "cifar10"
    preset: str = "cpu"
    model: dict = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 2e-3
    schedule: str = "exponential"  # or "cosine" (training.lr_schedule)
    lr_decay: float = 0.99999  # exponential only
    warmup: int = 0  # cosine only
    ema: float = 0.999
    steps: int = 20000
    eval_every: int = 1000
    eval_n: int = 1000
    ckpt_every: int = 250
    seed: int = 0
    train_split: str = "train"
    test_split: str = "test"
    init_from: str | None = None


def density_config(dataset: str, preset: str, **overrides) -> DensityConfig:
    """Resolve a preset into a full config; `overrides` that are None are ignored."""
    if preset not in PIXELCNN_PRESETS:
        raise PxdError(f"unknown preset '{preset}' (choose from {', '.join(PIXELCNN_PRESETS)})")
    data = dict(TRAIN_PRESETS[preset], dataset=dataset, preset=preset,
                model=dict(PIXELCNN_PRESETS[preset]))
    data.update({k: v for k, v in overrides.items() if v is not None})
    from pxd.configs.base import from_dict

    cfg = from_dict(DensityConfig, data)
    if cfg.schedule not in ("exponential", "cosine"):
        raise PxdError(f"unknown schedule '{cfg.schedule}' (choose from exponential, cosine)")
    if cfg.schedule == "cosine" and cfg.steps <= cfg.warmup:
        raise PxdError(f"--steps ({cfg.steps}) must exceed the warm-up ({cfg.warmup} steps)")
    return cfg


def make_density_optimizer(cfg: DensityConfig):
    from pxd.core.training import lr_schedule, make_optimizer

    return make_optimizer(lr_schedule(cfg.lr, schedule=cfg.schedule, lr_decay=cfg.lr_decay,
                                      warmup=cfg.warmup, steps=cfg.steps))


def build_model(model_cfg: dict, channels: int) -> PixelCNN:
    names = {f.name for f in dataclasses.fields(PixelCNN)} - {"parent", "name", "channels"}
    unknown = sorted(set(model_cfg) - names)
    if unknown:
        raise PxdError(f"unknown PixelCNN option(s): {', '.join(unknown)}")
    return PixelCNN(channels=channels, **model_cfg)


def init_params(model: PixelCNN, shape: tuple[int, int, int], *, key: jax.Array):
    x = jnp.zeros((1,) + tuple(shape), jnp.uint8)
    return model.init({"params": key}, x)["params"]


def make_loss_fn(model: PixelCNN):
    """Training loss: mean NLL per sub-pixel in nats; metric `bpd`."""

    def loss_fn(params, model_state, batch, *, key):
        nll = model.apply({"params": params}, batch["x"], train=True, rngs={"dropout": key})
        loss = jnp.mean(nll)
        return loss, ({"bpd": loss / math.log(2.0)}, model_state)

    return loss_fn


@functools.lru_cache(maxsize=16)
def make_bpd_fn(model: PixelCNN, exact: bool = False):
    """Jitted `bpd(params, x) -> (B,)` bits/dim.

    exact=False uses the closed-form mixture likelihood at the observed values;
    exact=True builds all 256 normalised logits per sub-pixel first (slower; equal up to
    float rounding, checked in tests). Cached per model, so chunked callers compile once.
    """

    def fn(params, x):
        v = {"params": params}
        h = model.apply(v, x, method=PixelCNN.features)
        if exact:
            from pxd.models.mixture import nll_from_logits

            nll = nll_from_logits(model.apply(v, h, x, method=PixelCNN.logits), x)
        else:
            nll = model.apply(v, h, x, method=PixelCNN.nll)
        return bits_per_dim(nll)

    return jax.jit(fn)


def make_nll_map_fn(model: PixelCNN):
    """Jitted per-sub-pixel NLL map in bits, (B, H, W, C)."""

    def fn(params, x):
        return model.apply({"params": params}, x) / math.log(2.0)

    return jax.jit(fn)
