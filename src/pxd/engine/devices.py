"""Device set-up, the chunked inference loop (`map_batches`) and the trainers' batch sharding.

On CPU, XLA runs a convolution on one core; one virtual CPU device per core doubles
throughput on a 2-core machine. Inference runs each chunk of rows as one program on one
device (the devices take chunks in turn), so an array never depends on the device count:
XLA:CPU's rounding follows a program's batch shape. Training shards each global batch over a
mesh. The same code path serves several GPUs.

Several processes (`--distributed`: hosts, or one process per GPU): inference gives process
p chunks p, p + P, ... and gathers the results on every process; training shards each global
batch over every process's devices, each process feeding only its rows. Only process 0 writes
files (`storage.files.primary`). Decisions read from disk (a cache hit, a chunk already done)
are process 0's, broadcast (`agree`), so every process runs the same collectives.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

_CONFIGURED = False


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def setup(num_cpu_devices: int | None = None, distributed: bool = False, *,
          compile_cache: bool = False) -> None:
    """Configure JAX before its first computation.

    `num_cpu_devices` defaults to `JAX_NUM_CPU_DEVICES` or the cores this process may run on
    (so `taskset -c 0` gives one device, not two sharing a core).
    `distributed` calls the standard `jax.distributed.initialize()` (multi-host).
    `compile_cache`: the persistent compilation cache unless `PXD_COMPILATION_CACHE=off`
    (`pxd.engine.compile_cache`; the CLI's choice).
    """
    global _CONFIGURED
    import jax

    if _CONFIGURED:
        return
    if compile_cache:
        from pxd.engine import compile_cache as cc

        cc.enable(default_on=True)
    if num_cpu_devices is None:
        from pxd.configs.env import env_number

        num_cpu_devices = (env_number("JAX_NUM_CPU_DEVICES") or env_number("PXD_NUM_CPU_DEVICES")
                           or _usable_cores())
    try:
        jax.config.update("jax_num_cpu_devices", max(1, int(num_cpu_devices)))
    except RuntimeError:
        pass  # backend already initialised (e.g. by a test): keep what it has
    if distributed:
        from pxd.errors import PxdError

        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
        args = distributed_args()
        try:
            jax.distributed.initialize(**args)
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PxdError(f"--distributed: jax.distributed.initialize failed ({first}); "
                           "set PXD_COORDINATOR, PXD_NUM_PROCESSES and PXD_PROCESS_ID "
                           "outside a detected cluster") from None
        # gloo prints a "[Gloo] Rank ... connected" line to stdout from C++ when its first
        # collective connects; connect now with stdout sent to stderr, so a --json stdout
        # stays one JSON object.
        with _stdout_to_stderr():
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("pxd-setup")
        from pxd.storage import files

        files.set_primary(jax.process_index() == 0)
    _CONFIGURED = True


@contextlib.contextmanager
def _stdout_to_stderr():
    """File descriptor 1 points at stderr inside the block (catches C++ prints too)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def distributed_args() -> dict:
    """`jax.distributed.initialize` arguments from PXD_COORDINATOR (host:port),
    PXD_NUM_PROCESSES and PXD_PROCESS_ID; none set: JAX detects the cluster (SLURM,
    Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS)."""
    env = {k: os.environ.get(f"PXD_{k.upper()}") for k in ("coordinator", "num_processes",
                                                         "process_id")}
    if not any(env.values()):
        return {}
    from pxd.errors import PxdError

    if not all(env.values()):
        raise PxdError("set all of PXD_COORDINATOR, PXD_NUM_PROCESSES and PXD_PROCESS_ID "
                       "(or none, to let JAX detect the cluster)")
    try:
        count, me = int(env["num_processes"]), int(env["process_id"])
    except ValueError:
        raise PxdError("PXD_NUM_PROCESSES and PXD_PROCESS_ID must be integers") from None
    if not 0 <= me < count:
        raise PxdError(f"PXD_PROCESS_ID must be in 0..{count - 1}, got {me}")
    return dict(coordinator_address=env["coordinator"], num_processes=count, process_id=me)


def processes() -> tuple[int, int]:
    """(this process's index, number of processes)."""
    import jax

    return jax.process_index(), jax.process_count()


def agree(value):
    """Process 0's value on every process (a small array or scalar); itself when alone."""
    if processes()[1] == 1:
        return value
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def mesh(devices: list | None = None):
    """A 1-D mesh over this process's (or the given) devices with axis name 'data'.
    Training passes `jax.devices()`: every process's."""
    import jax
    from jax.sharding import Mesh

    devs = np.asarray(devices if devices is not None else jax.local_devices())
    return Mesh(devs, ("data",))


def global_batch(tree: Any, m) -> Any:
    """A global batch (the same host rows on every process) on a mesh that may span
    processes: padded as `shard_batch` pads, each process placing only its own rows."""
    import jax

    if processes()[1] == 1:
        return shard_batch(tree, m)[0]
    ndev, sh = m.devices.size, data_sharding(m)
    return jax.tree_util.tree_map(
        lambda a: _from_host(pad_to_multiple(np.asarray(a), ndev)[0], sh), tree)


def _from_host(a: np.ndarray, sharding):
    """A global array from the same host value on every process; each places its shards."""
    import jax

    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def to_host(tree: Any) -> Any:
    """numpy copies of (replicated or local) arrays; with several processes each reads its
    own copy of a replicated array."""
    import jax

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_shards[0].data)
        return a

    return jax.device_get(jax.tree_util.tree_map(get, tree))


def local(tree: Any) -> Any:
    """Arrays this process can compute with on its own devices: `tree` itself when alone,
    host copies of replicated arrays spanning several processes."""
    return tree if processes()[1] == 1 else to_host(tree)


def put_replicated(tree: Any, m) -> Any:
    """Host values (identical on every process) replicated over a mesh that may span
    processes."""
    import jax

    sh = replicated(m)
    if processes()[1] == 1:
        return jax.device_put(tree, sh)
    return jax.tree_util.tree_map(lambda a: _from_host(np.asarray(a), sh), jax.device_get(tree))


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
    *,
    indexed: bool = False,
    consts: Any = None,
) -> Any:
    """Apply a jitted `fn(*batch)` over host arrays in chunks; concatenates outputs.

    Chunk c is rows [c * batch_size, (c + 1) * batch_size), the last one padded by repeating
    its last row, and runs as one program of `batch_size` rows on one device: the chunks go
    to the devices in turn (one host thread each), never split between devices. So a row's
    result is the same whatever the device count (XLA:CPU's rounding follows the program's
    batch shape; `pxd.models.guard` keeps a row's slot in the chunk from mattering). `indexed`:
    call `fn(c, *batch)` (random keys fold in c). `consts`: a pytree (e.g. a classifier's
    `logits_fn`) copied to each device once and passed first, `fn(consts, *batch)` (after c).
    With several processes, process p runs chunks p, p + P, ... and every process gets all
    the outputs.
    """
    import jax

    if batch_size < 1:
        raise ValueError("map_batches: batch_size must be >= 1")
    n = arrays[0].shape[0]
    if n == 0:
        raise ValueError("map_batches: empty input")
    devs = list(m.devices.flat) if m is not None else jax.local_devices()
    me, count = processes()
    chunks = -(-n // batch_size)
    mine = list(range(me, chunks + (-chunks) % count, count))  # equal shares: pad the count
    lock = threading.Lock()
    todo = iter(mine)
    outs: dict[int, Any] = {}
    stop = threading.Event()

    def take():
        with lock:
            return next(todo, None)

    def work(slot: int) -> None:
        dev = devs[slot]
        placed = None if consts is None else jax.device_put(consts, dev)  # once per device
        while not stop.is_set() and (c := take()) is not None:
            start = min(c, chunks - 1) * batch_size  # a share's padding chunk repeats the last
            chunk = tuple(pad_to_multiple(a[start : start + batch_size], batch_size)[0]
                          for a in arrays)
            args = ([np.int32(c)] if indexed else []) + ([] if consts is None else [placed])
            res = fn(*args, *jax.device_put(chunk, dev))
            host = jax.tree_util.tree_map(np.asarray, res)
            with lock:
                outs[c] = host
                if on_batch is not None and c < chunks:
                    on_batch(min(batch_size, n - start))

    _run_workers(work, min(len(devs), len(mine)), stop)
    stacked = jax.tree_util.tree_map(lambda *rs: np.stack(rs), *[outs[c] for c in mine])
    if count > 1:
        from jax.experimental import multihost_utils

        def gather(a):  # (processes, shares, batch, ...) -> chunks in order
            every = np.asarray(multihost_utils.process_allgather(a))
            return np.swapaxes(every, 0, 1).reshape((-1,) + every.shape[2:])

        stacked = jax.tree_util.tree_map(gather, stacked)
    return jax.tree_util.tree_map(
        lambda a: a.reshape((-1,) + a.shape[2:])[:n], stacked)


def _run_workers(work: Callable[[int], None], count: int, stop: threading.Event) -> None:
    """`work(slot)` for slots 0..count-1, one thread each (the caller's thread runs slot 0,
    so one device needs no thread); the first error (or Ctrl-C) stops the others and is
    raised here."""
    if count <= 1:
        work(0)
        return
    errors: list[BaseException] = []

    def guarded(slot: int) -> None:
        try:
            work(slot)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(s,), daemon=True)
               for s in range(1, count)]
    for t in threads:
        t.start()
    try:
        work(0)
        for t in threads:
            while t.is_alive():  # short joins: Ctrl-C still reaches this thread
                t.join(0.1)
    except BaseException:  # the others stop after their chunk (daemons: never block an exit)
        stop.set()
        raise
    if errors:
        raise errors[0]


def machine() -> str:
    """This host and its devices, as recorded in meta.json and reports."""
    import jax

    devs = jax.devices()
    return f"{platform.machine()} {os.cpu_count()} cores, {len(devs)} x {devs[0].device_kind}"
