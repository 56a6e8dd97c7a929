"""Device set-up and the one batch-sharding helper every heavy command uses.

On CPU, XLA runs a convolution on one core; splitting the batch over one virtual
CPU device per core doubles convolution throughput on a 2-core machine. The same
code path serves several GPUs, and several hosts after `jax.distributed.initialize()`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

_CONFIGURED = False


def setup(num_cpu_devices: int | None = None, distributed: bool = False) -> None:
    """Configure JAX before its first computation.

    `num_cpu_devices` defaults to `JAX_NUM_CPU_DEVICES` or the number of cores.
    `distributed` calls the standard `jax.distributed.initialize()` (multi-host).
    """
    global _CONFIGURED
    import jax

    if _CONFIGURED:
        return
    if num_cpu_devices is None:
        env = os.environ.get("JAX_NUM_CPU_DEVICES") or os.environ.get("PXD_NUM_CPU_DEVICES")
        num_cpu_devices = int(env) if env else (os.cpu_count() or 1)
    try:
        jax.config.update("jax_num_cpu_devices", max(1, int(num_cpu_devices)))
    except RuntimeError:
        pass  # backend already initialised (e.g. by a test): keep what it has
    if distributed:
        jax.distributed.initialize()
    _CONFIGURED = True


def mesh(devices: list | None = None):
    """A 1-D mesh over all (or the given) devices with axis name 'data'."""
    import jax
    from jax.sharding import Mesh

    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs, ("data",))


def data_sharding(m):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(m, PartitionSpec("data"))


def replicated(m):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(m, PartitionSpec())


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Pad axis 0 to a multiple by repeating the last row; returns (padded, n_real)."""
    n = x.shape[0]
    rem = (-n) % multiple
    if rem == 0:
        return x, n
    pad = np.repeat(x[-1:], rem, axis=0)
    return np.concatenate([x, pad], axis=0), n


def shard_batch(tree: Any, m=None) -> tuple[Any, int]:
    """Put a pytree of host arrays (leading batch axis) on the mesh, padding a ragged batch.

    Returns (sharded_tree, n_real); trim results with `[:n_real]`.
    """
    import jax

    m = m if m is not None else mesh()
    ndev = m.devices.size
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    n_real = leaves[0].shape[0]
    padded = [pad_to_multiple(np.asarray(a), ndev)[0] for a in leaves]
    sh = data_sharding(m)
    out = [jax.device_put(a, sh) for a in padded]
    return jax.tree_util.tree_unflatten(treedef, out), n_real


def map_batches(
    fn: Callable[..., Any],
    arrays: tuple[np.ndarray, ...],
    batch_size: int,
    m=None,
    on_batch: Callable[[int], None] | None = None,
) -> Any:
    """Apply a jitted `fn(*batch)` over host arrays in sharded batches; concatenates outputs.

    Batches are padded to a multiple of the device count and to `batch_size`
    (so `fn` compiles once) and the padding is trimmed from the outputs.
    """
    import jax

    m = m if m is not None else mesh()
    ndev = m.devices.size
    batch_size = max(ndev, batch_size - batch_size % ndev)
    n = arrays[0].shape[0]
    outs = []
    for start in range(0, n, batch_size):
        chunk = tuple(a[start : start + batch_size] for a in arrays)
        k = chunk[0].shape[0]
        if k < batch_size:
            chunk = tuple(pad_to_multiple(a, batch_size)[0][:batch_size] for a in chunk)
        sharded, _ = shard_batch(chunk, m)
        res = fn(*sharded)
        outs.append(jax.tree_util.tree_map(lambda r, k=k: np.asarray(r)[:k], res))
        if on_batch is not None:
            on_batch(k)
    if not outs:
        raise ValueError("map_batches: empty input")
    return jax.tree_util.tree_map(lambda *rs: np.concatenate(rs, axis=0), *outs)


def machine() -> str:
    """This host and its devices, as recorded in meta.json and reports."""
    import jax

    devs = jax.devices()
    return f"{platform.machine()} {os.cpu_count()} cores, {len(devs)} x {devs[0].device_kind}"
