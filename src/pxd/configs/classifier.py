"""The classifiers' presets and training config, in one place.

`CLASSIFIER_PRESETS[arch][preset]` are architectures, `TRAIN_PRESETS[preset]` optimisation
settings; `clf_config(dataset, arch, training, preset, **overrides)` resolves them into a
strict, frozen `ClfConfig`, the config of `pxd train-clf` saved as the run's config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pxd.configs.base import check_model_options, from_dict
from pxd.configs.datasets import DATASETS
from pxd.errors import PxdError

# {arch: {preset: constructor kwargs}}.
#   smoke: seconds on 2 CPU cores, for tests and dry runs.
#   cpu:   estimated ~80% CIFAR-10 within well under an hour on 2 CPU cores (ResNet-14;
#          a VGG with a quarter of the paper's widths).
#   wide:  ResNet-14 at twice the cpu widths (4x its work): the >= 90% recipe, ~30 epochs
#          in ~4.5 h on one core (ResNet only).
#   paper: Appendix G (ResNet-62; VGG-16 with the paper's widths).
CLASSIFIER_PRESETS: dict[str, dict[str, dict]] = {
    "resnet": {
        "smoke": {"blocks_per_stage": 1, "widths": (8, 16, 32)},
        "cpu": {"blocks_per_stage": 2, "widths": (16, 32, 64)},
        "wide": {"blocks_per_stage": 2, "widths": (32, 64, 128)},
        "paper": {"blocks_per_stage": 10, "widths": (16, 32, 64)},
    },
    "vgg": {
        "smoke": {"stages": ((4, 1), (8, 1), (16, 1), (16, 1)), "fc": 32, "dropout": 0.1},
        "cpu": {"stages": ((16, 1), (32, 2), (128, 2), (128, 2)), "fc": 256, "dropout": 0.3},
        "paper": {"stages": ((16, 1), (128, 2), (512, 3), (512, 3)), "fc": 512, "dropout": 0.5},
    },
}


TRAININGS = ("normal", "adv-fgsm", "adv-bim", "label-smoothing")


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
    "wide": dict(batch_size=128, lr=0.1, warmup_steps=400, steps=11700, eval_every=1000,
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
    init_from: str | None = None  # warm start: a classifier run dir or shipped name


def _lists(tree: Any) -> Any:
    """JSON round trip: tuples become lists, so a config equals itself reloaded."""
    return json.loads(json.dumps(tree))


def eval_every_fields(cfg: ClfConfig, eval_every: int) -> dict:
    """The fields `--eval-every N` sets: N, and checkpoints at least as often, so `best/` and
    the training state are of one step (an export `--with-state` at any evaluation)."""
    return dict(eval_every=eval_every, ckpt_every=min(cfg.ckpt_every, eval_every))


def validate(cfg: ClfConfig) -> ClfConfig:
    if cfg.dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{cfg.dataset}' (choose from {', '.join(DATASETS)})")
    if cfg.arch not in CLASSIFIER_PRESETS:
        raise PxdError(f"unknown arch '{cfg.arch}' (choose from {', '.join(CLASSIFIER_PRESETS)})")
    if cfg.training not in TRAININGS:
        raise PxdError(f"unknown training '{cfg.training}' (choose from {', '.join(TRAININGS)})")
    check_model_options(cfg.model, CLASSIFIER_PRESETS[cfg.arch])
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise PxdError("steps and batch_size must be positive")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise PxdError("label_smoothing must be in [0, 1)")
    if not 0.0 <= cfg.adv_weight <= 1.0:
        raise PxdError("adv_weight must be in [0, 1]")
    return cfg


def clf_config(dataset: str, arch: str, training: str, preset: str, **overrides) -> ClfConfig:
    """Resolve a preset into a full config; `overrides` that are None are ignored."""

    if arch not in CLASSIFIER_PRESETS:
        raise PxdError(f"unknown arch '{arch}' (choose from {', '.join(CLASSIFIER_PRESETS)})")
    if preset not in TRAIN_PRESETS:
        raise PxdError(f"unknown preset '{preset}' (choose from {', '.join(TRAIN_PRESETS)})")
    if preset not in CLASSIFIER_PRESETS[arch]:
        raise PxdError(f"no preset '{preset}' for {arch} (choose from "
                       f"{', '.join(CLASSIFIER_PRESETS[arch])})")
    data = dict(TRAIN_PRESETS[preset], dataset=dataset, arch=arch, training=training,
                preset=preset, model=_lists(CLASSIFIER_PRESETS[arch][preset]))
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["model"] = _lists(data["model"])
    return validate(from_dict(ClfConfig, data))
