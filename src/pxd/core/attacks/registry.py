"""The attacks by name: one registry from which the CLI's choices, the bench's vocabulary
and the engine's way of running each attack derive. A new attack is one entry here."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

from pxd.configs.attacks import ATTACK_NAMES
from pxd.core.attacks.cw_l2 import cw
from pxd.core.attacks.deepfool_l2 import deepfool
from pxd.core.attacks.sign import bim, fgsm, pgd, rand


@dataclasses.dataclass(frozen=True)
class Attack:
    """An attack `fn(logits_fn, x, y, *, eps, key, **options) -> uint8 x_adv` and how to run it.

    iterative: on concrete arrays it drives its step loop from the host over jitted pieces
      (fast on CPU), so call it unjitted; the others are one jitted program each.
    eps_free: a minimal-perturbation attack, which ignores eps until its final clip (craft
      once at 255, clip to each eps).
    host_batch: it takes a `host_batch` (`pxd.core.attacks.grid.HostBatch`) for its loop.
    """

    fn: Callable
    title: str
    iterative: bool = False
    eps_free: bool = False
    host_batch: bool = False

    def __call__(self, *args, **kw):
        return self.fn(*args, **kw)

    def defaults(self) -> dict:
        """The attack's options and their defaults (keyword-only arguments but eps, key and
        host_batch)."""
        return {p: v.default for p, v in inspect.signature(self.fn).parameters.items()
                if v.kind == v.KEYWORD_ONLY and p not in ("eps", "key", "host_batch")}


ATTACKS: dict[str, Attack] = {
    "rand": Attack(rand, "RAND"),
    "fgsm": Attack(fgsm, "FGSM"),
    "bim": Attack(bim, "BIM", iterative=True),
    "deepfool": Attack(deepfool, "DEEPFOOL", iterative=True, eps_free=True, host_batch=True),
    "cw": Attack(cw, "CW", iterative=True, eps_free=True, host_batch=True),
    "pgd": Attack(pgd, "PGD", iterative=True),
}
if tuple(ATTACKS) != ATTACK_NAMES:  # the JAX-free list the CLI and the API read
    raise ImportError(f"pxd.configs.attacks.ATTACK_NAMES {ATTACK_NAMES} != the registry's "
                      f"{tuple(ATTACKS)}")
EPS_FREE = tuple(n for n, a in ATTACKS.items() if a.eps_free)
