"""Finding and loading trained models: run directories written by pxd's trainers."""

from __future__ import annotations

import hashlib
import os
import platform

import jax

from pxd.errors import PxdError
from pxd.storage import checkpoint


def machine() -> str:
    devs = jax.devices()
    return f"{platform.machine()} {os.cpu_count()} cores, {len(devs)} x {devs[0].device_kind}"


def params_digest(params) -> str:
    """sha256 over the parameter bytes in tree order (identifies a model in reports)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
        h.update(memoryview(leaf.tobytes()))
    return h.hexdigest()


def run_params_path(run_dir: str) -> str:
    """The inference parameters of a run: a zoo entry's `params.msgpack`, else the run's
    `best/`, else `final/`."""
    for name in ("params.msgpack", "best", "final"):
        p = os.path.join(run_dir, name)
        if os.path.exists(p):
            return p
    raise PxdError(f"{run_dir} holds no trained parameters (best/ or final/)")


def load_density(path: str):
    """(model, params, config, meta) of a density run directory or shipped model name."""
    from pxd.configs.base import load_json
    from pxd.core.density import DensityConfig, build_model
    from pxd.storage.data import DATASETS
    from pxd.storage.shipped import not_found_hint, resolve

    path = resolve(path)
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
        raise PxdError(f"density checkpoint not found: {path} (a run dir of pxd train-density"
                       f"){not_found_hint(path, 'density')}")
    if checkpoint.model_kind(path) == "classifier":
        raise PxdError(f"{path} is a classifier, not a density model: give it as --clf; "
                       "--density takes a pxd train-density run or a shipped PixelCNN (pxd zoo)")
    cfg = load_json(DensityConfig, os.path.join(path, "config.json"))
    shape = DATASETS[cfg.dataset].shape
    model = build_model(cfg.model, shape[-1])
    params = checkpoint.load_params(run_params_path(path))
    return model, params, cfg, checkpoint.read_meta(path)
