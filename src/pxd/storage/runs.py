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
import numpy as np

from pxd.configs.base import load_json
from pxd.configs.classifier import ClfConfig, validate
from pxd.configs.datasets import DATASETS
from pxd.configs.pixelcnn import DensityConfig, validate_density
from pxd.errors import PxdError
from pxd.models.classifiers import build_classifier, init_variables
from pxd.models.pixelcnn import build_model, init_params
from pxd.storage import checkpoint, shipped
from pxd.storage.checkpoint import run_params_path


def params_digest(params) -> str:
    """sha256 over the parameter bytes in tree order (identifies a model in reports)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
        h.update(memoryview(leaf.tobytes()))
    return h.hexdigest()


def density_config_of(path: str) -> tuple[str, DensityConfig]:
    """(folder, config) of a density run directory or shipped model name, without reading
    its weights; one-line errors for a missing folder or a classifier."""
    path = shipped.resolve(path)
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
        raise PxdError(f"density checkpoint not found: {path} (a run dir of pxd train-density"
                       f"){shipped.not_found_hint(path, 'density')}")
    if checkpoint.model_kind(path) == "classifier":
        raise PxdError(f"{path} is a classifier, not a density model: give it as --clf; "
                       "--density takes a pxd train-density run or a shipped PixelCNN (pxd zoo)")
    try:
        return path, validate_density(load_json(DensityConfig, os.path.join(path, "config.json")))
    except PxdError as e:
        raise PxdError(f"{path} is not a density run dir ({e})") from None


def load_density(path: str):
    """(model, params, config, meta) of a density run directory or shipped model name."""
    path, cfg = density_config_of(path)
    shape = DATASETS[cfg.dataset].shape
    model = build_model(cfg.model, shape[-1])
    params = checkpoint.load_params(run_params_path(path))
    check_weights(path, "PixelCNN", params, jax.eval_shape(
        lambda k: init_params(model, tuple(shape), key=k), jax.random.key(0)))
    return model, params, cfg, checkpoint.read_meta(path)


def _signature(tree) -> list[tuple[str, tuple, str]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(k), tuple(np.shape(v)), str(v.dtype)) for k, v in leaves]


def check_weights(path: str, what: str, weights, fresh) -> None:
    """The weights loaded from `path` have the structure, shapes and dtypes of `fresh` (a
    `jax.eval_shape` of the model's initialiser, the model its config.json describes), and
    hold no NaN or inf: a folder mixing two models, or with damaged bytes, is one line here
    instead of a Flax scope error or bits/dim nan later."""
    got, want = _signature(weights), _signature(fresh)
    if got != want:
        diff = next((g[0] for g, w in zip(got, want, strict=False) if g != w),
                    (got if len(got) > len(want) else want)[min(len(got), len(want))][0])
        raise PxdError(f"{path}: its parameters do not fit the {what} its config.json "
                       f"describes (first difference at {diff}); the folder mixes two models "
                       "or is damaged: copy or train it again")
    for k, v in jax.tree_util.tree_flatten_with_path(weights)[0]:
        a = np.asarray(v)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise PxdError(f"{path}: parameters hold NaN or inf (at {jax.tree_util.keystr(k)}); "
                           "the file is damaged: copy or train it again")


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
    shape = tuple(DATASETS[cfg.dataset].shape)
    check_weights(path, "classifier", variables, jax.eval_shape(
        lambda k: init_variables(model, shape, key=k), jax.random.key(0)))
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
