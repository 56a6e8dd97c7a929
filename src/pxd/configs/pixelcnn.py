"""The PixelCNN++ density model's presets and training config, in one place.

`PIXELCNN_PRESETS` are architectures, `TRAIN_PRESETS` optimisation settings, both keyed by
preset name (smoke: tests, seconds; cpu: the shipped models' budget recipe; paper: the
paper's); `density_config(dataset, preset, **overrides)` resolves them into a strict,
frozen `DensityConfig`, the config of `pxd train-density` saved as the run's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pxd.configs.base import check_model_options, from_dict
from pxd.configs.datasets import DATASETS
from pxd.errors import PxdError

PIXELCNN_PRESETS: dict[str, dict] = {
    # seconds on a laptop core; for tests
    "smoke": dict(nr_filters=8, nr_resnet=1, nr_stages=1, downsample=False, dropout=0.0,
                  nr_mix=3, head="mixture"),
    # the best this 2-core CPU trains in hours; flat (no U-Net) so the fast row purifier applies
    "cpu": dict(nr_filters=32, nr_resnet=2, nr_stages=1, downsample=False, dropout=0.0,
                nr_mix=10, head="mixture"),
    # PixelCNN++ as published (Salimans et al. 2017)
    "paper": dict(nr_filters=160, nr_resnet=5, nr_stages=3, downsample=True, dropout=0.5,
                  nr_mix=10, head="mixture"),
}


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
    schedule: str = "exponential"  # or "cosine" (core.training.lr_schedule)
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


HEADS = ("mixture", "softmax")


def validate_density(cfg: DensityConfig) -> DensityConfig:
    """A DensityConfig's values (a saved config.json may have been edited by hand)."""
    if cfg.dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{cfg.dataset}' (choose from {', '.join(DATASETS)})")
    check_model_options(cfg.model, PIXELCNN_PRESETS, {"head": HEADS})
    return cfg


def density_config(dataset: str, preset: str, **overrides) -> DensityConfig:
    """Resolve a preset into a full config; `overrides` that are None are ignored."""
    if preset not in PIXELCNN_PRESETS:
        raise PxdError(f"unknown preset '{preset}' (choose from {', '.join(PIXELCNN_PRESETS)})")
    data = dict(TRAIN_PRESETS[preset], dataset=dataset, preset=preset,
                model=dict(PIXELCNN_PRESETS[preset]))
    data.update({k: v for k, v in overrides.items() if v is not None})

    cfg = validate_density(from_dict(DensityConfig, data))
    if cfg.schedule not in ("exponential", "cosine"):
        raise PxdError(f"unknown schedule '{cfg.schedule}' (choose from exponential, cosine)")
    if cfg.schedule == "cosine" and cfg.steps <= cfg.warmup:
        raise PxdError(f"--steps ({cfg.steps}) must exceed the warm-up ({cfg.warmup} steps)")
    return cfg
