"""Input and model resolution shared by the commands."""

from __future__ import annotations

import os

import numpy as np

from pxd.errors import PxdError
from pxd.storage import data, imageio


def load_input(spec: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset spec (`cifar10:test[:500]`) or an image file/folder -> (x uint8 NHWC, y)."""
    if data.is_dataset_spec(spec) and not os.path.exists(spec):
        return data.load(spec, data_dir)
    return imageio.read_images(spec)


def resolve_density(path: str | None, shape: tuple[int, ...]):
    """(model, params, config, meta, path) of --density, or the shipped model for `shape`."""
    from pxd.storage.runs import load_density

    if path is None:
        from pxd.storage import shipped as zoo

        path = zoo.default_path("density", tuple(shape))
    model, params, cfg, meta = load_density(path)
    from pxd.storage.data import DATASETS

    want = DATASETS[cfg.dataset].shape
    if tuple(shape) != tuple(want):
        raise PxdError(
            f"images are {tuple(shape)} but the density model was trained on {cfg.dataset} "
            f"{tuple(want)}"
        )
    return model, params, cfg, meta, path


def check_eps(eps: float, name: str = "--eps") -> int:
    if eps < 0 or eps > 255:
        raise PxdError(f"{name} must be in [0, 255] (the 0-255 pixel scale), got {eps}")
    if eps != int(eps):
        raise PxdError(f"{name} must be an integer on the 0-255 scale, got {eps}")
    return int(eps)
