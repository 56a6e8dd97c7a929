"""One batched helper per job: host arrays in, chunks spread over the devices, numpy out.

bits/dim (`evaluate_bpd`), PixelDefend (`purify_batches`), feature squeezing
(`squeeze_batches`), classifier predictions (`predict`, `evaluate_accuracy`) and attacks
(`craft`). Each wraps `devices.map_batches`: chunks of `batch_size` rows, padded to one
shape (one compilation), each one program on one device, so results never follow the device
count; `on_batch(k)` reports progress. Inputs are uint8 (N, H, W, C) on 0..255.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pxd.core import attacks
from pxd.core.squeeze import feature_squeeze_jit
from pxd.engine import devices
from pxd.engine.active import ActiveBatch
from pxd.errors import PxdError


def evaluate_bpd(bpd_fn, params, x: np.ndarray, batch_size: int = 64,
                 on_batch=None) -> np.ndarray:
    """Per-image bits/dim float32 (N,) of uint8 images, chunks over the devices; `bpd_fn` is
    `core.likelihood.make_bpd_fn(model)`."""
    return devices.map_batches(bpd_fn, (x,), batch_size, on_batch=on_batch, consts=params)


def purify_batches(purify_fn, params, x: np.ndarray, eps: np.ndarray, batch_size: int = 32,
                   on_batch=None) -> np.ndarray:
    """PixelDefend of uint8 images with per-image integer `eps` (N,), uint8 out;
    `purify_fn` is `core.purify.make_purifier(model, ...)`."""
    return devices.map_batches(purify_fn, (x, eps), batch_size, on_batch=on_batch,
                               consts=params)


def squeeze_batches(x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Feature squeezing (5-bit colour depth, 2x2 median filter) of uint8 images."""
    return devices.map_batches(feature_squeeze_jit, (x,), batch_size)


def _as_partial(logits_fn) -> jax.tree_util.Partial:
    if isinstance(logits_fn, jax.tree_util.Partial):
        return logits_fn
    return jax.tree_util.Partial(logits_fn)  # any callable: closed over, compiled per object


@jax.jit
def _logits(logits_fn, x):
    return logits_fn(x.astype(jnp.float32))


@jax.jit
def _predict(logits_fn, x):
    return jnp.argmax(_logits(logits_fn, x), -1).astype(jnp.int32)


def logits(logits_fn, x: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
    """Logits float32 (N, classes) of uint8 images, chunks spread over the devices."""
    return devices.map_batches(_logits, (np.asarray(x),), batch_size,
                               consts=_as_partial(logits_fn))


def predict(logits_fn, x: np.ndarray, *, batch_size: int = 128, on_batch=None) -> np.ndarray:
    """Predicted labels int32 (N,) of uint8 images, chunks over the devices."""
    return devices.map_batches(_predict, (np.asarray(x),), batch_size, on_batch=on_batch,
                               consts=_as_partial(logits_fn))


def evaluate_accuracy(logits_fn, x: np.ndarray, y: np.ndarray, *, batch_size: int = 128) -> float:
    return float(np.mean(predict(logits_fn, x, batch_size=batch_size) == np.asarray(y)))


@functools.cache
def _jitted_attack(name: str, opts: tuple):
    spec = attacks.ATTACKS[name]
    kw = dict(opts, host_batch=ActiveBatch) if spec.host_batch else dict(opts)

    def run(logits_fn, x, y, eps, batch_index, key):
        k = jax.random.fold_in(key, batch_index)
        return spec.fn(logits_fn, x, y, eps=eps, key=k, **kw)

    # iterative attacks jit their own steps and drive the loop from the host (fast on CPU)
    return run if spec.iterative else jax.jit(run)


def craft(attack_name: str, logits_fn, x: np.ndarray, y: np.ndarray, *, eps, key: jax.Array,
          batch_size: int = 100, on_batch=None, mesh=None, **opts) -> np.ndarray:
    """Adversarial uint8 images of `x` (uint8 (N,H,W,C)) against labels `y` (N,).

    eps: a float or per-example array (N,) on the 0..255 scale. Chunks of `batch_size` rows
    go to the devices in turn; chunk b uses key fold_in(key, b). Compiles once per (attack,
    options, batch shape, logits_fn). `opts` go to the attack (e.g. steps, restarts).
    `mesh`: the devices to use (default: this process's).
    """
    if attack_name not in attacks.ATTACKS:
        raise PxdError(f"unknown attack '{attack_name}' (choose from {', '.join(attacks.ATTACKS)})")
    m = mesh if mesh is not None else devices.mesh()
    x = np.asarray(x)
    n = x.shape[0]
    eps_arr = np.broadcast_to(np.asarray(eps, np.float32), (n,)).copy()
    run = _jitted_attack(attack_name, tuple(sorted(opts.items())))

    def one(b, f, xb, yb, eb):
        return run(f, xb, yb, eb, b, key)

    return devices.map_batches(one, (x, np.asarray(y, np.int32), eps_arr), batch_size, m,
                               on_batch, indexed=True, consts=_as_partial(logits_fn))
