"""Trained models on disk, behind one resolver: a shipped model's name or a run directory.

`shipped.resolve` turns a name (`pixelcnn-c10-cpu`) into its folder under pxd/zoo/ and leaves
a path as it is; `load_density` and `load_classifier` read either kind of folder into
(model, weights, config, meta), with one-line errors for missing or wrong-kind models;
`resolve_density` adds the shipped default for an image shape. `params_digest` identifies
parameters in reports and cache keys.
"""

from __future__ import annotations

import hashlib
import os

import jax

from pxd.configs.base import load_json
from pxd.configs.classifier import ClfConfig, validate
from pxd.configs.datasets import DATASETS
from pxd.configs.pixelcnn import DensityConfig
from pxd.errors import PxdError
from pxd.models.classifiers import build_classifier
from pxd.models.pixelcnn import build_model
from pxd.storage import checkpoint, shipped
from pxd.storage.checkpoint import run_params_path


def params_digest(params) -> str:
    """sha256 over the parameter bytes in tree order (identifies a model in reports)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
        h.update(memoryview(leaf.tobytes()))
    return h.hexdigest()


def load_density(path: str):
    """(model, params, config, meta) of a density run directory or shipped model name."""
    path = shipped.resolve(path)
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
        raise PxdError(f"density checkpoint not found: {path} (a run dir of pxd train-density"
                       f"){shipped.not_found_hint(path, 'density')}")
    if checkpoint.model_kind(path) == "classifier":
        raise PxdError(f"{path} is a classifier, not a density model: give it as --clf; "
                       "--density takes a pxd train-density run or a shipped PixelCNN (pxd zoo)")
    cfg = load_json(DensityConfig, os.path.join(path, "config.json"))
    shape = DATASETS[cfg.dataset].shape
    model = build_model(cfg.model, shape[-1])
    params = checkpoint.load_params(run_params_path(path))
    return model, params, cfg, checkpoint.read_meta(path)


def load_classifier(path: str):
    """(model, variables, config, meta) of a `pxd train-clf` run dir or shipped model name."""
    path = shipped.resolve(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.exists(cfg_path):
        raise PxdError(f"classifier checkpoint not found: {path} (a run dir of pxd train-clf)"
                       f"{shipped.not_found_hint(path, 'classifier')}")
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


def resolve_density(path: str | None, shape: tuple[int, ...]):
    """(model, params, config, meta, path) of --density, or the shipped model for `shape`."""
    if path is None:
        path = shipped.default_path("density", tuple(shape))
    model, params, cfg, meta = load_density(path)

    want = DATASETS[cfg.dataset].shape
    if tuple(shape) != tuple(want):
        raise PxdError(
            f"images are {tuple(shape)} but the density model was trained on {cfg.dataset} "
            f"{tuple(want)}"
        )
    return model, params, cfg, meta, path
