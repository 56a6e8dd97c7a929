"""pxd's public Python API: PixelDefend as a preprocessing step in anyone's evaluation code.

Everything here is re-exported at the package top level (`pxd.purify`, ...) and is the
stable surface: internal modules may move, these names may not without a deprecation.

Images are anything `np.asarray` turns into integers 0..255 of shape (N, H, W, C) with C 1
or 3 (uint8 NHWC; a CPU PyTorch tensor works); outputs are numpy arrays. Every epsilon is
on the 0..255 pixel scale, as in the paper. Models default to the shipped ones (`pxd.zoo()`)
for the images' shape. Bad input raises `pxd.PxdError` with the CLI's one-line messages.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from pxd.configs.attacks import ATTACK_NAMES  # the registry's names, JAX-free
from pxd.engine import compile_cache
from pxd.errors import PxdError

# the one list of public names; `pxd/__init__.py` forwards these lazily
__all__ = ["Classifier", "Density", "PxdError", "attack", "bits_per_dim", "feature_squeeze",
           "load_classifier", "load_dataset", "load_density", "p_values", "purify", "roc_auc",
           "zoo"]

compile_cache.enable(default_on=False)  # a library writes to ~/.cache only when asked


@dataclasses.dataclass(frozen=True, eq=False)
class _Loaded:
    model: Any
    weights: Any  # Density: params; Classifier: variables (params, batch_stats)
    config: Any
    path: str
    meta: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        from pxd.configs.datasets import DATASETS

        return tuple(DATASETS[self.config.dataset].shape)


class Density(_Loaded):
    """A loaded PixelCNN: pass it as `density=` to skip loading on every call."""

    @property
    def params(self):
        return self.weights

    def bits_per_dim(self, images, *, batch_size: int = 64) -> np.ndarray:
        return bits_per_dim(images, density=self, batch_size=batch_size)


class Classifier(_Loaded):
    """A loaded classifier: `logits(images)` and `predict(images)` on uint8 images."""

    @property
    def variables(self):
        return self.weights

    @functools.cached_property
    def logits_fn(self):
        """Pure `f(x float32 (B,H,W,C) on 0..255) -> logits`, for gradients and attacks."""
        from pxd.models.classifiers import make_logits_fn

        return make_logits_fn(self.model, self.weights["params"],
                              self.weights.get("batch_stats", {}))

    def predict(self, images, *, batch_size: int = 128) -> np.ndarray:
        """Predicted labels int32 (N,)."""
        from pxd.engine.batched import predict

        x = _images(images, self.shape, "classifier")
        _check_batch(batch_size)
        return np.asarray(predict(self.logits_fn, x, batch_size=batch_size))

    def logits(self, images, *, batch_size: int = 128) -> np.ndarray:
        """Logits float32 (N, classes)."""
        from pxd.engine.batched import logits

        x = _images(images, self.shape, "classifier")
        _check_batch(batch_size)
        return np.asarray(logits(self.logits_fn, x, batch_size=batch_size))


def _check_batch(batch_size: int) -> None:
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise PxdError(f"batch_size must be a positive integer, got {batch_size!r}")


def _images(images, shape: tuple[int, ...] | None = None, what: str = "model") -> np.ndarray:
    """Validated uint8 NHWC images (the CLI's checks and messages)."""
    from pxd.storage import imageio

    try:
        a = np.asarray(images)
    except Exception as e:  # objects numpy cannot read
        raise PxdError(f"images: cannot be read as an array ({type(e).__name__})") from None
    if a.ndim == 3 and a.shape[-1] in (1, 3):  # (N,H,W) grey would be W = 1 or 3 wide
        raise PxdError(f"images: shape {a.shape} looks like one image; add a batch axis "
                       "(images[None])")
    x = imageio._check_array(a, "images")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise PxdError(f"images: shape {tuple(x.shape[1:])} per image, but the {what} "
                       f"expects {tuple(shape)}")
    return x


def _number(v, name: str, what: str = "a number"):
    """`v` as a Python float if it is a real, finite number (a 0-d numpy array counts);
    bools, strings, NaN and inf are refused."""
    from pxd.configs.base import check_finite

    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise PxdError(f"{name} must be {what}, got {v!r}")
    return float(check_finite(float(v), name))


def _eps(eps, name: str = "eps") -> int:
    from pxd.configs.base import check_eps

    return check_eps(_number(eps, name, "a number on the 0-255 scale"), name)


# Each attack option's kind: ("int", least value), ("float", least value, strict), "bool".
# None is allowed where the attack's default is None (steps, alpha, max_steps, num_classes).
_OPTION_RULES = {
    "steps": ("int", 1), "restarts": ("int", 1), "max_iter": ("int", 1),
    "search_steps": ("int", 1), "max_iterations": ("int", 1), "max_steps": ("int", 1),
    "num_classes": ("int", 2), "alpha": ("float", 0.0, True),
    "overshoot": ("float", 0.0, False), "learning_rate": ("float", 0.0, True),
    "initial_const": ("float", 0.0, True), "confidence": ("float", 0.0, False),
    "random_start": "bool", "abort_early": "bool",
}


def check_attack_options(name: str, options: dict) -> dict:
    """The options of attack `name`, each checked (known, of its type, in range): a bad
    one is a PxdError naming it, before any work. The CLI's --attack-opt uses this too."""
    import inspect

    from pxd.core import attacks

    if name not in attacks.ATTACKS:
        raise PxdError(f"unknown attack '{name}' (choose from {', '.join(ATTACK_NAMES)})")
    params = inspect.signature(attacks.ATTACKS[name].fn).parameters
    allowed = list(attacks.ATTACKS[name].defaults())
    out = {}
    for opt, v in options.items():
        if opt not in allowed:
            raise PxdError(f"attack {name}: no option {opt!r} "
                           f"(options: {', '.join(allowed) or 'none'})")
        rule = _OPTION_RULES.get(opt)
        if v is None and params[opt].default is None:
            out[opt] = None
        elif rule == "bool":
            if not isinstance(v, bool | np.bool_):
                raise PxdError(f"attack {name}: {opt} must be true or false, got {v!r}")
            out[opt] = bool(v)
        elif rule is not None and rule[0] == "int":
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < rule[1]:
                raise PxdError(f"attack {name}: {opt} must be an integer >= {rule[1]}, "
                               f"got {v!r}")
            out[opt] = int(v)
        elif rule is not None:
            f = _number(v, f"attack {name}: {opt}")
            if f < rule[1] or (rule[2] and f == rule[1]):
                raise PxdError(f"attack {name}: {opt} must be {'>' if rule[2] else '>='} "
                               f"{rule[1]:g}, got {f:g}")
            out[opt] = f
        else:
            out[opt] = v
    return out


def load_dataset(spec: str, *, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W, C) and labels int32 (N,) of a split, e.g.
    "cifar10:test[:500]" or "fashion_mnist:train". Read from `data_dir` (or PXD_DATA_DIR)
    when it holds the official archives, else from tensorflow-datasets (downloads)."""
    from pxd.storage import data

    if not isinstance(spec, str) or not data.is_dataset_spec(spec):
        raise PxdError(f"dataset spec like 'cifar10:test[:500]' expected, got {spec!r}")
    x, y = data.load(spec, data_dir)
    return x, np.asarray(y, np.int32)


def zoo() -> list[dict]:
    """The shipped models' cards (name, kind, dataset, measured figures, sha256, ...)."""
    from pxd.storage import shipped as _zoo

    return [{k: v for k, v in e.items() if k != "path"} for e in _zoo.entries()]


def load_density(name_or_dir: str | None = None, *, dataset: str = "cifar10") -> Density:
    """A shipped PixelCNN by name (see `zoo()`), a `pxd train-density` run directory, or
    (None) the shipped default for `dataset`."""
    from pxd.configs.datasets import DATASETS
    from pxd.storage import shipped as _zoo
    from pxd.storage.runs import load_density as _load

    if name_or_dir is None:
        if dataset not in DATASETS:
            raise PxdError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
        name_or_dir = _zoo.default_path("density", tuple(DATASETS[dataset].shape))
    if not isinstance(name_or_dir, str):
        raise PxdError(f"density: give a shipped model name or a run directory, "
                       f"not {type(name_or_dir).__name__}")
    model, params, cfg, meta = _load(name_or_dir)
    return Density(model, params, cfg, name_or_dir, meta)


def load_classifier(name_or_dir: str | None = None, *, dataset: str = "cifar10") -> Classifier:
    """A shipped classifier by name, a `pxd train-clf` run directory, or (None) the shipped
    default for `dataset`."""
    from pxd.configs.datasets import DATASETS
    from pxd.storage import shipped as _zoo
    from pxd.storage.runs import load_classifier as _load

    if name_or_dir is None:
        if dataset not in DATASETS:
            raise PxdError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
        name_or_dir = _zoo.default_path("classifier", tuple(DATASETS[dataset].shape))
    if not isinstance(name_or_dir, str):
        raise PxdError(f"clf: give a shipped model name or a run directory, "
                       f"not {type(name_or_dir).__name__}")
    model, variables, cfg, meta = _load(name_or_dir)
    return Classifier(model, variables, cfg, name_or_dir, meta)


def _model_for(given, x_shape, cls, load, what: str, arg: str):
    """`given` (a loaded model, a name or dir, or None: the shipped default for the images'
    shape) as a loaded model whose images have shape `x_shape`."""
    from pxd.configs.datasets import DATASETS

    if isinstance(given, cls):
        m = given
    elif given is None:
        match = [n for n, i in DATASETS.items() if tuple(i.shape) == tuple(x_shape)]
        if not match:
            raise PxdError(f"images: no shipped {what} for images of shape "
                           f"{tuple(x_shape)}; pass {arg}=RUN_DIR")
        m = load(None, dataset=match[0])
    else:
        m = load(given)
    if tuple(m.shape) != tuple(x_shape):
        raise PxdError(f"images: shape {tuple(x_shape)} per image, but the {what} was "
                       f"trained on {m.config.dataset} {tuple(m.shape)}")
    return m


def _density_for(density, x_shape) -> Density:
    return _model_for(density, x_shape, Density, load_density, "density model", "density")


def _clf_for(clf, x_shape) -> Classifier:
    return _model_for(clf, x_shape, Classifier, load_classifier, "classifier", "clf")


def bits_per_dim(images, *, density: Density | str | None = None, batch_size: int = 64,
                 on_batch: Callable[[int], Any] | None = None) -> np.ndarray:
    """Bits/dim of each image under the PixelCNN, float32 (N,): the paper's detection
    score (adversarial images score higher). `on_batch(k)` is called after each batch of
    k images (progress)."""
    from pxd.core.likelihood import make_bpd_fn
    from pxd.engine.batched import evaluate_bpd

    x = _images(images)
    _check_batch(batch_size)
    d = _density_for(density, x.shape[1:])
    return np.asarray(evaluate_bpd(make_bpd_fn(d.model), d.params, x, batch_size,
                                   on_batch=on_batch))


def purify(images, eps=16, *, density: Density | str | None = None,
           adaptive_threshold: float | None = None, batch_size: int = 32,
           on_batch: Callable[[int], Any] | None = None) -> np.ndarray:
    """PixelDefend (Algorithm 1): each sub-pixel in raster order becomes the most likely
    value under the PixelCNN within `eps` of its original value (ties to the lowest).

    `eps` is one number or one per image (N,). With `adaptive_threshold` (bits/dim),
    images scoring at or below it are returned unchanged (adaptive PixelDefend).
    Returns uint8 (N, H, W, C), inside the eps-ball. `on_batch(k)`: progress.
    """
    from pxd.core.purify import make_purifier
    from pxd.engine.batched import purify_batches

    x = _images(images)
    if np.ndim(eps) == 0:
        per_image = np.full(len(x), _eps(eps), np.int32)
    else:
        e_arr = np.asarray(eps)
        if e_arr.shape != (len(x),):
            raise PxdError(f"eps: {e_arr.shape} values for {len(x)} images; give one number "
                           "or one per image")
        per_image = np.array([_eps(v) for v in e_arr], np.int32)
    e = int(per_image.max())
    _check_batch(batch_size)
    d = _density_for(density, x.shape[1:])
    if adaptive_threshold is not None:
        adaptive_threshold = _number(adaptive_threshold, "adaptive_threshold",
                                     "a number (bits/dim)")
        bpd = bits_per_dim(x, density=d)
        per_image = np.where(bpd > adaptive_threshold, per_image, 0).astype(np.int32)
    if e == 0 or not np.any(per_image > 0):
        if on_batch is not None:
            on_batch(len(x))
        return x.copy()
    fn = make_purifier(d.model, "auto", max_eps=e)
    return np.asarray(purify_batches(fn, d.params, x, per_image, batch_size,
                                     on_batch=on_batch))


def feature_squeeze(images) -> np.ndarray:
    """Feature squeezing as in the paper's Appendix C: 5-bit colour depth, then a 2x2
    median filter. uint8 in and out."""
    from pxd.engine.batched import squeeze_batches

    return np.asarray(squeeze_batches(_images(images)))


def attack(images, labels, name: str = "bim", *, eps: float = 8,
           clf: Classifier | str | None = None, key: jax.Array | None = None,
           batch_size: int = 100, on_batch: Callable[[int], Any] | None = None,
           **options) -> np.ndarray:
    """Adversarial uint8 images against `clf` (default: the shipped one for the images'
    shape), on the integer grid and within the L-inf `eps` ball and [0, 255].

    `name`: rand, fgsm, bim, pgd, deepfool or cw; `options` go to the attack (e.g.
    steps=20, restarts=2). `key` defaults to `jax.random.key(0)`; `on_batch(k)`: progress.
    """
    from pxd.engine.batched import craft
    from pxd.storage import imageio

    if name not in ATTACK_NAMES:
        raise PxdError(f"unknown attack '{name}' (choose from {', '.join(ATTACK_NAMES)})")
    options = check_attack_options(name, options)
    x = _images(images)
    y = imageio._check_labels(np.asarray(labels), len(x), "labels")
    e = _eps(eps)
    _check_batch(batch_size)
    c = _clf_for(clf, x.shape[1:])
    from pxd.configs.datasets import DATASETS

    k = DATASETS[c.config.dataset].num_classes
    if y.max() >= k:
        raise PxdError(f"labels: {int(y.max())} is not a class of {c.config.dataset} "
                       f"(0..{k - 1})")
    key = jax.random.key(0) if key is None else key
    return np.asarray(craft(name, c.logits_fn, x, y, eps=float(e), key=key,
                            batch_size=batch_size, on_batch=on_batch, **options))


def roc_auc(clean_scores, suspect_scores) -> float:
    """ROC AUC of a score that should be higher on suspects (e.g. bits/dim): the
    probability a suspect outscores a clean image, ties counted half."""
    from pxd.core.metrics import roc_auc as _auc

    return _auc(_scores(clean_scores, "clean_scores"),
                _scores(suspect_scores, "suspect_scores"))


def p_values(clean_scores, scores) -> np.ndarray:
    """Per-image p-values: the fraction of clean reference scores at least as high."""
    from pxd.core.metrics import p_values as _p

    return _p(_scores(clean_scores, "clean_scores"), _scores(scores, "scores"))


def _scores(a, name: str) -> np.ndarray:
    """A non-empty 1-D array of finite real scores, as float64."""
    try:
        arr = np.asarray(a)
    except Exception as e:  # ragged lists and the like
        raise PxdError(f"{name}: cannot be read as an array ({type(e).__name__})") from None
    if arr.dtype.kind not in "uif":
        raise PxdError(f"{name}: scores must be numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise PxdError(f"{name}: expected one score per image, shape (N,), got {arr.shape}")
    if arr.size == 0:
        raise PxdError(f"{name}: no scores")
    if not np.isfinite(arr).all():
        raise PxdError(f"{name}: holds NaN or inf at index {int(np.argmin(np.isfinite(arr)))}")
    return arr.astype(np.float64)
