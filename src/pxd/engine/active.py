"""Host loops that shrink their batch: DeepFool's and CW's iterations on the examples still
active only, gathered into a batch of the next power of two and placed like the caller's.

`ActiveBatch` is the `pxd.core.attacks.grid.HostBatch` that `engine.batched.craft` hands to
those attacks (the core's default, `WholeBatch`, keeps the whole batch): most examples are
fooled in a few iterations, and a batch shrunk to the next power of two above the active
count costs that much less, while a run compiles at most ~log2(n) shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pxd.core.attacks.grid import per_example


def bucket(count: int, n: int, ndev: int) -> int:
    """Batch size for `count` active examples: the next power of two (a multiple of the
    device count), capped at n, so a run compiles at most ~log2(n) shapes."""
    b = max(ndev, 1 << max(0, count - 1).bit_length())
    b += (-b) % ndev
    return n if b >= n else b


class ActiveBatch:
    """A batch's loop state held on the host, so that each call runs on the examples still
    active only, gathered into a batch of the next power of two. Per-example leaves are found
    by their leading dimension; the others (step counts, Adam's count) are shared and taken
    from the last call. Sub-batches keep the caller's sharding: rank-4 leaves go where x0
    lives, rank-1 where y lives."""

    def __init__(self, state, x0, y, *rest):
        self.n = x0.shape[0]
        ndev = len(x0.sharding.device_set)
        self.ndev = ndev if self.n % ndev == 0 else 1
        leaves, self.tree = jax.tree_util.tree_flatten(state)
        self.host = [np.array(a) for a in leaves]  # updated in place by run()
        self.rows = [per_example(self.n, a) for a in leaves]
        self.fixed = [(np.asarray(a), a.sharding) for a in (x0, y, *rest)]
        self.shard = {4: x0.sharding, 1: y.sharding}

    def view(self):
        """The current state as numpy leaves."""
        return jax.tree_util.tree_unflatten(self.tree, self.host)

    def run(self, idx, fn) -> None:
        """`fn(sub_state, x0, y, *rest)` on examples `idx`, written back."""
        b = bucket(idx.size, self.n, self.ndev)
        take = np.arange(self.n) if b == self.n else np.resize(idx, b)  # pads with actives
        xs = [jax.device_put(a[take], sh) for a, sh in self.fixed]
        sub = jax.tree_util.tree_unflatten(self.tree, [
            jax.device_put(a[take], self.shard[a.ndim]) if r else jnp.asarray(a)
            for a, r in zip(self.host, self.rows, strict=True)])
        sub = fn(sub, *xs)
        # a repeated example computes the same values, so the repeats write the same
        for a, got, r in zip(self.host, jax.tree_util.tree_leaves(sub), self.rows, strict=True):
            if r:
                a[take] = np.asarray(got)
            else:
                a[...] = np.asarray(got)

    def result(self):
        return jax.tree_util.tree_unflatten(self.tree, [jnp.asarray(a) for a in self.host])
